// Package netns builds network topologies for moat's tests, demo and benchmarks: named
// network namespaces ("hosts"), veth links between them, addresses, routes and
// neighbours, and sockets opened inside a namespace. One process drives every host:
// a socket stays in the namespace it was created in, whatever thread uses it later.
package netns

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// Host is a named network namespace.
type Host struct {
	Name string
	ns   netns.NsHandle
	nl   *netlink.Handle
}

// UniqueName returns prefix followed by random hex, short enough for an interface
// or namespace name (15 characters).
func UniqueName(prefix string) string {
	var b [3]byte
	_, _ = rand.Read(b[:])
	n := prefix + hex.EncodeToString(b[:])
	if len(n) > 15 {
		n = n[len(n)-15:]
	}
	return n
}

// NewHost creates the namespace name with its loopback up.
func NewHost(name string) (*Host, error) {
	var h *Host
	err := onLockedThread(func(orig netns.NsHandle) error {
		ns, err := netns.NewNamed(name) // also moves this thread into it
		if err != nil {
			return fmt.Errorf("create netns %s: %w", name, err)
		}
		nl, err := netlink.NewHandleAt(ns)
		if err != nil {
			ns.Close()
			_ = netns.DeleteNamed(name)
			return fmt.Errorf("netlink handle in %s: %w", name, err)
		}
		h = &Host{Name: name, ns: ns, nl: nl}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if err := h.LinkUp("lo"); err != nil {
		h.Close()
		return nil, err
	}
	return h, nil
}

// onLockedThread runs f on a locked OS thread and puts the thread back in its original
// namespace afterwards; a thread that cannot be put back is never unlocked, so the Go
// runtime retires it instead of reusing it in the wrong namespace.
func onLockedThread(f func(orig netns.NsHandle) error) error {
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("get current netns: %w", err)
	}
	defer orig.Close()
	ferr := f(orig)
	if err := netns.Set(orig); err != nil {
		return errors.Join(ferr, fmt.Errorf("restore netns: %w", err))
	}
	runtime.UnlockOSThread()
	return ferr
}

// Do runs f with the calling goroutine's thread inside the host's namespace.
func (h *Host) Do(f func() error) error {
	return onLockedThread(func(netns.NsHandle) error {
		if err := netns.Set(h.ns); err != nil {
			return fmt.Errorf("enter netns %s: %w", h.Name, err)
		}
		return f()
	})
}

// Netlink returns a netlink handle bound to the host's namespace.
func (h *Host) Netlink() *netlink.Handle { return h.nl }

// Close deletes the namespace; its interfaces go with it.
func (h *Host) Close() error {
	h.nl.Close()
	h.ns.Close()
	if err := netns.DeleteNamed(h.Name); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("delete netns %s: %w", h.Name, err)
	}
	return nil
}

// Sysctl writes a sysctl inside the host, e.g. Sysctl("net/ipv4/ip_forward", "1").
func (h *Host) Sysctl(key, value string) error {
	return h.Do(func() error {
		p := filepath.Join("/proc/sys", strings.ReplaceAll(key, ".", "/"))
		if err := os.WriteFile(p, []byte(value), 0o644); err != nil {
			return fmt.Errorf("sysctl %s=%s in %s: %w", key, value, h.Name, err)
		}
		return nil
	})
}

// LinkUp sets an interface of the host up.
func (h *Host) LinkUp(name string) error {
	l, err := h.nl.LinkByName(name)
	if err != nil {
		return fmt.Errorf("find %s in %s: %w", name, h.Name, err)
	}
	if err := h.nl.LinkSetUp(l); err != nil {
		return fmt.Errorf("set %s up in %s: %w", name, h.Name, err)
	}
	return nil
}

// Link returns an interface of the host.
func (h *Host) Link(name string) (netlink.Link, error) {
	l, err := h.nl.LinkByName(name)
	if err != nil {
		return nil, fmt.Errorf("find %s in %s: %w", name, h.Name, err)
	}
	return l, nil
}

// AddAddr assigns cidr (e.g. "10.0.0.1/24") to an interface of the host.
func (h *Host) AddAddr(ifname, cidr string) error {
	l, err := h.Link(ifname)
	if err != nil {
		return err
	}
	a, err := netlink.ParseAddr(cidr)
	if err != nil {
		return fmt.Errorf("address %s: %w", cidr, err)
	}
	if err := h.nl.AddrAdd(l, a); err != nil {
		return fmt.Errorf("add %s to %s in %s: %w", cidr, ifname, h.Name, err)
	}
	return nil
}

// Route is a route to install in a host.
type Route struct {
	Dst       string // CIDR; "default" for 0.0.0.0/0
	Dev       string
	Via       string // gateway address, or "" for on-link
	Table     int    // 0: main
	Src       string
	Blackhole bool
}

