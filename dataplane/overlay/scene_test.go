package overlay

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/seed4c/moat/attest"
	"github.com/seed4c/moat/attest/agent"
	"github.com/seed4c/moat/attest/fakese"
	"github.com/seed4c/moat/attest/tpmwire"
	"github.com/seed4c/moat/attest/verifier"
	"github.com/seed4c/moat/dataplane"
	"github.com/seed4c/moat/internal/netns"
	"github.com/seed4c/moat/internal/topology"
	"github.com/seed4c/moat/lb"
	"github.com/seed4c/moat/tenant"
)

// The scene: two sites and a remote backend host on one underlay.
//
//	site 1: gateway A (fast path) — clients of tenants a and b (same addresses), a local
//	        backend of tenant a
//	host R: a backend host of tenant a reachable only through the overlay
//	site 2: gateway B (fast path) — one backend of tenant a, one of tenant b (same
//	        addresses), behind B's service 10.100.2.1:80 of each tenant
//	underlay: 192.0.2.0/24 on a bridge in its own namespace (where the capture runs)
//
// Tenant a's service at A balances over its local backend, R, and site 2 (B's VIP of
// tenant a); tenant b's over site 2 only. Overlay addresses 100.64.0.1 (A), .2 (B), .3
// (R); tenant segments VNI 11 (a: A, B, R) and 12 (b: A, B), 10.9.0.0/24 in both.
type scene struct {
	t     testing.TB
	wan   *netns.Host
	nodes map[string]*sceneNode // "gw-a", "gw-b", "host-r"
	sites map[string]*site      // "gw-a", "gw-b"
	hosts map[string]*netns.Host
	srv   map[string]*topology.EchoServer
	all   []*netns.Host
	vA    *verifier.Verifier
	stop  []func()
	dirs  []string // removed last, once every agent has stopped
}

type sceneNode struct {
	name    string
	h       *netns.Host
	se      *fakese.SE
	dir     string
	app     string
	offset  *atomic.Int64
	cfg     Config
	machine Machine
	node    *Node
	agents  []*agent.Agent
	// stopAgents stops this node's agents (it stops attesting).
	stopAgents []func()
	cancel     context.CancelFunc
	wg         sync.WaitGroup
}

func (n *sceneNode) clock() time.Time { return time.Now().Add(time.Duration(n.offset.Load())) }

type site struct {
	name     string
	h        *netns.Host
	dp       *dataplane.Dataplane
	opts     dataplane.Options
	cfg      tenant.Config
	compiled *tenant.Compiled
	mu       sync.Mutex
}

func (s *site) Index(name string) (uint32, error) {
	l, err := s.h.Link(name)
	if err != nil {
		return 0, err
	}
	return uint32(l.Attrs().Index), nil
}

// apply compiles and writes the site's configuration.
func (s *site) apply() error {
	var prev tenant.IDs
	if s.compiled != nil {
		prev = s.compiled.IDs
	}
	c, err := tenant.Compile(s.cfg, s, prev, s.opts.Limits)
	if err != nil {
		return err
	}
	if err := s.h.Do(func() error { return s.dp.Writer().Apply(c) }); err != nil {
		return err
	}
	s.compiled = c
	return nil
}

// setBackend sets a backend's admission state in every service of the site.
func (s *site) setBackend(name string, st lb.State) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	changed := false
	for i := range s.cfg.Tenants {
		for j := range s.cfg.Tenants[i].Services {
			for k := range s.cfg.Tenants[i].Services[j].Backends {
				if b := &s.cfg.Tenants[i].Services[j].Backends[k]; b.Name == name && b.State != st {
					b.State, changed = st, true
				}
			}
		}
	}
	if !changed {
		return nil
	}
	return s.apply()
}

const (
	appRelease  = "application release 1\n"
	markerBytes = "MOAT-PLAINTEXT-MARKER-0123456789"
	epochPeriod = time.Hour
)

