// Package topology builds moat's reference scene in network namespaces: a gateway and,
// per tenant, a client network and backend hosts, with every tenant using the SAME
// client prefix, the SAME virtual IP and the SAME backend addresses. The demo, the
// integration tests and the benchmarks all run on it. It configures the kernel side
// (namespaces, veths, addresses, per-tenant routing tables and rules); attaching the
// fast path is the caller's business, so this package does not import the dataplane.
package topology

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/seed4c/moat/internal/netns"
	"github.com/seed4c/moat/lb"
	"github.com/seed4c/moat/tenant"
)

// Options shape the scene.
type Options struct {
	Tenants     []string // tenant names; default a, b
	Backends    int      // backend hosts per tenant; default 3
	Clients     int      // client addresses per tenant network; default 1
	VIP         netip.Addr
	Port        uint16 // service port; default 80
	BackendPort uint16 // where backends listen; default 8080
	MaglevSize  uint32 // default lb.DefaultTableSize
	// Management adds an out-of-band management network: a bridge in the gateway
	// (10.255.0.1/24) with every backend host on it (10.255.0.10+), for what is not
	// tenant traffic, such as backend agents reaching the attestation verifier.
	Management bool
}

// ManagementGateway is the gateway's address on the management network.
const ManagementGateway = "10.255.0.1"

// Backend is one backend host of a tenant.
type Backend struct {
	Name     string // "<tenant>-<n>", also the tenant.Backend name
	Host     *netns.Host
	Addr     netip.Addr
	MgmtAddr netip.Addr // on the management network, when there is one
	GWIface  string     // the gateway's interface toward it
	Server   *EchoServer
}

// Tenant is one tenant's networks.
type Tenant struct {
	Name        string
	Table       int    // routing table of the tenant on the gateway
	ClientIface string // the gateway's interface toward the clients
	Client      *netns.Host
	ClientAddrs []netip.Addr
	GWAddr      netip.Addr // the gateway's address on the client network
	Backends    []*Backend
}

// Topology is a built scene.
type Topology struct {
	GW      *netns.Host
	Tenants []*Tenant
	Opts    Options
	hosts   []*netns.Host
}

func (o *Options) defaults() {
	if len(o.Tenants) == 0 {
		o.Tenants = []string{"a", "b"}
	}
	if o.Backends == 0 {
		o.Backends = 3
	}
	if o.Clients == 0 {
		o.Clients = 1
	}
	if !o.VIP.IsValid() {
		o.VIP = netip.MustParseAddr("10.100.0.1")
	}
	if o.Port == 0 {
		o.Port = 80
	}
	if o.BackendPort == 0 {
		o.BackendPort = 8080
	}
	if o.MaglevSize == 0 {
		o.MaglevSize = lb.DefaultTableSize
	}
}

// Build creates the scene. Addresses, identical in every tenant:
//
//	clients   10.0.0.2.. /24, gateway 10.0.0.1 (interface c<tenant>)
//	backend n 10.1.n.2 /24,   gateway 10.1.n.1 (interface b<tenant><n>)
//	service   VIP:Port -> backends :BackendPort
//
// The gateway routes each tenant in its own table (100, 200, ...), selected by rules on
// the ingress interface for the kernel's own forwarding and by the tenant's FIB table
// in the fast path. On error everything built so far is removed.
func Build(opts Options) (t *Topology, err error) {
	opts.defaults()
	t = &Topology{Opts: opts}
	defer func() {
		if err != nil {
			t.Close()
			t = nil
		}
	}()
	if t.GW, err = t.newHost("gw"); err != nil {
		return nil, err
	}
	for _, kv := range [][2]string{
		{"net/ipv4/conf/all/forwarding", "1"},
		{"net/ipv4/conf/all/rp_filter", "0"},
		{"net/ipv4/conf/default/rp_filter", "0"},
		// Answer ARP only for addresses of the interface asked on, so a tenant cannot
		// learn the gateway's addresses on other tenants' networks.
		{"net/ipv4/conf/all/arp_ignore", "1"},
	} {
		if err := t.GW.Sysctl(kv[0], kv[1]); err != nil {
			return nil, err
		}
	}
	for i, name := range opts.Tenants {
		tn, err := t.buildTenant(name, 100*(i+1))
		if err != nil {
			return nil, fmt.Errorf("tenant %s: %w", name, err)
		}
		t.Tenants = append(t.Tenants, tn)
	}
	if opts.Management {
		if err := t.buildManagement(); err != nil {
			return nil, fmt.Errorf("management network: %w", err)
		}
	}
	return t, nil
}

