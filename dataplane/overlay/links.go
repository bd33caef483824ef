package overlay

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"unsafe"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Tenant segments. A TUN is an L3 device shared by every tenant: it can neither carry
// a tenant's identity nor keep two tenants' identical prefixes apart, and the fast path
// cannot put an Ethernet frame into it. So each tenant that crosses the overlay gets its
// own VXLAN segment, VNI = the tenant's, whose outer packets travel between overlay
// addresses inside WireGuard:
//
//	gateway:  fast path ─XDP redirect─▶ ov<vni> ══veth══ ovk<vni> ─┐
//	                                                      bridge ovb<vni>
//	                                                               └─ ovx<vni> (VXLAN, VNI) ─▶ moat-wg (TUN) ─▶ wireguard-go ─▶ UDP underlay
//	host:     application on ovx<vni> (the segment address) ─▶ moat-wg ─▶ …
//
// On a gateway the veth end ov<vni> is an ordinary fast-path attachment of the tenant:
// frames arriving from the overlay are classified to the tenant by their ingress
// interface like any other, replies are reverse-NATed before they reach a client, and
// the egress check holds unchanged (a route of another tenant into ov<vni> is dropped,
// since only this tenant is attached there). Native XDP runs on both sides of it.

// Default VXLAN port (IANA).
const VXLANPort = 4789

// vxlanOverhead is what VXLAN adds inside the overlay: outer IPv4 20, UDP 8, VXLAN 8,
// inner Ethernet 14.
const vxlanOverhead = 50

// Route is a prefix of the tenant reachable across the segment, through a peer's
// segment address.
type Route struct {
	Dst netip.Prefix `yaml:"dst"`
	Via netip.Addr   `yaml:"via"`
}

// Segment is one tenant's VXLAN segment on this node.
type Segment struct {
	Tenant string `yaml:"tenant"`
	// VNI is the tenant's number on every node of the overlay (1..16777215).
	VNI uint32 `yaml:"vni"`
	// Address is this node's address on the segment, with the segment's prefix.
	Address netip.Prefix `yaml:"address"`
	// Table is the tenant's routing table on this node (a gateway's tenant FIB table);
	// 0: the main table.
	Table int `yaml:"table"`
	// Routes are the tenant's prefixes behind other nodes of the segment.
	Routes []Route `yaml:"routes"`
	// Peers are the subjects of the peers that carry this segment: the only ones whose
	// VXLAN packets with this VNI are accepted, and where broadcasts are sent.
	Peers []string `yaml:"peers"`
	// FastPath: the node is a gateway; the segment ends in a veth for the fast path
	// (FastPathInterface) instead of an address on the VXLAN device.
	FastPath bool `yaml:"fast_path"`
}

// Names of a segment's devices.
func (s Segment) vxlanName() string  { return fmt.Sprintf("ovx%d", s.VNI) }
func (s Segment) bridgeName() string { return fmt.Sprintf("ovb%d", s.VNI) }
func (s Segment) kernelEnd() string  { return fmt.Sprintf("ovk%d", s.VNI) }

// FastPathInterface is the gateway interface the tenant is attached to for this
// segment (Segment.FastPath).
func (s Segment) FastPathInterface() string { return fmt.Sprintf("ov%d", s.VNI) }

// MTU of a segment whose overlay device has MTU mtu.
func SegmentMTU(mtu int) int { return mtu - vxlanOverhead }

// Links is the node's network plumbing: the I/O boundary to netlink. NetlinkLinks is
// the real one; tests use a recording fake where no kernel is needed.
type Links interface {
	// SetupDevice addresses the overlay device and brings it up.
	SetupDevice(name string, addr netip.Prefix) error
	// SetupSegment creates a tenant's segment; flood lists the peers' overlay addresses
	// that carry it.
	SetupSegment(seg Segment, local netip.Addr, flood []netip.Addr, mtu int) error
	// UpdateSegment changes the flood list and routes of a segment SetupSegment made
	// as prev into next's (the rest of the segment is the same).
	UpdateSegment(prev, next Segment, flood []netip.Addr) error
	// RemoveSegment deletes what SetupSegment made.
	RemoveSegment(seg Segment) error
}

