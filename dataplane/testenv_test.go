package dataplane

import (
	"net"
	"net/netip"
	"testing"

	"github.com/seed4c/moat/internal/netns"
	"github.com/seed4c/moat/tenant"
)

// gwEnv is a gateway namespace for BPF_PROG_TEST_RUN: its interfaces are veths whose
// far ends sit in a sink namespace, and its routes and neighbours are installed from
// fib, the same description the reference model routes with.
type gwEnv struct {
	gw, sink *netns.Host
	ifindex  map[string]uint32
	fib      *StaticFIB
	dp       *Dataplane
}

type envIface struct {
	name       string
	mtu        int
	forwarding bool
	index      int // 0: the kernel's next
}

type envNeigh struct {
	dev, ip string
}

type envRoute struct {
	table     int
	dst, dev  string
	via       string
	blackhole bool
}

// mac derives a stable, unique MAC from a string, so neighbours are recognisable in
// output frames.
func mac(s string) net.HardwareAddr {
	h := uint32(2166136261)
	for i := 0; i < len(s); i++ {
		h = (h ^ uint32(s[i])) * 16777619
	}
	return net.HardwareAddr{0x02, 0xee, byte(h >> 24), byte(h >> 16), byte(h >> 8), byte(h)}
}

func newGWEnv(t testing.TB, ifaces []envIface, routes []envRoute, neighs []envNeigh, rules map[string]int) *gwEnv {
	t.Helper()
	netns.RequireRoot(t)
	gw, err := netns.NewHost(netns.UniqueName("gw"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { gw.Close() })
	sink, err := netns.NewHost(netns.UniqueName("sink"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sink.Close() })
	if err := gw.Sysctl("net/ipv4/conf/all/forwarding", "1"); err != nil {
		t.Fatal(err)
	}
	e := &gwEnv{gw: gw, sink: sink, ifindex: map[string]uint32{}, fib: &StaticFIB{
		Interfaces: map[uint32]FIBInterface{}, Rules: map[uint32]uint32{},
	}}
	for _, ifc := range ifaces {
		l, _, err := netns.VethIndex(gw, ifc.name, ifc.index, sink, "s"+ifc.name)
		if err != nil {
			t.Fatal(err)
		}
		nl := gw.Netlink()
		hw := mac("gw-" + ifc.name)
		if err := nl.LinkSetHardwareAddr(l, hw); err != nil {
			t.Fatal(err)
		}
		if err := nl.LinkSetMTU(l, ifc.mtu); err != nil {
			t.Fatal(err)
		}
		fwd := "1"
		if !ifc.forwarding {
			fwd = "0"
		}
		if err := gw.Sysctl("net/ipv4/conf/"+ifc.name+"/forwarding", fwd); err != nil {
			t.Fatal(err)
		}
		idx := uint32(l.Attrs().Index)
		e.ifindex[ifc.name] = idx
		e.fib.Interfaces[idx] = FIBInterface{Name: ifc.name, MAC: hw, MTU: uint32(ifc.mtu), Forwarding: ifc.forwarding}
	}
	for _, r := range routes {
		nr := netns.Route{Dst: r.dst, Dev: r.dev, Via: r.via, Table: r.table, Blackhole: r.blackhole}
		if err := gw.AddRoute(nr); err != nil {
			t.Fatal(err)
		}
		fr := FIBRoute{Table: uint32(r.table), Dst: netip.MustParsePrefix(r.dst), Ifindex: e.ifindex[r.dev]}
		if r.table == 0 {
			fr.Table = MainTable
		}
		if r.blackhole {
			fr.Type = RouteBlackhole
		}
		if r.via != "" {
			fr.Gateway = netip.MustParseAddr(r.via)
		}
		e.fib.Routes = append(e.fib.Routes, fr)
	}
	for _, n := range neighs {
		hw := mac(n.dev + "/" + n.ip)
		if err := gw.AddNeighbor(n.dev, n.ip, hw); err != nil {
			t.Fatal(err)
		}
		e.fib.Neighbors = append(e.fib.Neighbors, FIBNeighbor{Ifindex: e.ifindex[n.dev], Addr: netip.MustParseAddr(n.ip), MAC: hw})
	}
	for dev, table := range rules {
		if err := gw.AddRule(dev, table, 1000); err != nil {
			t.Fatal(err)
		}
		e.fib.Rules[e.ifindex[dev]] = uint32(table)
	}
	return e
}

// Index implements tenant.Interfaces.
func (e *gwEnv) Index(name string) (uint32, error) {
	if i, ok := e.ifindex[name]; ok {
		return i, nil
	}
	return 0, &net.OpError{Op: "lookup", Err: net.UnknownNetworkError("no interface " + name)}
}

// open loads a fresh instance of the fast path inside the gateway namespace.
func (e *gwEnv) open(t testing.TB, cfg Config, limits tenant.Limits, maxFlows uint32) *Dataplane {
	t.Helper()
	opts := DefaultOptions(netns.UniqueName("t"))
	opts.Config, opts.Limits, opts.MaxFlows = cfg, limits, maxFlows
	var dp *Dataplane
	if err := e.gw.Do(func() (err error) { dp, err = Open(opts); return err }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		dp.Close()
		if err := Remove(opts); err != nil {
			t.Errorf("remove instance: %v", err)
		}
	})
	e.dp = dp
	return dp
}

// apply writes c into the maps from inside the gateway namespace (the redirect map
// resolves ifindexes there).
func (e *gwEnv) apply(t testing.TB, c *tenant.Compiled) {
	t.Helper()
	if err := e.gw.Do(func() error { return e.dp.Writer().Apply(c) }); err != nil {
		t.Fatal(err)
	}
}

// run runs frame through the real program as if it arrived on ifindex. Call it from
// inside the gateway namespace (gw.Do): bpf_fib_lookup runs there for real.
func runProg(t testing.TB, dp *Dataplane, frame []byte, ifindex uint32) (Verdict, []byte) {
	out := make([]byte, len(frame)+64)
	opts := XDPRunOptions(frame, out, ifindex)
	ret, err := dp.Program().Run(opts)
	if err != nil {
		t.Fatalf("BPF_PROG_TEST_RUN: %v", err)
	}
	return Verdict(ret), opts.DataOut
}
