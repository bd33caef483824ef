package overlay

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/seed4c/moat/attest"
)

// TestSetPeersLive: the desired peers change under a running node. A subject that
// attested before it was configured is added as soon as it is (its latest result
// still admits it); a peer removed from the configuration, or whose address changed,
// leaves WireGuard at once; traffic follows.
func TestSetPeersLive(t *testing.T) {
	n := newPair(t)
	a, b := n[0], n[1]
	bPeer := a.node.cfg.Peers[0]
	if err := a.node.SetPeers(nil); err != nil {
		t.Fatal(err)
	}
	notifyBoth(n) // a does not have b as a peer: no handshake to wait for
	if got := a.node.Peers(); len(got) != 0 {
		t.Fatalf("a configured %v although b is not its peer", got)
	}
	// (From a: a packet b sent now would wait in b's queue for a handshake and reach
	// a's in-memory TUN, which nobody reads, later.)
	if ping(a, b, 300*time.Millisecond) {
		t.Fatal("a packet crossed from a node that does not have the receiver as a peer")
	}
	// Let b's own first handshake (b has the higher key, or a's was dropped) go out
	// first: a's, started as a configures b, must not cross it (see admitBoth).
	waitOwedHandshakesTried(t, b.node)
	// Configured now: b's result of a moment ago admits it at once.
	if err := a.node.SetPeers([]PeerConfig{bPeer}); err != nil {
		t.Fatal(err)
	}
	if got := a.node.Peers(); strings.Join(got, ",") != "b" {
		t.Fatalf("a's peers %v, want b at once", got)
	}
	mustPing(t, a, b)
	// Its address changes: the old configuration leaves WireGuard, the new one takes
	// its place at once (its latest result still admits it).
	moved := bPeer
	moved.Address = netip.MustParseAddr("100.64.0.9")
	if err := a.node.SetPeers([]PeerConfig{moved}); err != nil {
		t.Fatal(err)
	}
	st := mustStatusOf(t, a.node)
	if len(st.Peers) != 1 || st.Peers[0].Address != "100.64.0.9" || len(st.Peers[0].AllowedIPs) != 1 || st.Peers[0].AllowedIPs[0] != netip.MustParsePrefix("100.64.0.9/32") {
		t.Fatalf("after the address change: %+v", st.Peers)
	}
	// Removed: gone at once, and nothing crosses.
	if err := a.node.SetPeers(nil); err != nil {
		t.Fatal(err)
	}
	if got := a.node.Peers(); len(got) != 0 {
		t.Fatalf("a still has %v", got)
	}
	if ping(b, a, 300*time.Millisecond) {
		t.Fatal("a packet crossed from a peer removed from the configuration")
	}
	// A subject whose latest result evicts it is not added when configured.
	a.node.Notify(b.result(attest.StatusContraindicated, time.Now()))
	if err := a.node.SetPeers([]PeerConfig{bPeer}); err != nil {
		t.Fatal(err)
	}
	if got := a.node.Peers(); len(got) != 0 {
		t.Fatalf("an evicted subject was configured: %v", got)
	}
	// Invalid peers are refused whole.
	if err := a.node.SetPeers([]PeerConfig{bPeer, bPeer}); err == nil {
		t.Fatal("a duplicate subject was accepted")
	}
	if err := a.node.SetPeers([]PeerConfig{{Subject: "x", Address: netip.MustParseAddr("100.65.0.1")}}); err == nil {
		t.Fatal("an address outside the overlay was accepted")
	}
}