func (t *Topology) buildManagement() error {
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "mgmt"}}
	if err := t.GW.Netlink().LinkAdd(br); err != nil {
		return err
	}
	if err := t.GW.AddAddr("mgmt", ManagementGateway+"/24"); err != nil {
		return err
	}
	if err := t.GW.LinkUp("mgmt"); err != nil {
		return err
	}
	n := 10
	for _, tn := range t.Tenants {
		for _, b := range tn.Backends {
			port := "m" + b.GWIface[1:]
			if _, _, err := netns.Veth(t.GW, port, b.Host, "mgmt"); err != nil {
				return err
			}
			l, err := t.GW.Link(port)
			if err != nil {
				return err
			}
			if err := t.GW.Netlink().LinkSetMaster(l, br); err != nil {
				return err
			}
			b.MgmtAddr = netip.AddrFrom4([4]byte{10, 255, 0, byte(n)})
			if err := b.Host.AddAddr("mgmt", b.MgmtAddr.String()+"/24"); err != nil {
				return err
			}
			n++
		}
	}
	return nil
}

func (t *Topology) newHost(role string) (*netns.Host, error) {
	h, err := netns.NewHost(netns.UniqueName("m" + role))
	if err != nil {
		return nil, err
	}
	t.hosts = append(t.hosts, h)
	return h, nil
}

func (t *Topology) buildTenant(name string, table int) (*Tenant, error) {
	tn := &Tenant{Name: name, Table: table, ClientIface: "c" + name, GWAddr: netip.MustParseAddr("10.0.0.1")}
	var err error
	if tn.Client, err = t.newHost("c" + name); err != nil {
		return nil, err
	}
	if err := t.link(tn.Client, tn.ClientIface, "10.0.0.1/24", "10.0.0.0/24", table); err != nil {
		return nil, err
	}
	for c := 0; c < t.Opts.Clients; c++ {
		a := netip.AddrFrom4([4]byte{10, 0, 0, byte(2 + c)})
		if err := tn.Client.AddAddr("eth0", a.String()+"/24"); err != nil {
			return nil, err
		}
		tn.ClientAddrs = append(tn.ClientAddrs, a)
	}
	if err := tn.Client.AddRoute(netns.Route{Dst: "default", Dev: "eth0", Via: "10.0.0.1"}); err != nil {
		return nil, err
	}
	for n := 1; n <= t.Opts.Backends; n++ {
		b := &Backend{
			Name:    fmt.Sprintf("%s-%d", name, n),
			Addr:    netip.AddrFrom4([4]byte{10, 1, byte(n), 2}),
			GWIface: fmt.Sprintf("b%s%d", name, n),
		}
		if b.Host, err = t.newHost("b" + name); err != nil {
			return nil, err
		}
		gwAddr := fmt.Sprintf("10.1.%d.1", n)
		if err := t.link(b.Host, b.GWIface, gwAddr+"/24", fmt.Sprintf("10.1.%d.0/24", n), table); err != nil {
			return nil, err
		}
		if err := b.Host.AddAddr("eth0", b.Addr.String()+"/24"); err != nil {
			return nil, err
		}
		if err := b.Host.AddRoute(netns.Route{Dst: "default", Dev: "eth0", Via: gwAddr}); err != nil {
			return nil, err
		}
		tn.Backends = append(tn.Backends, b)
	}
	return tn, nil
}