func (s *scene) host(name string) *netns.Host {
	h, err := netns.NewHost(netns.UniqueName("ov" + name))
	if err != nil {
		s.t.Fatal(err)
	}
	s.all = append(s.all, h)
	for _, kv := range [][2]string{{"net/ipv4/ip_forward", "1"}, {"net/ipv4/conf/all/rp_filter", "0"},
		{"net/ipv4/conf/default/rp_filter", "0"}, {"net/ipv6/conf/all/disable_ipv6", "1"}, {"net/ipv6/conf/default/disable_ipv6", "1"}} {
		if err := h.Sysctl(kv[0], kv[1]); err != nil {
			s.t.Fatal(err)
		}
	}
	return h
}

func (s *scene) must(err error) {
	s.t.Helper()
	if err != nil {
		s.t.Fatal(err)
	}
}

// attachHost links a tenant host to a gateway: veth gwIface—eth0, the gateway's address
// in the tenant's table only, the host's default route through it.
func (s *scene) attachHost(gw *netns.Host, gwIface, gwCIDR string, host *netns.Host, hostCIDR string, table int) {
	s.t.Helper()
	_, _, err := netns.Veth(gw, gwIface, host, "eth0")
	s.must(err)
	l, err := gw.Link(gwIface)
	s.must(err)
	a, err := netlink.ParseAddr(gwCIDR)
	s.must(err)
	a.Flags = unix.IFA_F_NOPREFIXROUTE
	s.must(gw.Netlink().AddrAdd(l, a))
	pfx := netip.MustParsePrefix(gwCIDR).Masked().String()
	s.must(gw.AddRoute(netns.Route{Dst: pfx, Dev: gwIface, Table: table}))
	s.must(gw.AddRule(gwIface, table, 1000))
	s.must(host.AddAddr("eth0", hostCIDR))
	s.must(host.AddRoute(netns.Route{Dst: "default", Dev: "eth0", Via: strings.Split(gwCIDR, "/")[0]}))
	// Hosts stand for machines on wires: full checksums; NAPI (GRO) so that frames the
	// fast path redirects into the veth are delivered.
	s.must(host.DisableOffloads("eth0"))
	s.must(host.Do(func() error { return setGRO("eth0", true) }))
}

