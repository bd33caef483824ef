package dataplane_test

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/seed4c/moat/dataplane"
	"github.com/seed4c/moat/internal/demo"
	"github.com/seed4c/moat/internal/netns"
	"github.com/seed4c/moat/internal/topology"
	"github.com/seed4c/moat/lb"
	"github.com/seed4c/moat/tenant"
)

func newScene(t *testing.T, backends int) *demo.Scene {
	t.Helper()
	netns.RequireRoot(t)
	s, err := demo.NewScene(topology.Options{Backends: backends}, netns.UniqueName("it"), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("close scene: %v", err)
		}
	})
	return s
}

func connect(t *testing.T, s *demo.Scene, tn *topology.Tenant, n int) []*demo.Conn {
	t.Helper()
	conns, err := s.Connect(tn, n)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { demo.CloseAll(conns) })
	return conns
}

// TestPrivilegedTwoTenantsSameAddresses: two tenants with the same client prefix, the
// same VIP and the same backend addresses, real TCP through the attached fast path.
func TestPrivilegedTwoTenantsSameAddresses(t *testing.T) {
	s := newScene(t, 3)
	a, b := s.Topo.Tenants[0], s.Topo.Tenants[1]

	// Connections spread over every backend of the right tenant, and only those.
	connsA, connsB := connect(t, s, a, 60), connect(t, s, b, 60)
	for _, set := range [][]*demo.Conn{connsA, connsB} {
		got := demo.Spread(set)
		t.Logf("tenant %s: %v", set[0].Tenant, got)
		for name := range got {
			if !strings.HasPrefix(name, set[0].Tenant+"-") {
				t.Fatalf("tenant %s connection served by %s", set[0].Tenant, name)
			}
		}
		if len(got) != 3 {
			t.Fatalf("tenant %s: 60 connections reached %d of 3 backends: %v", set[0].Tenant, len(got), got)
		}
	}
	all := append(connsA, connsB...)

	// A connection stays on its backend for its life.
	for round := range 3 {
		for _, c := range all {
			got, err := c.Ask(fmt.Sprintf("round-%d", round), demo.AskTimeout)
			if err != nil || got != c.Backend {
				t.Fatalf("%s connection on %s: answered by %q, %v", c.Tenant, c.Backend, got, err)
			}
		}
	}

	// Removing a backend moves only its own connections.
	cfg := s.Topo.Config()
	removed := a.Backends[1].Name
	bs := cfg.Tenants[0].Services[0].Backends
	cfg.Tenants[0].Services[0].Backends = append(bs[:1:1], bs[2:]...)
	if err := s.Apply(cfg); err != nil {
		t.Fatal(err)
	}
	broken := 0
	for _, c := range all {
		got, err := c.Ask("after-removal", demo.AskTimeout)
		if c.Backend == removed {
			if err == nil {
				t.Fatalf("connection of removed backend %s still answered, by %s", removed, got)
			}
			broken++
			continue
		}
		if err != nil || got != c.Backend {
			t.Fatalf("%s connection on %s disturbed by removing %s: %q, %v", c.Tenant, c.Backend, removed, got, err)
		}
	}
	t.Logf("removing %s broke its %d connections and no other", removed, broken)
	for name := range demo.Spread(connect(t, s, a, 30)) {
		if name == removed || !strings.HasPrefix(name, "a-") {
			t.Fatalf("new connection of tenant a served by %s after removing %s", name, removed)
		}
	}
}

