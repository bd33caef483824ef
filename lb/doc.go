// Package lb is moat's load-balancing model in pure Go: weighted Maglev lookup tables,
// backend states and draining. The dataplane's map writer and its reference model both
// use it; it imports neither the dataplane nor cilium/ebpf, so it can be tested and
// reasoned about without a kernel.
package lb
