package dataplane_test

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/seed4c/moat/dataplane"
	"github.com/seed4c/moat/internal/demo"
	"github.com/seed4c/moat/internal/netns"
	"github.com/seed4c/moat/internal/packet"
	"github.com/seed4c/moat/internal/topology"
	"github.com/seed4c/moat/lb"
	"github.com/seed4c/moat/tenant"
)

const askTimeout = 3 * time.Second

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

type conn struct {
	c       *topology.Conn
	tenant  string
	backend string
}

// dialMany opens n connections from tenant tn's client to the VIP and asks each which
// backend serves it.
func dialMany(t *testing.T, s *demo.Scene, tn *topology.Tenant, n int) []*conn {
	t.Helper()
	vip := fmt.Sprintf("%s:%d", s.Topo.Opts.VIP, s.Topo.Opts.Port)
	out := make([]*conn, n)
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := topology.Dial(tn.Client, vip, askTimeout)
			if err != nil {
				errs <- fmt.Errorf("tenant %s dial %s: %w", tn.Name, vip, err)
				return
			}
			b, err := c.Ask("hello", askTimeout)
			if err != nil {
				errs <- fmt.Errorf("tenant %s connection %d: %w", tn.Name, i, err)
				return
			}
			out[i] = &conn{c: c, tenant: tn.Name, backend: b}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for _, c := range out {
			c.c.Close()
		}
	})
	return out
}

func spread(conns []*conn) map[string]int {
	m := map[string]int{}
	for _, c := range conns {
		m[c.backend]++
	}
	return m
}

// TestPrivilegedTwoTenantsSameAddresses: two tenants with the same client prefix, the
// same VIP and the same backend addresses, real TCP through the attached fast path.
func TestPrivilegedTwoTenantsSameAddresses(t *testing.T) {
	s := newScene(t, 3)
	a, b := s.Topo.Tenants[0], s.Topo.Tenants[1]

	// Connections spread over every backend of the right tenant, and only those.
	connsA := dialMany(t, s, a, 60)
	connsB := dialMany(t, s, b, 60)
	for _, set := range [][]*conn{connsA, connsB} {
		got := spread(set)
		t.Logf("tenant %s: %v", set[0].tenant, got)
		for name := range got {
			if !strings.HasPrefix(name, set[0].tenant+"-") {
				t.Fatalf("tenant %s connection served by %s", set[0].tenant, name)
			}
		}
		if len(got) != 3 {
			t.Fatalf("tenant %s: 60 connections reached %d of 3 backends: %v", set[0].tenant, len(got), got)
		}
	}

	// A connection stays on its backend for its life.
	for round := range 3 {
		for _, c := range append(connsA, connsB...) {
			got, err := c.c.Ask(fmt.Sprintf("round-%d", round), askTimeout)
			if err != nil || got != c.backend {
				t.Fatalf("%s connection on %s: answered by %q, %v", c.tenant, c.backend, got, err)
			}
		}
	}

	// Removing a backend moves only its own connections.
	cfg := s.Topo.Config()
	removed := a.Backends[1].Name
	cfg.Tenants[0].Services[0].Backends = slicesDelete(cfg.Tenants[0].Services[0].Backends, 1)
	if err := s.Apply(cfg); err != nil {
		t.Fatal(err)
	}
	moved := 0
	for _, c := range append(connsA, connsB...) {
		got, err := c.c.Ask("after-removal", askTimeout)
		if c.backend == removed {
			if err == nil {
				t.Fatalf("connection of removed backend %s still answered, by %s", removed, got)
			}
			moved++
			continue
		}
		if err != nil || got != c.backend {
			t.Fatalf("%s connection on %s disturbed by removing %s: %q, %v", c.tenant, c.backend, removed, got, err)
		}
	}
	t.Logf("removing %s broke its %d connections and no other", removed, moved)
	for name := range spread(dialMany(t, s, a, 30)) {
		if name == removed || !strings.HasPrefix(name, "a-") {
			t.Fatalf("new connection of tenant a served by %s after removing %s", name, removed)
		}
	}
}

func slicesDelete[T any](s []T, i int) []T {
	return append(append([]T(nil), s[:i]...), s[i+1:]...)
}

