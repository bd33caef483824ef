// Package tenant is moat's configuration model in pure Go: tenants, their network
// attachments, services, backends and allow rules, validated as a whole and compiled
// into the entries the fast path's maps hold. It imports neither the dataplane nor
// cilium/ebpf: the dataplane translates its output into kernel map writes.
package tenant