func mustStatusOf(t *testing.T, n *Node) Status {
	t.Helper()
	st, err := n.Status()
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// fakeLinks records what Apply asks of the netlink plumbing.
type fakeLinks struct{ calls []string }

func (f *fakeLinks) SetupDevice(name string, addr netip.Prefix) error {
	f.calls = append(f.calls, fmt.Sprintf("device %s %v", name, addr))
	return nil
}
func (f *fakeLinks) SetupSegment(seg Segment, _ netip.Addr, flood []netip.Addr, mtu int) error {
	f.calls = append(f.calls, fmt.Sprintf("setup %d %v %v %d", seg.VNI, seg.Address, flood, mtu))
	return nil
}
func (f *fakeLinks) UpdateSegment(_, next Segment, flood []netip.Addr) error {
	f.calls = append(f.calls, fmt.Sprintf("update %d %v %v", next.VNI, flood, next.Routes))
	return nil
}
func (f *fakeLinks) RemoveSegment(seg Segment) error {
	f.calls = append(f.calls, fmt.Sprintf("remove %d", seg.VNI))
	return nil
}

type fakeFirewall struct{ applied []string }

func (f *fakeFirewall) Apply(rs string) error { f.applied = append(f.applied, rs); return nil }

// TestApplyLive: a gateway's overlay follows its desired state: segments built (after
// clearing what an earlier process left), updated in place when only their peers or
// routes change, rebuilt when their addresses change, removed when gone; the firewall
// replaced only when its ruleset changes; the node's peers set last.
func TestApplyLive(t *testing.T) {
	n := newPair(t)
	links, fw := &fakeLinks{}, &fakeFirewall{}
	o := &Overlay{Node: n[0].node, cfg: n[0].node.cfg, m: Machine{Device: DefaultDevice, MTU: DefaultMTU}, links: links, fw: fw,
		log: n[0].node.log, segs: map[uint32]Segment{}, flood: map[uint32][]netip.Addr{}}
	peerB := n[0].node.cfg.Peers[0]
	peerC := PeerConfig{Subject: "c", Address: netip.MustParseAddr("100.64.0.3")}
	seg := func(vni uint32, addr string, peers []string, routes ...Route) Segment {
		return Segment{Tenant: fmt.Sprint("t", vni), VNI: vni, Address: netip.MustParsePrefix(addr), Table: 100, Peers: peers, Routes: routes, FastPath: true}
	}
	step := func(peers []PeerConfig, segs []Segment, wantBuilt []uint32, wantCalls ...string) {
		t.Helper()
		links.calls = nil
		built, err := o.Apply(peers, segs)
		if err != nil {
			t.Fatal(err)
		}
		var got []uint32
		for _, s := range built {
			got = append(got, s.VNI)
		}
		if !slices.Equal(got, wantBuilt) || strings.Join(links.calls, "; ") != strings.Join(wantCalls, "; ") {
			t.Fatalf("built %v, calls %q; want %v, %q", got, links.calls, wantBuilt, wantCalls)
		}
	}
	step([]PeerConfig{peerB}, []Segment{seg(11, "10.9.0.1/24", []string{"b"})}, []uint32{11},
		"remove 11", "setup 11 10.9.0.1/24 [100.64.0.2] 1370")
	rules := len(fw.applied)
	if rules != 1 || !strings.Contains(fw.applied[0], "ip saddr 100.64.0.2 @th,96,24 11 accept") {
		t.Fatalf("firewall: %q", fw.applied)
	}
	// The same again: nothing to do.
	step([]PeerConfig{peerB}, []Segment{seg(11, "10.9.0.1/24", []string{"b"})}, nil)
	if len(fw.applied) != rules {
		t.Fatal("the same ruleset was applied again")
	}
	// Another peer carries the segment and a route goes through it: updated in place.
	via := Route{Dst: netip.MustParsePrefix("10.100.2.1/32"), Via: netip.MustParseAddr("10.9.0.3")}
	step([]PeerConfig{peerB, peerC}, []Segment{seg(11, "10.9.0.1/24", []string{"b", "c"}, via), seg(12, "10.8.0.1/24", []string{"c"})},
		[]uint32{12}, "update 11 [100.64.0.2 100.64.0.3] [{10.100.2.1/32 10.9.0.3}]", "remove 12", "setup 12 10.8.0.1/24 [100.64.0.3] 1370")
	if len(fw.applied) != rules+1 || !strings.Contains(fw.applied[rules], "ip saddr 100.64.0.3 @th,96,24 12 accept") {
		t.Fatalf("firewall after the change: %q", fw.applied[len(fw.applied)-1])
	}
	if st := mustStatusOf(t, n[0].node); len(n[0].node.cfg.Peers) != 2 || st.Address != "100.64.0.1/24" {
		t.Fatalf("node's peers: %+v", n[0].node.cfg.Peers)
	}
	// A segment's address changes: rebuilt; the other is gone: removed.
	step([]PeerConfig{peerB}, []Segment{seg(11, "10.9.0.254/24", []string{"b"})}, []uint32{11},
		"remove 12", "remove 11", "setup 11 10.9.0.254/24 [100.64.0.2] 1370")
	// A segment naming a peer that is not configured is refused, and nothing changes.
	links.calls = nil
	if _, err := o.Apply([]PeerConfig{peerB}, []Segment{seg(11, "10.9.0.254/24", []string{"b", "c"})}); err == nil || len(links.calls) != 0 {
		t.Fatalf("a segment with an unknown peer: %v, calls %q", err, links.calls)
	}
}