// link connects the gateway (interface gwIface, address gwCIDR without its prefix
// route) to host (interface eth0), routes prefix through gwIface in table, and sends
// what arrives on gwIface to that table.
func (t *Topology) link(host *netns.Host, gwIface, gwCIDR, prefix string, table int) error {
	if _, _, err := netns.Veth(t.GW, gwIface, host, "eth0"); err != nil {
		return err
	}
	l, err := t.GW.Link(gwIface)
	if err != nil {
		return err
	}
	a, err := netlink.ParseAddr(gwCIDR)
	if err != nil {
		return err
	}
	a.Flags = unix.IFA_F_NOPREFIXROUTE // every tenant has the same prefixes: routes live in tenant tables only
	if err := t.GW.Netlink().AddrAdd(l, a); err != nil {
		return fmt.Errorf("add %s to %s: %w", gwCIDR, gwIface, err)
	}
	if err := t.GW.AddRoute(netns.Route{Dst: prefix, Dev: gwIface, Table: table}); err != nil {
		return err
	}
	if err := t.GW.AddRule(gwIface, table, 1000); err != nil {
		return err
	}
	if err := host.Sysctl("net/ipv4/conf/all/rp_filter", "0"); err != nil {
		return err
	}
	// The hosts stand for machines on real wires: full checksums, MTU-sized frames.
	return host.DisableOffloads("eth0")
}

// Config returns the tenant configuration of the scene: per tenant, its attachments,
// one service "web" (VIP:Port over every backend, weight 1, admitted) and a rule
// allowing the client prefix.
func (t *Topology) Config() tenant.Config {
	var c tenant.Config
	for _, tn := range t.Tenants {
		ten := tenant.Tenant{
			Name:        tn.Name,
			FIBTable:    uint32(tn.Table),
			Attachments: []tenant.Attachment{{Interface: tn.ClientIface}},
			Rules: []tenant.Rule{{
				Name: "clients", Sources: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/24")}, Services: []string{"web"},
			}},
		}
		svc := tenant.Service{
			Name: "web", VIP: t.Opts.VIP, Port: t.Opts.Port, Protocol: tenant.TCP, MaglevSize: t.Opts.MaglevSize,
		}
		for _, b := range tn.Backends {
			ten.Attachments = append(ten.Attachments, tenant.Attachment{Interface: b.GWIface})
			svc.Backends = append(svc.Backends, tenant.Backend{
				Name: b.Name, Addr: b.Addr, Port: t.Opts.BackendPort, Weight: 1, State: lb.StateAdmitted,
			})
		}
		ten.Services = []tenant.Service{svc}
		c.Tenants = append(c.Tenants, ten)
	}
	return c
}

// GatewayInterfaces lists the gateway's interfaces the fast path goes on.
func (t *Topology) GatewayInterfaces() []string {
	var out []string
	for _, tn := range t.Tenants {
		out = append(out, tn.ClientIface)
		for _, b := range tn.Backends {
			out = append(out, b.GWIface)
		}
	}
	return out
}

// PeerHosts lists every host attached to the gateway: the far ends of the gateway's
// veths, which need an XDP program of their own to receive redirected frames.
func (t *Topology) PeerHosts() []*netns.Host {
	var out []*netns.Host
	for _, tn := range t.Tenants {
		out = append(out, tn.Client)
		for _, b := range tn.Backends {
			out = append(out, b.Host)
		}
	}
	return out
}

// Index implements tenant.Interfaces: interface names of the gateway.
func (t *Topology) Index(name string) (uint32, error) {
	l, err := t.GW.Link(name)
	if err != nil {
		return 0, err
	}
	return uint32(l.Attrs().Index), nil
}