// TestPrivilegedCrossTenantRefused: tenant a's network cannot reach anything of tenant
// b's, directly, through the VIP, or with spoofed sources; malformed frames are dropped
// and each one counted under its reason.
func TestPrivilegedCrossTenantRefused(t *testing.T) {
	s := newScene(t, 3)
	a, b := s.Topo.Tenants[0], s.Topo.Tenants[1]
	connect(t, s, b, 6) // tenant b has live flows an attacker could aim at

	accepted := func() (n int64) {
		for _, tn := range s.Topo.Tenants {
			for _, bk := range tn.Backends {
				n += bk.Server.Accepted()
			}
		}
		return n
	}
	before := accepted()
	if c, err := topology.Dial(a.Client, netip.AddrPortFrom(b.Backends[0].Addr, 8080).String(), time.Second); err == nil {
		c.Close()
		t.Fatal("tenant a reached a backend address directly")
	}
	if after := accepted(); after != before {
		t.Fatalf("a direct connection attempt was accepted by a backend (%d -> %d)", before, after)
	}

	reached, err := s.Spoof(a, b, 400)
	if err != nil {
		t.Fatal(err)
	}
	if reached != 0 {
		t.Fatalf("%d of 400 spoofed frames from tenant a reached tenant b's hosts", reached)
	}

	base, err := s.DP.Counters()
	if err != nil {
		t.Fatal(err)
	}
	want, err := s.SendMalformed(a, 5)
	if err != nil {
		t.Fatal(err)
	}
	got, err := s.WaitCounted(base, want, 3*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	for r, n := range want {
		if got[r] != n {
			t.Errorf("%s: %d frames counted, %d sent", r, got[r], n)
		}
	}
}

// TestPrivilegedDrainAndEvict: a draining backend keeps its connections and gets no
// new ones; an evicted backend's connections stop at once; re-admission restores it.
func TestPrivilegedDrainAndEvict(t *testing.T) {
	s := newScene(t, 3)
	a := s.Topo.Tenants[0]
	conns := connect(t, s, a, 45)
	evicted := a.Backends[2] // Backends[0] drains

	cfg := s.Topo.Config()
	bs := cfg.Tenants[0].Services[0].Backends
	bs[0].State = lb.StateDraining
	bs[2].State = lb.StateEvicted
	if err := s.Apply(cfg); err != nil {
		t.Fatal(err)
	}
	linesBefore := evicted.Server.Lines()
	for _, c := range conns {
		got, err := c.Ask("after", demo.AskTimeout)
		switch c.Backend {
		case evicted.Name:
			if err == nil {
				t.Fatalf("connection on evicted %s answered by %s", evicted.Name, got)
			}
		default:
			if err != nil || got != c.Backend {
				t.Fatalf("connection on %s (draining or admitted) disturbed: %q, %v", c.Backend, got, err)
			}
		}
	}
	if n := evicted.Server.Lines() - linesBefore; n != 0 {
		t.Fatalf("evicted backend %s still received %d requests", evicted.Name, n)
	}
	for name := range demo.Spread(connect(t, s, a, 30)) {
		if name != a.Backends[1].Name {
			t.Fatalf("new connection reached %s, which is draining or evicted", name)
		}
	}

	bs[0].State, bs[2].State = lb.StateAdmitted, lb.StateAdmitted
	if err := s.Apply(cfg); err != nil {
		t.Fatal(err)
	}
	if got := demo.Spread(connect(t, s, a, 60)); len(got) != 3 {
		t.Fatalf("after re-admission 60 connections reached only %v", got)
	}
}

// TestPrivilegedRestartKeepsFlows: the daemon's process goes away and comes back;
// pinned maps and links keep forwarding meanwhile, and established connections
// survive both the gap and the new process taking over.
func TestPrivilegedRestartKeepsFlows(t *testing.T) {
	s := newScene(t, 3)
	conns := append(connect(t, s, s.Topo.Tenants[0], 20), connect(t, s, s.Topo.Tenants[1], 20)...)

	if err := s.DP.Close(); err != nil { // the process exits: handles closed, pins stay
		t.Fatal(err)
	}
	s.DP = nil
	for _, c := range conns {
		if got, err := c.Ask("no-daemon", demo.AskTimeout); err != nil || got != c.Backend {
			t.Fatalf("with no daemon, %s connection on %s: %q, %v", c.Tenant, c.Backend, got, err)
		}
	}
	err := s.Topo.GW.Do(func() error {
		dp, err := dataplane.Open(s.Opts)
		if err != nil {
			return err
		}
		s.DP = dp
		for _, ifname := range s.Topo.GatewayInterfaces() {
			if _, err := dp.Attach(ifname); err != nil {
				return err
			}
		}
		// A new writer knows nothing: its first apply reads the maps back.
		c, err := tenant.Compile(s.Topo.Config(), s.Topo, s.Compiled.IDs, s.Opts.Limits)
		if err != nil {
			return err
		}
		return dp.Writer().Apply(c)
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range conns {
		if got, err := c.Ask("new-daemon", demo.AskTimeout); err != nil || got != c.Backend {
			t.Fatalf("after restart, %s connection on %s: %q, %v", c.Tenant, c.Backend, got, err)
		}
	}
	if got := demo.Spread(connect(t, s, s.Topo.Tenants[0], 30)); len(got) != 3 {
		t.Fatalf("after restart new connections reached only %v", got)
	}
	st, err := dataplane.ReadStatus(s.Opts)
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Interfaces) != len(s.Topo.GatewayInterfaces()) || len(st.Backends) != 6 || len(st.Services) != 2 || st.Flows == 0 {
		t.Fatalf("status after restart: %d interfaces, %d backends, %d services, %d flows",
			len(st.Interfaces), len(st.Backends), len(st.Services), st.Flows)
	}
}
