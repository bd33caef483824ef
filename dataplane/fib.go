package dataplane

import (
	"net"
	"net/netip"
)

// FIBStatus is bpf_fib_lookup's return code (BPF_FIB_LKUP_RET_*).
type FIBStatus int

// The codes of include/uapi/linux/bpf.h that moat distinguishes.
const (
	FIBSuccess      FIBStatus = 0
	FIBBlackhole    FIBStatus = 1
	FIBUnreachable  FIBStatus = 2
	FIBProhibit     FIBStatus = 3
	FIBNotForwarded FIBStatus = 4
	FIBFwdDisabled  FIBStatus = 5
	FIBNoNeigh      FIBStatus = 7
	FIBFragNeeded   FIBStatus = 8
)

// FIBQuery is what the fast path asks bpf_fib_lookup.
type FIBQuery struct {
	Ifindex uint32 // ingress
	Table   uint32 // 0: the kernel's policy rules; else this table directly (TBID)
	Src     netip.Addr
	Dst     netip.Addr
	TotLen  uint16
}

// FIBResult is bpf_fib_lookup's answer. Ifindex is set for FIBSuccess and FIBNoNeigh;
// the MAC addresses for FIBSuccess only.
type FIBResult struct {
	Status  FIBStatus
	Ifindex uint32
	SrcMAC  [6]byte
	DstMAC  [6]byte
}

// FIB is the routing decision the reference model needs from the kernel. The real one
// is the kernel's (the fast path calls bpf_fib_lookup); StaticFIB is a description of
// routes and neighbours that tests both install into a network namespace and give to
// the model, so the two see the same routing.
type FIB interface {
	Lookup(q FIBQuery) FIBResult
}

// FIBInterface is one interface as routing sees it.
type FIBInterface struct {
	Name       string
	MAC        net.HardwareAddr
	MTU        uint32
	Forwarding bool
}

// RouteType is a route's kind; only unicast routes forward.
type RouteType int

// Route types.
const (
	RouteUnicast RouteType = iota
	RouteBlackhole
	RouteUnreachable
)

// FIBRoute is one route in one table.
type FIBRoute struct {
	Table   uint32
	Dst     netip.Prefix
	Type    RouteType
	Ifindex uint32
	Gateway netip.Addr // invalid: on-link
}

// FIBNeighbor is a resolved neighbour.
type FIBNeighbor struct {
	Ifindex uint32
	Addr    netip.Addr
	MAC     net.HardwareAddr
}

// MainTable is the kernel's main routing table (RT_TABLE_MAIN).
const MainTable = 254

// StaticFIB models the kernel's IPv4 lookup over an explicit set of routes. With
// Query.Table 0 it follows the rules: Rules[ingress] (if any), then the main table,
// the first table holding a matching route deciding; with a table it looks only there.
// Among a table's routes the longest prefix wins.
type StaticFIB struct {
	Interfaces map[uint32]FIBInterface
	Rules      map[uint32]uint32 // ingress ifindex -> table
	Routes     []FIBRoute
	Neighbors  []FIBNeighbor
}

// Lookup implements FIB, in the order the kernel's bpf_ipv4_fib_lookup checks.
func (f *StaticFIB) Lookup(q FIBQuery) FIBResult {
	in, ok := f.Interfaces[q.Ifindex]
	if !ok || !in.Forwarding {
		return FIBResult{Status: FIBFwdDisabled}
	}
	var tables []uint32
	if q.Table != 0 {
		tables = []uint32{q.Table}
	} else {
		if t, ok := f.Rules[q.Ifindex]; ok {
			tables = append(tables, t)
		}
		tables = append(tables, MainTable)
	}
	var rt *FIBRoute
	for _, t := range tables {
		if rt = f.longestMatch(t, q.Dst); rt != nil {
			break
		}
	}
	switch {
	case rt == nil:
		return FIBResult{Status: FIBNotForwarded}
	case rt.Type == RouteBlackhole:
		return FIBResult{Status: FIBBlackhole}
	case rt.Type == RouteUnreachable:
		return FIBResult{Status: FIBUnreachable}
	}
	out := f.Interfaces[rt.Ifindex]
	if uint32(q.TotLen) > out.MTU {
		return FIBResult{Status: FIBFragNeeded}
	}
	nh := q.Dst
	if rt.Gateway.IsValid() {
		nh = rt.Gateway
	}
	res := FIBResult{Status: FIBNoNeigh, Ifindex: rt.Ifindex}
	for _, n := range f.Neighbors {
		if n.Ifindex == rt.Ifindex && n.Addr == nh {
			res.Status = FIBSuccess
			copy(res.SrcMAC[:], out.MAC)
			copy(res.DstMAC[:], n.MAC)
			break
		}
	}
	return res
}

func (f *StaticFIB) longestMatch(table uint32, dst netip.Addr) *FIBRoute {
	var best *FIBRoute
	for i := range f.Routes {
		r := &f.Routes[i]
		if r.Table == table && r.Dst.Contains(dst) && (best == nil || r.Dst.Bits() > best.Dst.Bits()) {
			best = r
		}
	}
	return best
}