func newScene(t testing.TB) *scene {
	netns.RequireRoot(t)
	s := &scene{t: t, nodes: map[string]*sceneNode{}, sites: map[string]*site{}, hosts: map[string]*netns.Host{}, srv: map[string]*topology.EchoServer{}}
	t.Cleanup(s.close)
	s.wan = s.host("wan")
	s.must(s.wan.Netlink().LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "br0"}}))
	s.must(s.wan.LinkUp("br0"))
	br, err := s.wan.Link("br0")
	s.must(err)
	for i, name := range []string{"gw-a", "gw-b", "host-r"} {
		h := s.host(strings.ReplaceAll(name, "-", ""))
		port := fmt.Sprintf("p%d", i+1)
		_, _, err := netns.Veth(h, "wan", s.wan, port)
		s.must(err)
		pl, err := s.wan.Link(port)
		s.must(err)
		s.must(s.wan.Netlink().LinkSetMaster(pl, br))
		s.must(h.AddAddr("wan", fmt.Sprintf("192.0.2.%d/24", i+1)))
		dir, err := os.MkdirTemp("", "moat-overlay-"+name+"-")
		s.must(err)
		s.dirs = append(s.dirs, dir)
		s.nodes[name] = &sceneNode{name: name, h: h, offset: new(atomic.Int64), dir: dir}
	}
	gwA, gwB := s.nodes["gw-a"].h, s.nodes["gw-b"].h
	for _, n := range []string{"cla", "clb", "loca", "bka", "bkb"} {
		s.hosts[n] = s.host(n)
	}
	s.attachHost(gwA, "ca", "10.0.0.1/24", s.hosts["cla"], "10.0.0.2/24", 100)
	s.attachHost(gwA, "cb", "10.0.0.1/24", s.hosts["clb"], "10.0.0.2/24", 200)
	s.attachHost(gwA, "la", "10.1.1.1/24", s.hosts["loca"], "10.1.1.2/24", 100)
	s.attachHost(gwB, "ba", "10.2.0.1/24", s.hosts["bka"], "10.2.0.2/24", 100)
	s.attachHost(gwB, "bb", "10.2.0.1/24", s.hosts["bkb"], "10.2.0.2/24", 200)
	for name, h := range map[string]*netns.Host{"local-a": s.hosts["loca"], "site2-a": s.hosts["bka"], "site2-b": s.hosts["bkb"], "host-r": s.nodes["host-r"].h} {
		addr := ":8080"
		if name == "host-r" {
			addr = "10.9.0.3:8080"
			continue // R's segment address exists once its overlay is up
		}
		srv, err := topology.StartEchoServer(h, name, addr)
		s.must(err)
		s.srv[name] = srv
	}

	ov := func(n int) netip.Addr { return netip.AddrFrom4([4]byte{100, 64, 0, byte(n)}) }
	ep := func(n int) netip.AddrPort {
		return netip.AddrPortFrom(netip.AddrFrom4([4]byte{192, 0, 2, byte(n)}), DefaultListenPort)
	}
	seg := func(addr string, table int, routes ...Route) Segment {
		return Segment{Address: netip.MustParsePrefix(addr), Table: table, Routes: routes}
	}
	via := func(dst, v string) Route {
		return Route{Dst: netip.MustParsePrefix(dst), Via: netip.MustParseAddr(v)}
	}
	a := s.nodes["gw-a"]
	a.cfg = Config{Address: netip.PrefixFrom(ov(1), 24), Peers: []PeerConfig{
		{Subject: "gw-b", Endpoint: ep(2), Address: ov(2)}, {Subject: "host-r", Endpoint: ep(3), Address: ov(3)}}}
	sa, sb := seg("10.9.0.1/24", 100, via("10.100.2.1/32", "10.9.0.2")), seg("10.9.0.1/24", 200, via("10.100.2.1/32", "10.9.0.2"))
	sa.Tenant, sa.VNI, sa.Peers, sa.FastPath = "a", 11, []string{"gw-b", "host-r"}, true
	sb.Tenant, sb.VNI, sb.Peers, sb.FastPath = "b", 12, []string{"gw-b"}, true
	a.machine = Machine{Segments: []Segment{sa, sb}}

	b := s.nodes["gw-b"]
	b.cfg = Config{Address: netip.PrefixFrom(ov(2), 24), Peers: []PeerConfig{{Subject: "gw-a", Endpoint: ep(1), Address: ov(1)}}}
	ba, bb := seg("10.9.0.2/24", 100, via("10.0.0.0/24", "10.9.0.1")), seg("10.9.0.2/24", 200, via("10.0.0.0/24", "10.9.0.1"))
	ba.Tenant, ba.VNI, ba.Peers, ba.FastPath = "a", 11, []string{"gw-a"}, true
	bb.Tenant, bb.VNI, bb.Peers, bb.FastPath = "b", 12, []string{"gw-a"}, true
	b.machine = Machine{Segments: []Segment{ba, bb}}

	r := s.nodes["host-r"]
	// R keeps its NAT mapping (and its roaming) alive: WireGuard learns a moved peer
	// from its next authenticated packet.
	r.cfg = Config{Address: netip.PrefixFrom(ov(3), 24), Keepalive: time.Second, Peers: []PeerConfig{{Subject: "gw-a", Endpoint: ep(1), Address: ov(1)}}}
	ra := seg("10.9.0.3/24", 0, via("10.0.0.0/24", "10.9.0.1"))
	ra.Tenant, ra.VNI, ra.Peers = "a", 11, []string{"gw-a"}
	r.machine = Machine{Segments: []Segment{ra}}

	for _, name := range []string{"gw-a", "gw-b", "host-r"} {
		s.startNode(s.nodes[name])
	}
	srv, err := topology.StartEchoServer(r.h, "host-r", "10.9.0.3:8080")
	s.must(err)
	s.srv["host-r"] = srv

	s.startSite("gw-a", tenant.Config{Tenants: []tenant.Tenant{
		siteTenant("a", 100, []string{"ca", "la", "ov11"}, "10.100.0.1", 80,
			tenant.Backend{Name: "local-a", Addr: netip.MustParseAddr("10.1.1.2"), Port: 8080, Weight: 1, State: lb.StateAdmitted},
			tenant.Backend{Name: "host-r", Addr: netip.MustParseAddr("10.9.0.3"), Port: 8080, Weight: 1, State: lb.StateEvicted},
			tenant.Backend{Name: "gw-b", Addr: netip.MustParseAddr("10.100.2.1"), Port: 80, Weight: 1, State: lb.StateEvicted}),
		siteTenant("b", 200, []string{"cb", "ov12"}, "10.100.0.1", 80,
			tenant.Backend{Name: "gw-b", Addr: netip.MustParseAddr("10.100.2.1"), Port: 80, Weight: 1, State: lb.StateEvicted}),
	}})
	s.startSite("gw-b", tenant.Config{Tenants: []tenant.Tenant{
		siteTenant("a", 100, []string{"ba", "ov11"}, "10.100.2.1", 80,
			tenant.Backend{Name: "site2-a", Addr: netip.MustParseAddr("10.2.0.2"), Port: 8080, Weight: 1, State: lb.StateAdmitted}),
		siteTenant("b", 200, []string{"bb", "ov12"}, "10.100.2.1", 80,
			tenant.Backend{Name: "site2-b", Addr: netip.MustParseAddr("10.2.0.2"), Port: 8080, Weight: 1, State: lb.StateAdmitted}),
	}})

	// Mutual attestation: A's verifier appraises B and R, B's and R's appraise A. Each
	// overlay node hears its verifier's results; A's site also admits the backends the
	// overlay peers stand for (what the gateway's reconciler does).
	siteA := s.sites["gw-a"]
	admission := verifier.SubscriberFunc(func(res attest.Result) {
		st := lb.StateEvicted
		if res.Admits(time.Now()) {
			st = lb.StateAdmitted
		}
		if res.Status == attest.StatusRefused {
			return
		}
		if err := siteA.setBackend(res.Subject, st); err != nil {
			t.Errorf("admission of %s: %v", res.Subject, err)
		}
	})
	s.vA = s.verifier(verifier.Subscribers{admission, a.node}, b, r)
	vB := s.verifier(b.node, a)
	vR := s.verifier(r.node, a)
	s.attest(a, vB, vR)
	s.attest(b, s.vA)
	s.attest(r, s.vA)
	s.waitPeers(a, "gw-b", "host-r")
	s.waitPeers(b, "gw-a")
	s.waitPeers(r, "gw-a")
	return s
}

