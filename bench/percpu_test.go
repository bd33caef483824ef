package bench

import (
	"testing"

	"github.com/cilium/ebpf"

	"github.com/seed4c/moat/internal/netns"
	"github.com/seed4c/moat/internal/packet"
)

// The sink's counters read through the bare system call are what cilium/ebpf reads,
// after frames counted on whichever CPU ran them, and reading them allocates nothing.
func TestPrivilegedSinkCountWithoutAllocating(t *testing.T) {
	netns.RequireRoot(t)
	s := unattachedSink(t)
	frame := packet.Frame{SrcIP: clientBase, DstIP: clientBase.Next(), Proto: 6, SrcPort: 1, DstPort: 2}.Build()
	const frames = 7
	for range frames {
		if _, err := s.objs.XdpSink.Run(&ebpf.RunOptions{Data: frame}); err != nil {
			t.Fatal(err)
		}
	}
	p, b, err := s.Count()
	if err != nil {
		t.Fatal(err)
	}
	wp, wb, err := sumCounters(s.objs.SinkStats, func(c sinkCounter) (uint64, uint64) { return c.Packets, c.Bytes })
	if err != nil {
		t.Fatal(err)
	}
	if p != frames || b != frames*uint64(len(frame)) || p != wp || b != wb {
		t.Fatalf("Count %d packets %d bytes, cilium/ebpf %d and %d; sent %d frames of %d bytes", p, b, wp, wb, frames, len(frame))
	}
	if allocs := testing.AllocsPerRun(100, func() {
		if _, _, err := s.Count(); err != nil {
			t.Fatal(err)
		}
	}); allocs != 0 {
		t.Errorf("Count allocates %.1f times", allocs)
	}
}

// unattachedSink is a sink loaded but attached nowhere, for BPF_PROG_TEST_RUN; the
// test's cleanup unloads it.
func unattachedSink(t *testing.T) *Sink {
	t.Helper()
	s := &Sink{}
	if err := loadSinkObjects(&s.objs, nil); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.objs.Close() })
	var err error
	if s.stats, err = newPerCPUSlot[sinkCounter](s.objs.SinkStats); err != nil {
		t.Fatal(err)
	}
	return s
}

// newPerCPUSlot refuses what it cannot read right: a map that is no per-CPU array, or
// a value type of another size.
func TestPrivilegedPerCPUSlotRefusesOtherLayouts(t *testing.T) {
	spec, err := loadSink()
	if err != nil {
		t.Fatal(err)
	}
	if ms := spec.Maps["sink_stats"]; ms.Type != ebpf.PerCPUArray || ms.ValueSize != 16 {
		t.Fatalf("sink_stats is a %s of %d-byte values: the test assumes a per-CPU array of counters", ms.Type, ms.ValueSize)
	}
	netns.RequireRoot(t)
	var objs sinkObjects
	if err := spec.LoadAndAssign(&objs, nil); err != nil {
		t.Fatal(err)
	}
	defer objs.Close()
	if _, err := newPerCPUSlot[uint64](objs.SinkStats); err == nil {
		t.Error("8-byte reads of 16-byte values accepted")
	}
	if _, err := newPerCPUSlot[uint32](objs.SinkLearn); err == nil {
		t.Error("a plain array accepted")
	}
}