// NetlinkLinks implements Links with netlink in the namespace of NL. Do runs a function
// in that namespace (for the one ioctl netlink cannot do); nil runs it in place.
type NetlinkLinks struct {
	NL *netlink.Handle
	Do func(func() error) error
}

func (l NetlinkLinks) do(f func() error) error {
	if l.Do == nil {
		return f()
	}
	return l.Do(f)
}

// SetupDevice implements Links.
func (l NetlinkLinks) SetupDevice(name string, addr netip.Prefix) error {
	link, err := l.NL.LinkByName(name)
	if err != nil {
		return fmt.Errorf("overlay device %s: %w", name, err)
	}
	if err := l.NL.AddrReplace(link, &netlink.Addr{IPNet: ipNet(addr)}); err != nil {
		return fmt.Errorf("address %v on %s: %w", addr, name, err)
	}
	if err := l.NL.LinkSetUp(link); err != nil {
		return fmt.Errorf("bring %s up: %w", name, err)
	}
	return nil
}

// SetupSegment implements Links.
func (l NetlinkLinks) SetupSegment(seg Segment, local netip.Addr, flood []netip.Addr, mtu int) error {
	// Learning maps a tenant MAC to the overlay address that sent it; only VXLAN that
	// came through WireGuard with a VNI its peer carries gets that far (Ruleset), so a
	// peer can only claim MACs of a segment it belongs to. Without learning, every
	// unicast frame would be flooded to every peer of the segment.
	vx := &netlink.Vxlan{LinkAttrs: netlink.LinkAttrs{Name: seg.vxlanName(), MTU: mtu}, VxlanId: int(seg.VNI),
		SrcAddr: local.AsSlice(), Port: VXLANPort, Learning: true}
	if err := l.NL.LinkAdd(vx); err != nil {
		return fmt.Errorf("segment %s: VXLAN %s: %w", seg.Tenant, vx.Name, err)
	}
	vxl, err := l.NL.LinkByName(vx.Name)
	if err != nil {
		return err
	}
	for _, a := range flood {
		if err := l.addFlood(seg, vxl, a); err != nil {
			return err
		}
	}
	end := vxl
	if seg.FastPath {
		br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: seg.bridgeName(), MTU: mtu}}
		veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: seg.FastPathInterface(), MTU: mtu}, PeerName: seg.kernelEnd()}
		for _, link := range []netlink.Link{br, veth} {
			if err := l.NL.LinkAdd(link); err != nil {
				return fmt.Errorf("segment %s: %s: %w", seg.Tenant, link.Attrs().Name, err)
			}
		}
		for _, name := range []string{seg.kernelEnd(), vx.Name} {
			port, err := l.NL.LinkByName(name)
			if err != nil {
				return err
			}
			if err := l.NL.LinkSetMTU(port, mtu); err != nil {
				return err
			}
			if err := l.NL.LinkSetMasterByIndex(port, br.Index); err != nil {
				return fmt.Errorf("segment %s: %s into %s: %w", seg.Tenant, name, br.Name, err)
			}
			if err := l.NL.LinkSetUp(port); err != nil {
				return err
			}
		}
		if err := l.NL.LinkSetUp(br); err != nil {
			return err
		}
		// The bridge only joins the VXLAN to the fast path's veth: it must not answer
		// ARP for the gateway's addresses with its own MAC (it would then receive the
		// tenant's frames itself, into the kernel's main table).
		if err := l.do(func() error { return sysctl("net/ipv4/conf/"+br.Name+"/arp_ignore", "1") }); err != nil {
			return fmt.Errorf("segment %s: arp_ignore on %s: %w", seg.Tenant, br.Name, err)
		}
		// The fast path redirects into ov<vni>; a veth delivers XDP frames only to a
		// peer with NAPI, which GRO turns on (and GRO batches them for VXLAN's GSO).
		// The other way, the fast path rewrites addresses with incremental checksum
		// updates, which need complete checksums: no checksum offload (nor TSO/GSO,
		// which leave partial ones) toward it, so the kernel completes them.
		err := l.do(func() error {
			return errors.Join(ethtoolSet(seg.kernelEnd(), ethtoolSGRO, true), ethtoolSet(seg.kernelEnd(), ethtoolSTXCSUM, false),
				ethtoolSet(seg.kernelEnd(), ethtoolSTSO, false), ethtoolSet(seg.kernelEnd(), ethtoolSGSO, false))
		})
		if err != nil {
			return fmt.Errorf("segment %s: offloads of %s: %w", seg.Tenant, seg.kernelEnd(), err)
		}
		if end, err = l.NL.LinkByName(seg.FastPathInterface()); err != nil {
			return err
		}
	}
	addr := &netlink.Addr{IPNet: ipNet(seg.Address)}
	if seg.Table != 0 {
		addr.Flags = unix.IFA_F_NOPREFIXROUTE // tenants share prefixes: routes live in their tables
	}
	if err := l.NL.AddrAdd(end, addr); err != nil {
		return fmt.Errorf("segment %s: address %v: %w", seg.Tenant, seg.Address, err)
	}
	if err := l.NL.LinkSetUp(end); err != nil {
		return err
	}
	if err := l.NL.LinkSetUp(vxl); err != nil {
		return err
	}
	idx := end.Attrs().Index
	if seg.Table != 0 {
		r := &netlink.Route{Dst: ipNet(seg.Address.Masked()), LinkIndex: idx, Scope: netlink.SCOPE_LINK, Table: seg.Table,
			Src: seg.Address.Addr().AsSlice()}
		if err := l.NL.RouteReplace(r); err != nil {
			return fmt.Errorf("segment %s: connected route: %w", seg.Tenant, err)
		}
		rule := netlink.NewRule()
		rule.IifName, rule.Table, rule.Priority = end.Attrs().Name, seg.Table, 1000
		if err := l.NL.RuleAdd(rule); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("segment %s: rule iif %s: %w", seg.Tenant, end.Attrs().Name, err)
		}
	}
	return l.routes(seg, idx)
}

