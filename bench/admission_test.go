package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/seed4c/moat/internal/netns"
	"github.com/seed4c/moat/internal/packet"
)

// TestPrivilegedAdmissionPhase measures admission and eviction on moat and on the
// nftables baseline with the smoke profile: every round is measured (no error), each
// latency is a real one (above zero: a round in which no frame reached the backend
// after the decision is measured again; below the harness's timeout), and the report
// says how each system was driven. It asserts no speed.
func TestPrivilegedAdmissionPhase(t *testing.T) {
	netns.RequireRoot(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	p := Profiles["smoke"]
	rep, err := Run(ctx, Options{Profile: p, Systems: []string{SysMoat, SysNft}, Scenarios: []string{ScAdmission, ScEviction},
		Instance: netns.UniqueName("badm"), Command: t.Name()})
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range rep.Errors {
		t.Errorf("run error: %s", e)
	}
	for _, sys := range []string{SysMoat, SysNft} {
		for _, sc := range []string{ScAdmission, ScEviction} {
			r := rep.Find(sc, sys, 0)
			if r == nil {
				t.Errorf("no %s record for %s", sc, sys)
				continue
			}
			if r.Kind != KindLatency || r.Latency == nil {
				t.Errorf("%s %s: kind %s, latency %v", sys, sc, r.Kind, r.Latency)
				continue
			}
			if r.Latency.P99 >= float64((decisionCap+decisionTimeout).Microseconds()) || r.Latency.P50 <= 0 {
				t.Errorf("%s %s: latency %+v µs", sys, sc, *r.Latency)
			}
			if len(r.Notes) == 0 || !strings.Contains(r.Notes[0], "rounds") {
				t.Errorf("%s %s: notes %q do not say what was measured", sys, sc, r.Notes)
			}
		}
	}
	if _, ok := rep.Ratios[SysNft][ScEviction]; !ok {
		t.Errorf("no eviction ratio against nftables: %v", rep.Ratios)
	}
}

// TestPrivilegedEvictionMeasuredFromTheBackend shows that the eviction measurement
// watches the backend, not the system's word: nftables without its drop set of
// evicted backends (only the map element removed, as a script that forgets conntrack
// would do) keeps forwarding the backend's established flows, and the harness reports
// it as not evicted instead of timing anything.
func TestPrivilegedEvictionMeasuredFromTheBackend(t *testing.T) {
	netns.RequireRoot(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	b := &bencher{profile: Profiles["smoke"], opts: Options{Profile: Profiles["smoke"]}, gens: map[*netns.Host]*Generator{},
		sinks: map[*netns.Host]*Sink{}, rep: &Report{}, prog: newProgress(io.Discard, 1)}
	scene, err := NewScene(netns.UniqueName("bevict"), nil)
	if err != nil {
		t.Fatal(err)
	}
	b.scene = scene
	defer func() {
		if err := b.close(); err != nil {
			t.Error(err)
		}
	}()
	if err := b.attachSinks(scene.Topo.PeerHosts()); err != nil {
		t.Fatal(err)
	}
	ta := scene.Topo.Tenants[0]
	sink := b.sinks[ta.Backends[0].Host]
	err = b.withSystem(SysNft, KindPackets, func(*sut) error {
		adm, err := b.nftAdmitter()
		if err != nil {
			return err
		}
		if err := adm.newRound(); err != nil {
			return err
		}
		// The complete eviction works: a latency, no error (measured again, as the
		// phase does, when no frame reached the backend after the decision).
		for try := 0; ; try++ {
			_, err := b.timeEviction(ctx, sink, adm)
			if err == nil {
				break
			}
			if !errors.Is(err, errNoFrameAfterDecision) || try == minRedoBudget {
				return fmt.Errorf("eviction with the drop set: %w", err)
			}
			if err := adm.admit(); err != nil {
				return err
			}
		}
		if err := adm.admit(); err != nil {
			return err
		}
		adm.evict = func() error {
			return scene.Topo.GW.Do(func() error {
				out, err := exec.Command("nft", "delete", "element", "ip", nftTable, nftBackendMap(ta.Name), "{ 0 }").CombinedOutput()
				if err != nil {
					return fmt.Errorf("%v: %s", err, out)
				}
				return nil
			})
		}
		_, err = b.timeEviction(ctx, sink, adm)
		if err == nil || !strings.Contains(err.Error(), "still received frames") {
			return fmt.Errorf("eviction without the drop set: got %v, want the backend still receiving", err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range b.rep.Errors {
		t.Errorf("run error: %s", e)
	}
}

// The paced sender's frames are exactly what packet.Frame builds for each flow (both
// checksums included), and writing one allocates nothing: see pacedFlows.
func TestPacedFramesAreBuiltFramesWithoutAllocating(t *testing.T) {
	smac, dmac := net.HardwareAddr{2, 0, 0, 0, 0, 1}, net.HardwareAddr{2, 0, 0, 0, 0, 2}
	vip := netip.MustParseAddr("10.100.0.1")
	for _, c := range []struct {
		flags    uint8
		first, n uint64
	}{{packet.SYN, 0, 0}, {packet.ACK, 1 << 20, 256}, {packet.SYN, 5 << 20, 0}} {
		flows := newPacedFlows(smac, dmac, vip, 80, c.flags, c.first, c.n)
		var buf []byte
		for _, i := range []uint64{0, 1, 255, 256, 63999, 64000, 64001, 253 * 64000, 1<<20 - 1} {
			k := c.first + i
			if c.n > 0 {
				k = c.first + i%c.n
			}
			src := clientBase.As4()
			src[3] += byte(k / 64000 % 253)
			want := packet.Frame{Src: smac, Dst: dmac, SrcIP: netip.AddrFrom4(src), DstIP: vip, Proto: 6,
				SrcPort: uint16(1024 + k%64000), DstPort: 80, TCPFlags: c.flags}.Build()
			for len(want) < frameLen {
				want = append(want, 0)
			}
			if buf = flows.frameInto(buf, i); !bytes.Equal(buf, want) {
				t.Fatalf("flags %#x, first %d, n %d: frame %d\n got % x\nwant % x", c.flags, c.first, c.n, i, buf, want)
			}
		}
		var i uint64
		if allocs := testing.AllocsPerRun(100, func() { buf = flows.frameInto(buf, i); i++ }); allocs != 0 {
			t.Errorf("frameInto allocates %.1f times per frame", allocs)
		}
	}
}

// TestDecisionOverdue: a decision's effect is overdue decisionTimeout after its call
// returned, however long the call took (an nft call under load takes seconds: that is
// the latency measured), and decisionCap after it was made while the call has not
// returned.
func TestDecisionOverdue(t *testing.T) {
	release := make(chan struct{})
	d := startDecision(func() error { <-release; return errors.New("refused") })
	if err := d.overdue(d.start.Add(decisionCap - time.Millisecond)); err != nil {
		t.Errorf("a call still running before the cap: %v", err)
	}
	if err := d.overdue(d.start.Add(decisionCap + time.Millisecond)); err == nil || !strings.Contains(err.Error(), "not returned") {
		t.Errorf("a call still running past the cap: %v", err)
	}
	time.Sleep(20 * time.Millisecond)
	close(release)
	if err := d.wait(); err == nil || err.Error() != "refused" {
		t.Errorf("wait returned %v, want the call's error", err)
	}
	took := time.Duration(d.took.Load())
	if took < 20*time.Millisecond {
		t.Fatalf("the call took %v, recorded before it returned", took)
	}
	if err := d.overdue(d.start.Add(took + decisionTimeout - time.Millisecond)); err != nil {
		t.Errorf("within decisionTimeout of the call's return: %v", err)
	}
	if err := d.overdue(d.start.Add(took + decisionTimeout + time.Millisecond)); err == nil || !strings.Contains(err.Error(), "returned") {
		t.Errorf("past decisionTimeout of the call's return: %v", err)
	}
}

// The sink stamps arrivals in the clock of a decision's start, only while armed, and
// only for the frames it counts; a latency ends at the stamped frame, and a frame
// stamped before the decision is refused (admission) or means no frame came after it
// (eviction, measured again).
func TestPrivilegedSinkStampsArrivals(t *testing.T) {
	netns.RequireRoot(t)
	s := unattachedSink(t)
	frame := packet.Frame{SrcIP: clientBase, DstIP: clientBase.Next(), Proto: 6, SrcPort: 1, DstPort: 2}.Build()
	notIPv4 := bytes.Clone(frame)
	notIPv4[12], notIPv4[13] = 0x08, 0x06 // ARP's EtherType: the sink counts IPv4 only
	run := func(f []byte) {
		t.Helper()
		if _, err := s.objs.XdpSink.Run(&ebpf.RunOptions{Data: f}); err != nil {
			t.Fatal(err)
		}
	}
	stamps := func() (time.Duration, time.Duration) {
		t.Helper()
		first, last, err := s.Stamps()
		if err != nil {
			t.Fatal(err)
		}
		return first, last
	}

	run(frame)
	if first, last := stamps(); first != 0 || last != 0 {
		t.Fatalf("stamped %v, %v while not armed", first, last)
	}
	if err := s.Stamp(true); err != nil {
		t.Fatal(err)
	}
	run(notIPv4)
	if first, last := stamps(); first != 0 || last != 0 {
		t.Fatalf("stamped a frame it does not count: %v, %v", first, last)
	}
	dec := &decision{mono: monotonicNow()}
	run(frame)
	mid := monotonicNow()
	run(frame)
	run(frame)
	after := monotonicNow()
	first, last := stamps()
	if first < dec.mono || first > mid || last < mid || last > after {
		t.Fatalf("stamps %v, %v: want the first in [%v, %v], the last in [%v, %v]", first, last, dec.mono, mid, mid, after)
	}
	for _, c := range []struct {
		which int
		want  time.Duration
	}{{firstStamp, first - dec.mono}, {lastStamp, last - dec.mono}} {
		if got, err := dec.sinceStart(s, c.which); err != nil || got != c.want {
			t.Errorf("sinceStart(%d) = %v, %v; want %v", c.which, got, err, c.want)
		}
	}

	late := &decision{mono: monotonicNow()} // decided after every stamped frame
	if _, err := late.sinceStart(s, firstStamp); err == nil || !strings.Contains(err.Error(), "before the decision") {
		t.Errorf("a first frame before the decision: %v", err)
	}
	if _, err := late.sinceStart(s, lastStamp); !errors.Is(err, errNoFrameAfterDecision) {
		t.Errorf("no frame after the decision: %v, want errNoFrameAfterDecision", err)
	}

	if err := s.Stamp(false); err != nil {
		t.Fatal(err)
	}
	run(frame)
	if first, last := stamps(); first != 0 || last != 0 {
		t.Fatalf("disarmed, the stamps are %v, %v: want them forgotten and none written", first, last)
	}
}
