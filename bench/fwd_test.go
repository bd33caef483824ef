package bench

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/seed4c/moat/dataplane"
	"github.com/seed4c/moat/internal/netns"
	"github.com/seed4c/moat/internal/packet"
)

// TestPrivilegedForwarderBounds runs the bounds' programs in the kernel: the tracking
// forwarder keeps exactly one entry per TCP/UDP flow in a table of the size it was
// given (a bound that kept less would be cheaper than the per-flow state it stands
// for), and the drop bound drops and counts every frame.
func TestPrivilegedForwarderBounds(t *testing.T) {
	netns.RequireRoot(t)
	spec, err := loadFwd()
	if err != nil {
		t.Fatal(err)
	}
	const size = 1024
	if err := trackLikeMoat(spec, size); err != nil {
		t.Fatal(err)
	}
	var objs fwdObjects
	if err := spec.LoadAndAssign(&objs, nil); err != nil {
		t.Fatal(err)
	}
	defer objs.Close()
	if got := objs.FwdFlows.MaxEntries(); got != size {
		t.Fatalf("flow table of %d entries, want %d", got, size)
	}
	f := &Forwarder{objs: objs}

	run := func(prog *ebpf.Program, fr packet.Frame) uint32 {
		t.Helper()
		ret, err := prog.Run(&ebpf.RunOptions{Data: fr.Build()})
		if err != nil {
			t.Fatal(err)
		}
		return ret
	}
	client, vip := netip.MustParseAddr("10.0.0.7"), netip.MustParseAddr("10.0.9.1")
	const flows = 100
	for i := range flows {
		proto := uint8(6)
		if i%2 == 1 {
			proto = 17
		}
		for range 3 { // the first frame inserts, the next ones find it
			run(objs.XdpFwd, packet.Frame{SrcIP: client, DstIP: vip, Proto: proto, SrcPort: uint16(1000 + i), DstPort: 80})
		}
	}
	run(objs.XdpFwd, packet.Frame{SrcIP: client, DstIP: vip, Proto: 1, Payload: make([]byte, 8)}) // ICMP: no flow
	if n, err := trackedFlows(&objs); err != nil || n != flows {
		t.Fatalf("%d entries (%v) after %d flows of 3 frames each, want one per flow", n, err, flows)
	}
	// What every packet measurement starts with (sut.flush).
	if n, err := dataplane.ClearMap[fwdFlowKey, fwdFlowState](objs.FwdFlows); err != nil || n != flows {
		t.Errorf("clearing the flow table deleted %d entries (%v), want %d", n, err, flows)
	}
	if n, err := trackedFlows(&objs); err != nil || n != 0 {
		t.Errorf("%d entries (%v) after clearing the flow table", n, err)
	}

	const drops = 5
	for range drops {
		if ret := run(objs.XdpDropAll, packet.Frame{SrcIP: client, DstIP: vip, Proto: 6, SrcPort: 1, DstPort: 80}); ret != 1 { // XDP_DROP
			t.Fatalf("drop bound returned %d, want XDP_DROP", ret)
		}
	}
	if n, err := f.Handled(); err != nil || n != drops {
		t.Fatalf("drop bound counted %d (%v), want %d", n, err, drops)
	}
}

// TestPrivilegedForwarderBoundSeparatesInterfaces: identical tuples that arrive on two
// interfaces (the mixed scenario's two tenants) are two flows in the tracking bound, as
// they are two in moat's conntrack, each keyed by its ingress interface; a bound that
// merged them would keep half moat's state and forward one tenant's frames on the
// other's route.
func TestPrivilegedForwarderBoundSeparatesInterfaces(t *testing.T) {
	netns.RequireRoot(t)
	h, err := netns.NewHost(netns.UniqueName("bfwd"))
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	a, b, err := netns.Veth(h, "ta", h, "tb")
	if err != nil {
		t.Fatal(err)
	}
	spec, err := loadFwd()
	if err != nil {
		t.Fatal(err)
	}
	if err := trackLikeMoat(spec, 1024); err != nil {
		t.Fatal(err)
	}
	var objs fwdObjects
	if err := spec.LoadAndAssign(&objs, nil); err != nil {
		t.Fatal(err)
	}
	defer objs.Close()
	frame := packet.Frame{SrcIP: netip.MustParseAddr("10.0.0.7"), DstIP: netip.MustParseAddr("10.100.0.1"), Proto: 6, SrcPort: 1000, DstPort: 80}.Build()
	ifindexes := []uint32{uint32(a.Attrs().Index), uint32(b.Attrs().Index)}
	err = h.Do(func() error {
		for _, ifindex := range ifindexes {
			for range 2 {
				if _, err := objs.XdpFwd.Run(dataplane.XDPRunOptions(frame, make([]byte, len(frame)+8), ifindex)); err != nil {
					return err
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	var (
		k    fwdFlowKey
		v    fwdFlowState
		seen []uint32
	)
	for it := objs.FwdFlows.Iterate(); it.Next(&k, &v); {
		seen = append(seen, k.TenantId)
	}
	slices.Sort(seen)
	slices.Sort(ifindexes)
	if !slices.Equal(seen, ifindexes) {
		t.Errorf("flow entries keyed by %v, want one per ingress interface %v", seen, ifindexes)
	}
}

// TestTrackingForwarderHasMoatsLayout: the bound refuses to run with flow entries of
// another size than moat's conntrack entries, and needs a table size.
func TestTrackingForwarderHasMoatsLayout(t *testing.T) {
	spec, err := loadFwd()
	if err != nil {
		t.Fatal(err)
	}
	if err := trackLikeMoat(spec.Copy(), 0); err == nil {
		t.Error("tracking without a table size accepted")
	}
	keySize, entrySize := dataplane.ConntrackLayout()
	if m := spec.Maps[fwdMapFwdFlows]; int(m.KeySize) != keySize || int(m.ValueSize) != entrySize {
		t.Fatalf("bpf/bench/fwd.c flow key/entry %d/%d bytes, moat's %d/%d", m.KeySize, m.ValueSize, keySize, entrySize)
	}
	other := spec.Copy()
	other.Maps[fwdMapFwdFlows].ValueSize = uint32(entrySize - 4)
	if err := trackLikeMoat(other, 1024); err == nil {
		t.Error("a flow entry smaller than moat's accepted")
	}
	if err := trackLikeMoat(spec, 1024); err != nil {
		t.Fatal(err)
	}
	if got := spec.Maps[fwdMapFwdFlows].MaxEntries; got != 1024 {
		t.Errorf("table of %d entries, want 1024", got)
	}
}

// trackedFlows counts the entries of the tracking forwarder's flow table.
func trackedFlows(objs *fwdObjects) (int, error) {
	var (
		k fwdFlowKey
		v fwdFlowState
		n int
	)
	it := objs.FwdFlows.Iterate()
	for it.Next(&k, &v) {
		n++
	}
	return n, it.Err()
}