// TestPrivilegedCrossTenantRefused: tenant a's network cannot reach anything of tenant
// b's, directly, through the VIP, or with spoofed sources; the frames it sends to try
// are dropped and counted.
func TestPrivilegedCrossTenantRefused(t *testing.T) {
	s := newScene(t, 3)
	a, b := s.Topo.Tenants[0], s.Topo.Tenants[1]
	dialMany(t, s, b, 6) // tenant b has live flows the attacker could try to hit

	// Directly to a backend address (not a service): refused, nobody accepts.
	before := acceptedAll(s)
	if c, err := topology.Dial(a.Client, netip.AddrPortFrom(b.Backends[0].Addr, 8080).String(), time.Second); err == nil {
		c.Close()
		t.Fatal("tenant a reached a backend address directly")
	}
	if after := acceptedAll(s); after != before {
		t.Fatalf("a direct connection attempt was accepted by a backend (%d -> %d)", before, after)
	}

	// Spoofed frames from tenant a's wire, marked so any receiver can be caught.
	magic := []byte("MOAT-SPOOF-PROBE")
	var watchers []*netns.RawSocket
	for _, h := range append([]*netns.Host{b.Client}, hostsOf(b)...) {
		rs, err := h.OpenRaw("eth0")
		if err != nil {
			t.Fatal(err)
		}
		defer rs.Close()
		watchers = append(watchers, rs)
	}
	caught := make(chan string, 16)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i, rs := range watchers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rs.SetReadTimeout(50 * time.Millisecond)
			buf := make([]byte, 4096)
			for {
				select {
				case <-stop:
					return
				default:
				}
				n, err := rs.Recv(buf)
				if err == nil && bytes.Contains(buf[:n], magic) {
					caught <- fmt.Sprintf("host %d of tenant b received a spoofed frame from tenant a", i)
					return
				}
			}
		}()
	}
	spoofer, err := a.Client.OpenRaw("eth0")
	if err != nil {
		t.Fatal(err)
	}
	defer spoofer.Close()
	gwMAC := linkMAC(t, s.Topo.GW, a.ClientIface)
	clientMAC := linkMAC(t, a.Client, "eth0")
	r := rand.New(rand.NewPCG(1, 2))
	sources := []string{"10.0.0.2", "10.0.0.3", "10.1.1.2", "10.1.2.2", "10.100.0.1", "10.0.0.1", "192.0.2.7"}
	dests := []netip.AddrPort{
		netip.MustParseAddrPort("10.100.0.1:80"), netip.MustParseAddrPort("10.1.1.2:8080"),
		netip.MustParseAddrPort("10.1.2.2:8080"), netip.MustParseAddrPort("10.0.0.2:40000"),
		netip.MustParseAddrPort("10.0.0.255:80"),
	}
	const spoofed = 400
	for i := range spoofed {
		d := dests[r.IntN(len(dests))]
		f := packet.Frame{
			Src: clientMAC, Dst: gwMAC, SrcIP: netip.MustParseAddr(sources[r.IntN(len(sources))]), DstIP: d.Addr(),
			Proto: []uint8{6, 17}[r.IntN(2)], SrcPort: uint16(1024 + r.IntN(60000)), DstPort: d.Port(),
			TCPFlags: []uint8{packet.SYN, packet.ACK, packet.RST, packet.PSH | packet.ACK}[r.IntN(4)], Payload: magic,
		}
		if i%5 == 0 { // a "reply" from a backend address, toward the clients
			f.SrcIP, f.SrcPort = netip.MustParseAddr("10.1.1.2"), 8080
		}
		if err := spoofer.Send(f.Build()); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(500 * time.Millisecond) // anything let through would have arrived by now
	close(stop)
	wg.Wait()
	close(caught)
	for msg := range caught {
		t.Error(msg)
	}

	// Malformed frames: each dropped with its reason, every one counted.
	valid := packet.Frame{Src: clientMAC, Dst: gwMAC, SrcIP: netip.MustParseAddr("10.0.0.2"),
		DstIP: netip.MustParseAddr("10.100.0.1"), Proto: 6, SrcPort: 5555, DstPort: 80}.Build()
	mk := func(f func(b []byte) []byte) []byte { return f(append([]byte(nil), valid...)) }
	malformed := []struct {
		reason dataplane.Reason
		frame  []byte
	}{
		{dataplane.DropTruncatedL3, mk(func(b []byte) []byte { return b[:14+12] })},
		{dataplane.DropBadIHL, mk(func(b []byte) []byte { b[14] = 0x43; return b })},
		{dataplane.DropBadIPLen, mk(func(b []byte) []byte { b[16], b[17] = 0x05, 0xdc; fixCsum(b); return b })},
		{dataplane.DropBadIPLen, mk(func(b []byte) []byte { b[16], b[17] = 0, 12; fixCsum(b); return b })},
		{dataplane.DropBadIPVersion, mk(func(b []byte) []byte { b[14] = 0x65; return b })},
		{dataplane.DropTruncatedL4, mk(func(b []byte) []byte { b[16], b[17] = 0, 30; fixCsum(b); return b[:14+30] })},
		{dataplane.DropBadTCPHdr, mk(func(b []byte) []byte { b[14+20+12] = 0x20; return b })},
		{dataplane.DropBadIPCsum, mk(func(b []byte) []byte { b[24] ^= 0x5a; return b })},
		{dataplane.DropTruncatedL2, []byte{2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x81, 0x00, 0x00}},
	}
	base, err := s.DP.Counters()
	if err != nil {
		t.Fatal(err)
	}
	want := map[dataplane.Reason]uint64{}
	for _, m := range malformed {
		for range 5 {
			if err := spoofer.Send(m.frame); err != nil {
				t.Fatal(err)
			}
		}
		want[m.reason] += 5
	}
	deadline := time.Now().Add(3 * time.Second)
	for {
		now, err := s.DP.Counters()
		if err != nil {
			t.Fatal(err)
		}
		var missing []string
		for r, n := range want {
			if got := now.Reasons[r].Packets - base.Reasons[r].Packets; got != n {
				missing = append(missing, fmt.Sprintf("%s: %d of %d", r, got, n))
			}
		}
		if len(missing) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("malformed frames not counted as expected: %v", missing)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func fixCsum(b []byte) {
	b[24], b[25] = 0, 0
	c := packet.Checksum(b[14:34], 0)
	b[24], b[25] = byte(c>>8), byte(c)
}

func hostsOf(tn *topology.Tenant) []*netns.Host {
	var out []*netns.Host
	for _, b := range tn.Backends {
		out = append(out, b.Host)
	}
	return out
}

func acceptedAll(s *demo.Scene) int64 {
	var n int64
	for _, tn := range s.Topo.Tenants {
		for _, b := range tn.Backends {
			n += b.Server.Accepted()
		}
	}
	return n
}

func linkMAC(t *testing.T, h *netns.Host, name string) net.HardwareAddr {
	t.Helper()
	l, err := h.Link(name)
	if err != nil {
		t.Fatal(err)
	}
	return l.Attrs().HardwareAddr
}

// TestPrivilegedDrainAndEvict: a draining backend keeps its connections and gets no
// new ones; an evicted backend's connections stop at once; re-admission restores it.
func TestPrivilegedDrainAndEvict(t *testing.T) {
	s := newScene(t, 3)
	a := s.Topo.Tenants[0]
	conns := dialMany(t, s, a, 45)
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
		got, err := c.c.Ask("after", askTimeout)
		switch c.backend {
		case evicted.Name:
			if err == nil {
				t.Fatalf("connection on evicted %s answered by %s", evicted.Name, got)
			}
		default:
			if err != nil || got != c.backend {
				t.Fatalf("connection on %s (draining or admitted) disturbed: %q, %v", c.backend, got, err)
			}
		}
	}
	if n := evicted.Server.Lines() - linesBefore; n != 0 {
		t.Fatalf("evicted backend %s still received %d requests", evicted.Name, n)
	}
	for name := range spread(dialMany(t, s, a, 30)) {
		if name != a.Backends[1].Name {
			t.Fatalf("new connection reached %s, which is draining or evicted", name)
		}
	}

	bs[0].State, bs[2].State = lb.StateAdmitted, lb.StateAdmitted
	if err := s.Apply(cfg); err != nil {
		t.Fatal(err)
	}
	if got := spread(dialMany(t, s, a, 60)); len(got) != 3 {
		t.Fatalf("after re-admission 60 connections reached only %v", got)
	}
}

// TestPrivilegedRestartKeepsFlows: the daemon's process goes away and comes back;
// pinned maps and links keep forwarding meanwhile, and established connections
// survive both the gap and the new process taking over.
func TestPrivilegedRestartKeepsFlows(t *testing.T) {
	s := newScene(t, 3)
	conns := append(dialMany(t, s, s.Topo.Tenants[0], 20), dialMany(t, s, s.Topo.Tenants[1], 20)...)

	if err := s.DP.Close(); err != nil { // the process exits: handles closed, pins stay
		t.Fatal(err)
	}
	s.DP = nil
	for _, c := range conns {
		if got, err := c.c.Ask("no-daemon", askTimeout); err != nil || got != c.backend {
			t.Fatalf("with no daemon, %s connection on %s: %q, %v", c.tenant, c.backend, got, err)
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
		if got, err := c.c.Ask("new-daemon", askTimeout); err != nil || got != c.backend {
			t.Fatalf("after restart, %s connection on %s: %q, %v", c.tenant, c.backend, got, err)
		}
	}
	if got := spread(dialMany(t, s, s.Topo.Tenants[0], 30)); len(got) != 3 {
		t.Fatalf("after restart new connections reached only %v", got)
	}
}