// Close stops servers and deletes every namespace.
func (t *Topology) Close() error {
	var errs []error
	for _, tn := range t.Tenants {
		for _, b := range tn.Backends {
			if b.Server != nil {
				b.Server.Close()
			}
		}
	}
	for i := len(t.hosts) - 1; i >= 0; i-- {
		errs = append(errs, t.hosts[i].Close())
	}
	t.hosts = nil
	return errors.Join(errs...)
}

// StartServers starts an echo server on every backend (BackendPort).
func (t *Topology) StartServers() error {
	for _, tn := range t.Tenants {
		for _, b := range tn.Backends {
			s, err := StartEchoServer(b.Host, b.Name, fmt.Sprintf(":%d", t.Opts.BackendPort))
			if err != nil {
				return err
			}
			b.Server = s
		}
	}
	return nil
}

// EchoServer answers every line with "<name> <line>": a client learns which backend
// holds its connection on every exchange.
type EchoServer struct {
	Name     string
	ln       net.Listener
	accepted atomic.Int64
	lines    atomic.Int64
	wg       sync.WaitGroup
	mu       sync.Mutex
	conns    map[net.Conn]bool
}

// StartEchoServer listens on addr inside host.
func StartEchoServer(host *netns.Host, name, addr string) (*EchoServer, error) {
	ln, err := host.Listen("tcp4", addr)
	if err != nil {
		return nil, fmt.Errorf("echo server %s: %w", name, err)
	}
	s := &EchoServer{Name: name, ln: ln, conns: map[net.Conn]bool{}}
	s.wg.Add(1)
	go s.serve()
	return s, nil
}

func (s *EchoServer) serve() {
	defer s.wg.Done()
	for {
		c, err := s.ln.Accept()
		if err != nil {
			return
		}
		s.accepted.Add(1)
		s.mu.Lock()
		s.conns[c] = true
		s.mu.Unlock()
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer func() {
				s.mu.Lock()
				delete(s.conns, c)
				s.mu.Unlock()
				c.Close()
			}()
			r := bufio.NewReader(c)
			for {
				line, err := r.ReadString('\n')
				if err != nil {
					return
				}
				s.lines.Add(1)
				if _, err := io.WriteString(c, s.Name+" "+line); err != nil {
					return
				}
			}
		}()
	}
}

// Accepted is the number of connections the server accepted.
func (s *EchoServer) Accepted() int64 { return s.accepted.Load() }

// Lines is the number of lines the server answered.
func (s *EchoServer) Lines() int64 { return s.lines.Load() }

// Close stops the server and its connections.
func (s *EchoServer) Close() {
	s.ln.Close()
	s.mu.Lock()
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

// Conn is a client connection that asks which backend serves it.
type Conn struct {
	c net.Conn
	r *bufio.Reader
}

// Dial connects from host to addr within timeout.
func Dial(host *netns.Host, addr string, timeout time.Duration) (*Conn, error) {
	c, err := host.Dial(&net.Dialer{Timeout: timeout}, "tcp4", addr)
	if err != nil {
		return nil, err
	}
	return &Conn{c: c, r: bufio.NewReader(c)}, nil
}

// Ask sends msg and returns the name of the backend that answered.
func (c *Conn) Ask(msg string, timeout time.Duration) (string, error) {
	if err := c.c.SetDeadline(time.Now().Add(timeout)); err != nil {
		return "", err
	}
	if _, err := io.WriteString(c.c, msg+"\n"); err != nil {
		return "", err
	}
	line, err := c.r.ReadString('\n')
	if err != nil {
		return "", err
	}
	name, echoed, ok := strings.Cut(strings.TrimSuffix(line, "\n"), " ")
	if !ok || echoed != msg {
		return "", fmt.Errorf("unexpected answer %q to %q", line, msg)
	}
	return name, nil
}

// Close closes the connection.
func (c *Conn) Close() error { return c.c.Close() }