// AddRoute installs r.
func (h *Host) AddRoute(r Route) error {
	nr := &netlink.Route{Table: r.Table}
	if r.Dst == "default" {
		r.Dst = "0.0.0.0/0"
	}
	_, dst, err := net.ParseCIDR(r.Dst)
	if err != nil {
		return fmt.Errorf("route destination %q: %w", r.Dst, err)
	}
	nr.Dst = dst
	if r.Blackhole {
		nr.Type = 6 // RTN_BLACKHOLE
	} else {
		l, err := h.Link(r.Dev)
		if err != nil {
			return err
		}
		nr.LinkIndex = l.Attrs().Index
		if r.Via != "" {
			nr.Gw = net.ParseIP(r.Via)
		} else {
			nr.Scope = netlink.SCOPE_LINK
		}
	}
	if r.Src != "" {
		nr.Src = net.ParseIP(r.Src)
	}
	if err := h.nl.RouteAdd(nr); err != nil {
		return fmt.Errorf("add route %s via %q dev %s table %d in %s: %w", r.Dst, r.Via, r.Dev, r.Table, h.Name, err)
	}
	return nil
}

// AddRule adds a policy routing rule "iif dev lookup table".
func (h *Host) AddRule(iif string, table, priority int) error {
	rule := netlink.NewRule()
	rule.IifName = iif
	rule.Table = table
	rule.Priority = priority
	if err := h.nl.RuleAdd(rule); err != nil {
		return fmt.Errorf("add rule iif %s lookup %d in %s: %w", iif, table, h.Name, err)
	}
	return nil
}

// AddNeighbor installs a permanent neighbour entry.
func (h *Host) AddNeighbor(ifname, ip string, mac net.HardwareAddr) error {
	l, err := h.Link(ifname)
	if err != nil {
		return err
	}
	n := &netlink.Neigh{
		LinkIndex:    l.Attrs().Index,
		Family:       netlink.FAMILY_V4,
		State:        netlink.NUD_PERMANENT,
		IP:           net.ParseIP(ip),
		HardwareAddr: mac,
	}
	if err := h.nl.NeighSet(n); err != nil {
		return fmt.Errorf("add neighbour %s lladdr %s dev %s in %s: %w", ip, mac, ifname, h.Name, err)
	}
	return nil
}

// Veth connects host a (interface aName) to host b (interface bName), both ends up,
// and returns both ends.
func Veth(a *Host, aName string, b *Host, bName string) (netlink.Link, netlink.Link, error) {
	return VethIndex(a, aName, 0, b, bName)
}

// VethIndex is Veth with the interface index of a's end chosen (0: the kernel's next).
func VethIndex(a *Host, aName string, aIndex int, b *Host, bName string) (netlink.Link, netlink.Link, error) {
	v := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: aName, MTU: 1500, Index: aIndex},
		PeerName:      bName,
		PeerNamespace: netlink.NsFd(b.ns),
	}
	if err := a.nl.LinkAdd(v); err != nil {
		return nil, nil, fmt.Errorf("create veth %s/%s - %s/%s: %w", a.Name, aName, b.Name, bName, err)
	}
	if err := a.LinkUp(aName); err != nil {
		return nil, nil, err
	}
	if err := b.LinkUp(bName); err != nil {
		return nil, nil, err
	}
	la, err := a.Link(aName)
	if err != nil {
		return nil, nil, err
	}
	lb, err := b.Link(bName)
	if err != nil {
		return nil, nil, err
	}
	return la, lb, nil
}

// Listen opens a listener inside the host.
func (h *Host) Listen(network, addr string) (net.Listener, error) {
	var l net.Listener
	err := h.Do(func() (err error) {
		l, err = net.Listen(network, addr)
		return err
	})
	return l, err
}

// ListenPacket opens a packet socket inside the host.
func (h *Host) ListenPacket(network, addr string) (net.PacketConn, error) {
	var c net.PacketConn
	err := h.Do(func() (err error) {
		c, err = net.ListenPacket(network, addr)
		return err
	})
	return c, err
}

// Dial connects from inside the host with d (its Timeout and LocalAddr apply).
func (h *Host) Dial(d *net.Dialer, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := h.Do(func() (err error) {
		c, err = d.Dial(network, addr)
		return err
	})
	return c, err
}

// Command prepares a program to run in the host's network namespace (nsenter --net):
// only the network namespace changes, so it shares this process's mounts (bpffs
// included) and files. The program is sent SIGTERM if the thread that started it
// dies (Pdeathsig), so a test or demo killed outright does not leave daemons
// running against namespaces nobody will delete; nsenter execs the program, so the
// signal reaches it and not a wrapper.
func (h *Host) Command(name string, args ...string) *exec.Cmd {
	cmd := exec.Command("nsenter", append([]string{"--net=/run/netns/" + h.Name, "--", name}, args...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	return cmd
}

// HTTPClient returns an HTTP client whose connections are made from inside the host.
func (h *Host) HTTPClient(tlsCfg *tls.Config) *http.Client {
	return &http.Client{
		Timeout: 10 * time.Second,
		Transport: &http.Transport{
			TLSClientConfig: tlsCfg,
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				return h.Dial(&net.Dialer{Timeout: 5 * time.Second}, network, addr)
			},
		},
	}
}
