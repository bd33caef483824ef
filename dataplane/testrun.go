package dataplane

import "github.com/cilium/ebpf"

// xdpMD is struct xdp_md as BPF_PROG_TEST_RUN takes it for its context.
type xdpMD struct {
	Data, DataEnd, DataMeta, IngressIfindex, RxQueueIndex, EgressIfindex uint32
}

// XDPRunOptions returns options for running the fast path on frame with
// BPF_PROG_TEST_RUN as if it had arrived on ifindex (which must exist in the caller's
// network namespace: bpf_fib_lookup runs there for real). out receives the frame as
// the program left it and should have room for a pushed VLAN tag.
func XDPRunOptions(frame, out []byte, ifindex uint32) *ebpf.RunOptions {
	return &ebpf.RunOptions{
		Data:    frame,
		DataOut: out,
		Context: xdpMD{DataEnd: uint32(len(frame)), IngressIfindex: ifindex},
		Repeat:  1,
	}
}
