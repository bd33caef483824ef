package dataplane

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"net/netip"
	"testing"

	"github.com/seed4c/moat/internal/packet"
	"github.com/seed4c/moat/tenant"
)

func FuzzDecodeEvent(f *testing.F) {
	f.Add(make([]byte, eventSize))
	f.Add([]byte{1, 2, 3})
	f.Fuzz(func(t *testing.T, raw []byte) {
		e, err := DecodeEvent(raw)
		if len(raw) < eventSize {
			if err == nil {
				t.Fatalf("decoded %d bytes, shorter than an event", len(raw))
			}
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		if !e.Src.Addr().Is4() || !e.Dst.Addr().Is4() {
			t.Fatalf("addresses not IPv4: %+v", e)
		}
	})
}

// staticModel is the differential test's configuration and routing, without a kernel:
// the model alone, for fuzzing its parser and decision.
func staticModel(t testing.TB) *Model {
	ifindex := map[string]uint32{}
	fib := &StaticFIB{Interfaces: map[uint32]FIBInterface{}, Rules: map[uint32]uint32{}}
	for i, ifc := range diffIfaces {
		idx := uint32(i + 2)
		ifindex[ifc.name] = idx
		fib.Interfaces[idx] = FIBInterface{Name: ifc.name, MAC: mac("gw-" + ifc.name), MTU: uint32(ifc.mtu), Forwarding: ifc.forwarding}
	}
	c, err := tenant.Compile(diffConfig(0), tenant.StaticInterfaces(ifindex), tenant.IDs{}, tenant.DefaultLimits())
	if err != nil {
		t.Fatal(err)
	}
	m := NewModel(DefaultConfig(), tenant.DefaultLimits(), fib, func() uint64 { return 1e9 })
	m.Load(c)
	return m
}

func fuzzSeeds(f *testing.F) {
	for _, fr := range []packet.Frame{
		{SrcIP: ap("10.0.0.2"), DstIP: ap("10.100.0.1"), Proto: 6, SrcPort: 1000, DstPort: 80},
		{SrcIP: ap("10.0.0.2"), DstIP: ap("10.100.0.1"), Proto: 17, SrcPort: 1000, DstPort: 53, Payload: []byte("q")},
		{VLAN: 100, SrcIP: ap("10.9.0.2"), DstIP: ap("10.100.0.1"), Proto: 6, SrcPort: 1000, DstPort: 80},
		{SrcIP: ap("10.1.0.1"), DstIP: ap("10.0.0.2"), Proto: 6, SrcPort: 8080, DstPort: 1000, TCPFlags: packet.SYN | packet.ACK},
		{SrcIP: ap("10.0.0.2"), DstIP: ap("10.100.0.1"), Proto: 6, SrcPort: 1, DstPort: 80, IPOptions: []byte{1, 1, 1, 0}},
	} {
		f.Add(fr.Build(), uint8(0))
	}
	f.Add([]byte{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 0x81, 0, 0}, uint8(2))
}

// FuzzModel: the model never panics, and its results are self-consistent.
func FuzzModel(f *testing.F) {
	fuzzSeeds(f)
	m := staticModel(f)
	f.Fuzz(func(t *testing.T, frame []byte, in uint8) {
		ifindex := uint32(in%uint8(len(diffIfaces))) + 2
		r := m.Process(frame, ifindex)
		switch r.Verdict {
		case XDPDrop:
			if !r.Reason.IsDrop() {
				t.Fatalf("drop with reason %s", r.Reason)
			}
		case XDPPass:
			if !r.Reason.IsPass() {
				t.Fatalf("pass with reason %s", r.Reason)
			}
		case XDPRedirect:
			if r.Reason != ReasonNone || r.Ifindex == 0 {
				t.Fatalf("redirect with reason %s to %d", r.Reason, r.Ifindex)
			}
			if d := len(r.Frame) - len(frame); d != 0 && d != 4 && d != -4 {
				t.Fatalf("redirected frame changed length by %d", d)
			}
		default:
			t.Fatalf("verdict %s", r.Verdict)
		}
	})
}

// FuzzDifferential feeds fuzzed frames to the real program and to the model, in the
// differential test's gateway namespace; they must agree on verdict and bytes. It
// needs root (it skips, or fails under CI=true, otherwise).
func FuzzDifferential(f *testing.F) {
	fuzzSeeds(f)
	env := newGWEnv(f, diffIfaces, diffRoutes, diffNeighbors(), diffRules)
	dp := env.open(f, DefaultConfig(), tenant.DefaultLimits(), 1<<16)
	c, err := tenant.Compile(diffConfig(0), env, tenant.IDs{}, tenant.DefaultLimits())
	if err != nil {
		f.Fatal(err)
	}
	env.apply(f, c)
	model := NewModel(DefaultConfig(), tenant.DefaultLimits(), env.fib, monotonicNow)
	model.Load(c)
	names := make([]string, 0, len(diffIfaces))
	for _, ifc := range diffIfaces {
		names = append(names, ifc.name)
	}
	f.Fuzz(func(t *testing.T, frame []byte, in uint8) {
		if len(frame) < 14 || len(frame) > 3000 { // BPF_PROG_TEST_RUN's own bounds
			return
		}
		ifindex := env.ifindex[names[int(in)%len(names)]]
		err := env.gw.Do(func() error {
			v, out := runProg(t, dp, frame, ifindex)
			want := model.Process(frame, ifindex)
			if v != want.Verdict || !bytes.Equal(out, want.Frame) {
				t.Fatalf("on ifindex %d:\n%s\nkernel %s:\n%s\nmodel %s (%s):\n%s", ifindex, hex.Dump(frame),
					v, hex.Dump(out), want.Verdict, want.Reason, hex.Dump(want.Frame))
			}
			if model.Shortcuts.Wrong != 0 {
				t.Fatalf("on ifindex %d:\n%s\nthe established shortcut would have been wrong", ifindex, hex.Dump(frame))
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	})
}

func TestDecodeEventFieldsAndAllocs(t *testing.T) {
	want := gatewayFlowEvent{
		TsNs: 123456789, Type: uint8(EventDrop), Reason: uint8(DropPolicyDenied), Proto: 17, Flags: 1,
		Ifindex: 7, TenantId: 3, ServiceId: 9, BackendId: 11, Vlan: 100,
		Saddr: addrRaw(ap("10.0.0.2")), Daddr: addrRaw(ap("10.100.0.1")), Sport: portRaw(4000), Dport: portRaw(53),
	}
	raw, err := binary.Append(nil, binary.NativeEndian, &want)
	if err != nil {
		t.Fatal(err)
	}
	e, err := DecodeEvent(raw)
	if err != nil {
		t.Fatal(err)
	}
	if e.Time != 123456789 || e.Type != EventDrop || e.Reason != DropPolicyDenied || e.Proto != 17 || !e.Reply ||
		e.Ifindex != 7 || e.TenantID != 3 || e.ServiceID != 9 || e.BackendID != 11 || e.VLAN != 100 ||
		e.Src != netip.MustParseAddrPort("10.0.0.2:4000") || e.Dst != netip.MustParseAddrPort("10.100.0.1:53") {
		t.Fatalf("decoded %+v", e)
	}
	if n := testing.AllocsPerRun(1000, func() { _, _ = DecodeEvent(raw) }); n != 0 {
		t.Errorf("DecodeEvent allocates %v times per event", n)
	}
}
