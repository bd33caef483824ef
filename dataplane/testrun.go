package dataplane

import (
	"fmt"
	"runtime"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

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

// progRunAttr is the BPF_PROG_RUN part of union bpf_attr.
type progRunAttr struct {
	progFd      uint32
	retval      uint32
	dataSizeIn  uint32
	dataSizeOut uint32
	dataIn      uint64
	dataOut     uint64
	repeat      uint32
	duration    uint32
	ctxSizeIn   uint32
	ctxSizeOut  uint32
	ctxIn       uint64
	ctxOut      uint64
	flags       uint32
	cpu         uint32
	batchSize   uint32
	_           uint32
}

const bpfProgRun = 10 // BPF_PROG_RUN (BPF_PROG_TEST_RUN)

// TimedRun runs prog once on frame as if it arrived on ifindex and returns its verdict
// and the run time the kernel measured around the program alone: no syscall, no
// copying. Benchmarks use it instead of a repeat count because BPF_PROG_RUN repeats
// on the same buffer, so a program that rewrites the frame (NAT, TTL) would not see
// the same frame twice; here every run starts from frame.
func TimedRun(prog *ebpf.Program, frame []byte, ifindex uint32) (Verdict, time.Duration, error) {
	if len(frame) == 0 {
		return 0, 0, fmt.Errorf("BPF_PROG_RUN: empty frame")
	}
	ctx := &xdpMD{DataEnd: uint32(len(frame)), IngressIfindex: ifindex}
	var pin runtime.Pinner // the kernel reads these through plain integers
	pin.Pin(&frame[0])
	pin.Pin(ctx)
	defer pin.Unpin()
	attr := &progRunAttr{
		progFd:     uint32(prog.FD()),
		dataSizeIn: uint32(len(frame)),
		dataIn:     uint64(uintptr(unsafe.Pointer(&frame[0]))),
		repeat:     1,
		ctxSizeIn:  uint32(unsafe.Sizeof(*ctx)),
		ctxIn:      uint64(uintptr(unsafe.Pointer(ctx))),
	}
	_, _, errno := unix.Syscall(unix.SYS_BPF, bpfProgRun, uintptr(unsafe.Pointer(attr)), unsafe.Sizeof(*attr))
	if errno != 0 {
		return 0, 0, fmt.Errorf("BPF_PROG_RUN: %w", errno)
	}
	return Verdict(attr.retval), time.Duration(attr.duration), nil
}