// UpdateSegment implements Links.
func (l NetlinkLinks) UpdateSegment(prev, next Segment, flood []netip.Addr) error {
	vxl, err := l.NL.LinkByName(next.vxlanName())
	if err != nil {
		return fmt.Errorf("segment %s: %w", next.Tenant, err)
	}
	entries, err := l.NL.NeighList(vxl.Attrs().Index, unix.AF_BRIDGE)
	if err != nil {
		return fmt.Errorf("segment %s: flood entries: %w", next.Tenant, err)
	}
	want := map[netip.Addr]bool{}
	for _, a := range flood {
		want[a] = true
	}
	for _, e := range entries {
		a, ok := netip.AddrFromSlice(e.IP)
		if !ok || e.HardwareAddr.String() != floodMAC.String() {
			continue // learnt entries: the kernel ages them
		}
		if a = a.Unmap(); want[a] {
			delete(want, a)
			continue
		}
		if err := l.NL.NeighDel(&e); err != nil {
			return fmt.Errorf("segment %s: remove flood entry to %v: %w", next.Tenant, a, err)
		}
	}
	for _, a := range flood {
		if want[a] {
			if err := l.addFlood(next, vxl, a); err != nil {
				return err
			}
		}
	}
	end := vxl
	if next.FastPath {
		if end, err = l.NL.LinkByName(next.FastPathInterface()); err != nil {
			return err
		}
	}
	for _, rt := range prev.Routes {
		if !slices.Contains(next.Routes, rt) {
			r := &netlink.Route{Dst: ipNet(rt.Dst), Gw: rt.Via.AsSlice(), LinkIndex: end.Attrs().Index, Table: prev.Table}
			if err := l.NL.RouteDel(r); err != nil && !errors.Is(err, unix.ESRCH) {
				return fmt.Errorf("segment %s: remove route %v via %v: %w", next.Tenant, rt.Dst, rt.Via, err)
			}
		}
	}
	return l.routes(next, end.Attrs().Index)
}