func siteTenant(name string, table int, ifaces []string, vip string, port uint16, backends ...tenant.Backend) tenant.Tenant {
	tn := tenant.Tenant{Name: name, FIBTable: uint32(table),
		Rules:    []tenant.Rule{{Name: "clients", Sources: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/24")}, Services: []string{"web"}}},
		Services: []tenant.Service{{Name: "web", VIP: netip.MustParseAddr(vip), Port: port, Protocol: tenant.TCP, MaglevSize: 251, Backends: backends}}}
	for _, i := range ifaces {
		tn.Attachments = append(tn.Attachments, tenant.Attachment{Interface: i})
	}
	return tn
}

// startNode measures the node's application into PCR 15 (its known-good state), then
// brings the overlay up, which seals the WireGuard key to that state the first time.
func (s *scene) startNode(n *sceneNode) {
	s.t.Helper()
	if n.se == nil {
		se, err := fakese.New()
		s.must(err)
		n.se = se
		n.app = filepath.Join(n.dir, "app.bin")
		s.must(os.WriteFile(n.app, []byte(appRelease), 0o644))
	}
	m, err := agent.NewMeasurer(n.se, attest.DefaultMeasurementPCR, []string{n.app}, filepath.Join(n.dir, "agent", "pcr15.mlog"))
	if err == nil {
		_, err = m.Measure()
	}
	s.must(err)
	n.cfg.KeyFile = filepath.Join(n.dir, "wireguard.sealed")
	n.cfg.Epoch = epochPeriod
	n.cfg.EpochClock = n.clock
	var node *Node
	err = n.h.Do(func() (err error) {
		node, err = Up(n.cfg, n.machine, n.se, NetlinkLinks{NL: n.h.Netlink()}, NFT{Command: n.h.Command}, slog.Default().With("node", n.name))
		return err
	})
	s.must(err)
	n.node = node
	ctx, cancel := context.WithCancel(context.Background())
	n.cancel = cancel
	n.wg.Add(1)
	go func() { defer n.wg.Done(); node.Run(ctx) }()
}

func (s *scene) startSite(name string, cfg tenant.Config) {
	s.t.Helper()
	h := s.nodes[name].h
	st := &site{name: name, h: h, cfg: cfg, opts: dataplane.DefaultOptions(netns.UniqueName("ov"))}
	s.must(h.Do(func() (err error) { st.dp, err = dataplane.Open(st.opts); return err }))
	s.sites[name] = st
	s.must(st.apply())
	s.must(h.Do(func() error {
		for _, tn := range cfg.Tenants {
			for _, a := range tn.Attachments {
				if _, err := st.dp.Attach(a.Interface); err != nil {
					return err
				}
			}
		}
		return nil
	}))
}

// verifier starts a verifier whose policies accept the given nodes' known-good
// application and EK.
func (s *scene) verifier(sub verifier.Subscriber, nodes ...*sceneNode) *verifier.Verifier {
	s.t.Helper()
	pols := policies{}
	for _, n := range nodes {
		ek, err := n.se.EndorsementKey()
		s.must(err)
		d, _, err := tpmwire.EKSHA256(ek.Public)
		s.must(err)
		pols[n.name] = &verifier.Policy{Name: n.name, MeasurementPCR: attest.DefaultMeasurementPCR,
			References: map[string][][32]byte{n.app: {sha256.Sum256([]byte(appRelease))}}, AllowedEKs: [][32]byte{d}, PinEKs: true}
	}
	v, err := verifier.New(verifier.Config{Policies: pols, Subscriber: sub, ResultTTL: 2 * time.Second})
	s.must(err)
	s.stop = append(s.stop, func() { v.Close() })
	return v
}

type policies map[string]*verifier.Policy

func (p policies) Policy(subject string) (*verifier.Policy, error) {
	if pol, ok := p[subject]; ok {
		return pol, nil
	}
	return nil, fmt.Errorf("no policy for %q", subject)
}

// attest runs the node's agent toward each verifier every 200 ms: its quotes bind the
// node's real WireGuard key and its SE's ECDH key.
func (s *scene) attest(n *sceneNode, vs ...*verifier.Verifier) {
	s.t.Helper()
	for _, v := range vs {
		priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		s.must(err)
		spki, err := x509.MarshalPKIXPublicKey(priv.Public())
		s.must(err)
		cfg := agent.Config{VerifierURL: "https://verifier.invalid/attest", Identity: n.name, Measure: []string{n.app},
			Interval: 200 * time.Millisecond, StateDir: filepath.Join(n.dir, "agent"), WireGuardKey: n.node.PublicKey().bytes()}
		a, err := agent.New(cfg, n.se, verifier.LocalClient{Verifier: v, Key: spki}, slog.New(slog.DiscardHandler))
		s.must(err)
		n.agents = append(n.agents, a)
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { defer close(done); a.Run(ctx) }()
		s.stop = append(s.stop, func() { cancel(); <-done })
		n.stopAgents = append(n.stopAgents, func() { cancel(); <-done })
	}
}

// waitPeers waits until n's overlay has configured exactly the given peers.
func (s *scene) waitPeers(n *sceneNode, want ...string) {
	s.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		got := n.node.Peers()
		if strings.Join(got, ",") == strings.Join(want, ",") {
			return
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("%s: overlay peers %v, want %v", n.name, got, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// stopNode stops a node's agents and overlay (its TUN and segments go with it).
func (s *scene) stopNode(n *sceneNode) {
	for _, stop := range n.stopAgents {
		stop()
	}
	n.stopAgents = nil
	if n.cancel != nil {
		n.cancel()
		n.wg.Wait()
		n.cancel = nil
	}
	if n.node != nil {
		n.node.Close()
		n.node = nil
		_ = n.h.Do(func() error {
			for _, seg := range n.machine.Segments {
				NetlinkLinks{NL: n.h.Netlink()}.RemoveSegment(seg)
			}
			return nil
		})
	}
}

func (s *scene) close() {
	for i := len(s.stop) - 1; i >= 0; i-- {
		s.stop[i]()
	}
	for _, srv := range s.srv {
		srv.Close()
	}
	for _, n := range s.nodes {
		s.stopNode(n)
	}
	for _, st := range s.sites {
		if st.dp != nil {
			st.dp.Close()
		}
		dataplane.Remove(st.opts)
	}
	for i := len(s.all) - 1; i >= 0; i-- {
		s.all[i].Close()
	}
	for _, d := range s.dirs {
		os.RemoveAll(d)
	}
}

// linkStats reads an interface's counters in a host.
func linkStats(h *netns.Host, name string) (*netlink.LinkStatistics, error) {
	l, err := h.Link(name)
	if err != nil {
		return nil, err
	}
	return l.Attrs().Statistics, nil
}

// connect opens n connections from a client host to the VIP and asks each which
// backend serves it.
func connect(h *netns.Host, n int) (map[string]int, []*topology.Conn, error) {
	spread := map[string]int{}
	var conns []*topology.Conn
	for i := range n {
		c, err := topology.Dial(h, "10.100.0.1:80", 3*time.Second)
		if err != nil {
			return spread, conns, fmt.Errorf("connection %d: %w", i, err)
		}
		conns = append(conns, c)
		name, err := c.Ask("hello", 3*time.Second)
		if err != nil {
			return spread, conns, fmt.Errorf("connection %d: %w", i, err)
		}
		spread[name]++
	}
	return spread, conns, nil
}

func closeAll(conns []*topology.Conn) {
	for _, c := range conns {
		c.Close()
	}
}

// sendUDP sends n datagrams from inside a host; bindDev, when set, binds the socket to
// that interface.
func sendUDP(h *netns.Host, bindDev, dst string, payload []byte, n int) error {
	return h.Do(func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		if bindDev != "" {
			if err := unix.SetsockoptString(fd, unix.SOL_SOCKET, unix.SO_BINDTODEVICE, bindDev); err != nil {
				return err
			}
		}
		ap := netip.MustParseAddrPort(dst)
		sa := &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}
		for range n {
			if err := unix.Sendto(fd, payload, 0, sa); err != nil && !errors.Is(err, unix.ENOKEY) && !errors.Is(err, unix.EHOSTUNREACH) {
				return err
			}
			time.Sleep(5 * time.Millisecond)
		}
		return nil
	})
}

// vxlanFrame is a VXLAN packet carrying a broadcast ARP request (who has target?).
func vxlanFrame(vni uint32, target netip.Addr) []byte {
	b := []byte{0x08, 0, 0, 0, byte(vni >> 16), byte(vni >> 8), byte(vni), 0}
	b = append(b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 0, 0, 0, 0, 0x66, 0x08, 0x06) // Ethernet, ARP
	b = append(b, 0, 1, 8, 0, 6, 4, 0, 1, 0x02, 0, 0, 0, 0, 0x66, 10, 9, 0, 66, 0, 0, 0, 0, 0, 0)
	t := target.As4()
	return append(b, t[:]...)
}
