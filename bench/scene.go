package bench

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os/exec"
	"strings"

	"github.com/seed4c/moat/dataplane"
	"github.com/seed4c/moat/internal/netns"
	"github.com/seed4c/moat/internal/topology"
	"github.com/seed4c/moat/tenant"
)

// CPUs of the split: the load (generators, sinks, TCP clients and servers) runs on
// loadCPU, the system under test on sutCPU.
const (
	loadCPU = 0
	sutCPU  = 1
	// rtPrio is the SCHED_FIFO priority of the kernel threads that carry traffic, so
	// that other work on this shared machine does not preempt them mid-measurement.
	rtPrio = 50
)

// Scene is the reference topology (internal/topology: two tenants with the same
// addresses, three backends each) plus a stranger host on a gateway interface that no
// tenant owns, prepared for benchmarking: permanent neighbours everywhere (no ARP in
// the measurement), the VIP routed to the first backend in each tenant table (what
// plain forwarding sends it to), offloads and GRO off on every veth end (frames cross
// every system as they would cross a wire: one by one, MTU-sized, full checksums).
type Scene struct {
	Topo     *topology.Topology
	Stranger *netns.Host
	instance string
	log      *slog.Logger

	dp       *dataplane.Dataplane
	compiled *tenant.Compiled
	attached bool
}

// strangerIface is the gateway's interface toward the stranger.
const strangerIface = "cx"

// NewScene builds the scene; on error everything built so far is removed.
func NewScene(instance string, log *slog.Logger) (s *Scene, err error) {
	s = &Scene{instance: instance, log: log}
	defer func() {
		if err != nil {
			s.Close()
			s = nil
		}
	}()
	if s.Topo, err = topology.Build(topology.Options{Backends: 3, Clients: 4}); err != nil {
		return nil, fmt.Errorf("build topology: %w", err)
	}
	gw := s.Topo.GW
	if s.Stranger, err = netns.NewHost(netns.UniqueName("mx")); err != nil {
		return nil, err
	}
	if _, _, err := netns.Veth(gw, strangerIface, s.Stranger, "eth0"); err != nil {
		return nil, err
	}
	if err := s.Stranger.DisableOffloads("eth0"); err != nil {
		return nil, err
	}
	// Plain forwarding forwards the stranger's frames like a tenant's; moat and
	// nftables must drop them.
	if err := gw.AddRule(strangerIface, s.Topo.Tenants[0].Table, 1000); err != nil {
		return nil, err
	}
	for _, ifn := range s.GatewayIfaces() {
		if err := gw.DisableOffloads(ifn); err != nil {
			return nil, err
		}
		if err := gw.DisableGRO(ifn); err != nil {
			return nil, err
		}
	}
	for _, tn := range s.Topo.Tenants {
		first := tn.Backends[0]
		if err := gw.AddRoute(netns.Route{Dst: s.Topo.Opts.VIP.String() + "/32", Dev: first.GWIface,
			Via: first.Addr.String(), Table: tn.Table}); err != nil {
			return nil, err
		}
		cmac, err := mac(tn.Client, "eth0")
		if err != nil {
			return nil, err
		}
		for h := 2; h < 255; h++ {
			if err := gw.AddNeighbor(tn.ClientIface, fmt.Sprintf("10.0.0.%d", h), cmac); err != nil {
				return nil, err
			}
		}
		gmac, err := mac(gw, tn.ClientIface)
		if err != nil {
			return nil, err
		}
		if err := tn.Client.AddNeighbor("eth0", tn.GWAddr.String(), gmac); err != nil {
			return nil, err
		}
		for _, b := range tn.Backends {
			bmac, err := mac(b.Host, "eth0")
			if err != nil {
				return nil, err
			}
			if err := gw.AddNeighbor(b.GWIface, b.Addr.String(), bmac); err != nil {
				return nil, err
			}
			gmac, err := mac(gw, b.GWIface)
			if err != nil {
				return nil, err
			}
			if err := b.Host.AddNeighbor("eth0", gwAddrToward(b.Addr).String(), gmac); err != nil {
				return nil, err
			}
		}
		// TCP load: many connections per second from few addresses.
		for _, kv := range [][2]string{{"net/ipv4/ip_local_port_range", "1024 65535"}, {"net/ipv4/tcp_tw_reuse", "1"}} {
			if err := tn.Client.Sysctl(kv[0], kv[1]); err != nil {
				return nil, err
			}
		}
	}
	return s, nil
}

// gwAddrToward is the gateway's address on a backend's network (10.1.n.1).
func gwAddrToward(backend netip.Addr) netip.Addr {
	a := backend.As4()
	a[3] = 1
	return netip.AddrFrom4(a)
}