// floodMAC marks a VXLAN FDB entry that floods (unknown unicast and broadcasts).
var floodMAC = net.HardwareAddr{0, 0, 0, 0, 0, 0}

// addFlood sends the segment's floods to a peer's overlay address too.
func (l NetlinkLinks) addFlood(seg Segment, vxl netlink.Link, a netip.Addr) error {
	n := &netlink.Neigh{LinkIndex: vxl.Attrs().Index, Family: unix.AF_BRIDGE, State: netlink.NUD_PERMANENT,
		Flags: netlink.NTF_SELF, IP: a.AsSlice(), HardwareAddr: floodMAC}
	if err := l.NL.NeighAppend(n); err != nil {
		return fmt.Errorf("segment %s: flood entry to %v: %w", seg.Tenant, a, err)
	}
	return nil
}

func (l NetlinkLinks) routes(seg Segment, idx int) error {
	for _, rt := range seg.Routes {
		r := &netlink.Route{Dst: ipNet(rt.Dst), Gw: rt.Via.AsSlice(), LinkIndex: idx, Table: seg.Table}
		if err := l.NL.RouteReplace(r); err != nil {
			return fmt.Errorf("segment %s: route %v via %v: %w", seg.Tenant, rt.Dst, rt.Via, err)
		}
	}
	return nil
}

// RemoveSegment implements Links.
func (l NetlinkLinks) RemoveSegment(seg Segment) error {
	var errs []error
	if seg.FastPath && seg.Table != 0 {
		rule := netlink.NewRule()
		rule.IifName, rule.Table, rule.Priority = seg.FastPathInterface(), seg.Table, 1000
		if err := l.NL.RuleDel(rule); err != nil && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, err)
		}
	}
	for _, name := range []string{seg.FastPathInterface(), seg.bridgeName(), seg.vxlanName()} {
		link, err := l.NL.LinkByName(name)
		if err != nil {
			continue
		}
		if err := l.NL.LinkDel(link); err != nil {
			errs = append(errs, fmt.Errorf("delete %s: %w", name, err))
		}
	}
	return errors.Join(errs...)
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// sysctl writes a sysctl of the calling thread's network namespace.
func sysctl(key, value string) error {
	return os.WriteFile("/proc/sys/"+key, []byte(value), 0o644)
}

// Legacy ethtool commands (linux/ethtool.h).
const (
	ethtoolSTXCSUM = 0x17
	ethtoolSTSO    = 0x1f
	ethtoolSGSO    = 0x24
	ethtoolSGRO    = 0x2c
)

// setGRO switches GRO on a device in the calling thread's network namespace.
func setGRO(name string, on bool) error { return ethtoolSet(name, ethtoolSGRO, on) }

// ethtoolSet switches an offload of a device (a legacy ethtool ioctl) in the calling
// thread's network namespace.
func ethtoolSet(name string, cmd uint32, on bool) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	value := struct{ cmd, data uint32 }{cmd, 0}
	if on {
		value.data = 1
	}
	var ifr struct {
		name [unix.IFNAMSIZ]byte
		data uintptr
		_    [16]byte
	}
	copy(ifr.name[:], name)
	ifr.data = uintptr(unsafe.Pointer(&value))
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.SIOCETHTOOL, uintptr(unsafe.Pointer(&ifr))); errno != 0 {
		return fmt.Errorf("ethtool %#x on %s: %w", cmd, name, errno)
	}
	return nil
}