func mac(h *netns.Host, ifname string) (net.HardwareAddr, error) {
	l, err := h.Link(ifname)
	if err != nil {
		return nil, err
	}
	return l.Attrs().HardwareAddr, nil
}

// GatewayIfaces lists every interface of the gateway, the stranger's included.
func (s *Scene) GatewayIfaces() []string {
	return append(s.Topo.GatewayInterfaces(), strangerIface)
}

// InterfaceDrops sums what the gateway's interfaces refused, from their statistics: on
// receive, the frames a peer sent that the interface's ring had no room for (a veth
// counts them as rx_dropped), so lost before any system on the gateway saw them; on
// transmit, the frames sent through it that the far end's ring refused (tx_dropped),
// so lost after the system had handled them.
func (s *Scene) InterfaceDrops() (rx, tx uint64, err error) {
	for _, ifn := range s.GatewayIfaces() {
		l, err := s.Topo.GW.Netlink().LinkByName(ifn)
		if err != nil {
			return 0, 0, fmt.Errorf("statistics of %s: %w", ifn, err)
		}
		st := l.Attrs().Statistics
		if st == nil {
			return 0, 0, fmt.Errorf("statistics of %s: the kernel sent none", ifn)
		}
		rx += st.RxDropped
		tx += st.TxDropped
	}
	return rx, tx, nil
}

// Peers lists every host on the far end of a gateway veth (its interface is eth0).
func (s *Scene) Peers() []*netns.Host {
	return append(s.Topo.PeerHosts(), s.Stranger)
}

// moatOptions are the options moat runs with on the scene: the embedded defaults.
func (s *Scene) moatOptions() dataplane.Options {
	opts := dataplane.DefaultOptions(s.instance)
	opts.Logger = s.log
	return opts
}

// OpenMoat loads the fast path once for the whole run (its pins live under the
// scene's instance name).
func (s *Scene) OpenMoat() (*dataplane.Dataplane, error) {
	if s.dp != nil {
		return s.dp, nil
	}
	_ = dataplane.Remove(dataplane.DefaultOptions(s.instance)) // a killed run's leftovers
	opts := s.moatOptions()
	err := s.Topo.GW.Do(func() error {
		dp, err := dataplane.Open(opts)
		if err != nil {
			return err
		}
		s.dp = dp
		c, err := tenant.Compile(s.Topo.Config(), s.Topo, tenant.IDs{}, opts.Limits)
		if err != nil {
			return err
		}
		s.compiled = c
		return dp.Writer().Apply(c)
	})
	return s.dp, err
}

// AttachMoat puts the fast path on every gateway interface, or on none: a failure
// takes it off the interfaces it had reached, so that the next system can attach.
func (s *Scene) AttachMoat() error {
	dp, err := s.OpenMoat()
	if err != nil {
		return err
	}
	var done []string
	err = s.Topo.GW.Do(func() error {
		for _, ifn := range s.GatewayIfaces() {
			mode, err := dp.Attach(ifn)
			if err != nil {
				return err
			}
			done = append(done, ifn)
			if mode != dataplane.ModeNative {
				return fmt.Errorf("moat on %s: %s mode, want native", ifn, mode)
			}
		}
		return nil
	})
	if err != nil {
		for _, ifn := range done {
			err = errors.Join(err, dp.Detach(ifn))
		}
		return err
	}
	s.attached = true
	return nil
}

// DetachMoat takes the fast path off every gateway interface (its maps stay).
func (s *Scene) DetachMoat() error {
	if s.dp == nil || !s.attached {
		return nil
	}
	s.attached = false
	var errs []error
	for _, ifn := range s.GatewayIfaces() {
		errs = append(errs, s.dp.Detach(ifn))
	}
	return errors.Join(errs...)
}

// Moat returns the open fast path (nil before OpenMoat).
func (s *Scene) Moat() *dataplane.Dataplane { return s.dp }

// nft runs nft with a script on stdin inside the gateway.
func (s *Scene) nft(script string, args ...string) (string, error) {
	cmd := exec.Command("ip", append([]string{"netns", "exec", s.Topo.GW.Name, "nft"}, args...)...)
	if script != "" {
		cmd.Stdin = strings.NewReader(script)
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("nft %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// Close removes the fast path instance, every namespace and everything in them.
func (s *Scene) Close() error {
	var errs []error
	if s.dp != nil {
		errs = append(errs, s.DetachMoat(), s.dp.Close())
		s.dp = nil
	}
	if s.instance != "" {
		errs = append(errs, dataplane.Remove(dataplane.DefaultOptions(s.instance)))
	}
	if s.Stranger != nil {
		errs = append(errs, s.Stranger.Close())
		s.Stranger = nil
	}
	if s.Topo != nil {
		errs = append(errs, s.Topo.Close())
		s.Topo = nil
	}
	return errors.Join(errs...)
}
