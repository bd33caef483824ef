package dataplane

import (
	"encoding/binary"
	"net/netip"

	"github.com/seed4c/moat/lb"
	"github.com/seed4c/moat/tenant"
)

// Verdict is an XDP action.
type Verdict uint32

// XDP actions (enum xdp_action).
const (
	XDPAborted  Verdict = 0
	XDPDrop     Verdict = 1
	XDPPass     Verdict = 2
	XDPTx       Verdict = 3
	XDPRedirect Verdict = 4
)

func (v Verdict) String() string {
	switch v {
	case XDPAborted:
		return "aborted"
	case XDPDrop:
		return "drop"
	case XDPPass:
		return "pass"
	case XDPTx:
		return "tx"
	case XDPRedirect:
		return "redirect"
	}
	return "verdict(?)"
}

// Result is the fast path's decision on one frame.
type Result struct {
	Verdict Verdict
	Reason  Reason // ReasonNone for a redirect
	Frame   []byte // the frame as it leaves (rewritten), for redirect and pass
	Ifindex uint32 // redirect target
}

// Model is the fast path's decision written again in plain Go, step for step in the
// order of bpf/gateway.c: the reference the real program is tested against (same
// packets, same state, same verdict and bytes), and the place to read what the fast
// path does without reading C. It is not safe for concurrent use.
type Model struct {
	cfg    Config
	limits tenant.Limits
	fib    FIB
	now    func() uint64

	attachments map[attachKey]tenant.AttachmentEntry
	egress      map[egressKey]uint16
	services    map[svcKey]*tenant.ServiceEntry
	backends    map[uint32]tenant.BackendEntry
	backendBits map[uint32]bool // the backend filter (bpf/lib/filter.h): bits of backends' keys
	policy      map[policyScope][]netip.Prefix
	txPorts     map[uint32]bool
	host        map[HostService]bool

	CT       map[CTKey]*CTEntry
	Counters Counters
	gen      uint32 // configuration generation, bumped by Load like the writer's

	// Shortcuts counts the packets for which the fast path skips the service lookup,
	// and those for which doing so would be wrong (checkEstablishedShortcut).
	Shortcuts struct{ Taken, Wrong int }
	// Kept counts what ct_keep_reply and ct_keep_forward did: stamped the flow's other
	// entry, or wrote it again.
	Kept struct{ Stamped, Written int }
}

type attachKey struct {
	ifindex uint32
	vlan    uint16
}

type egressKey struct{ tenant, ifindex uint32 }

type svcKey struct {
	tenant uint32
	vip    [4]byte
	port   uint16
	proto  uint8
}

type policyScope struct{ tenant, service uint32 }

// CTKey is a connection tracking key (struct ct_key).
type CTKey struct {
	Tenant       uint32
	Saddr, Daddr [4]byte
	Sport, Dport uint16 // host order
	Proto        uint8
	Dir          uint8
}

// CTEntry is a connection tracking entry (struct ct_entry).
type CTEntry struct {
	LastSeen  uint64 // the fast path's 32-bit jiffies stamp; the model's own clock in nanoseconds
	BackendID uint32
	ServiceID uint32
	VIP       [4]byte
	VPort     uint16 // host order
	Flags     uint8
	Ifindex   uint32
	Route     Route // the direction's last route, for reuse
}

// Route is a route the fast path found and checked (struct route), kept in
// connection tracking entries for reuse while its generation, age and length allow.
type Route struct {
	Time    uint64 // 32-bit jiffies stamp (the model: nanoseconds); 0: not reusable
	Gen     uint32
	Ifindex uint32
	VLAN    uint16
	LenOK   uint16
	SMAC    [6]byte
	DMAC    [6]byte
}

func (m *Model) routeReusable(r *Route, now uint64, totLen uint16) bool {
	return r.Time != 0 && r.Gen == m.gen && now-r.Time < uint64(m.cfg.RouteTTL) && totLen <= r.LenOK
}

// Connection tracking directions and flags (bpf/lib/conntrack.h).
const (
	CTDirForward = 0
	CTDirReply   = 1
	CTFClosing   = 0x01
)

// NewModel returns a model of a freshly loaded fast path holding c. now returns
// CLOCK_MONOTONIC_COARSE nanoseconds: the model keeps time in nanoseconds against
// c's durations, where the fast path counts jiffies against the same durations
// rounded up to whole ticks (bpf/lib/clock.h); the two agree to within a tick.
func NewModel(cfg Config, limits tenant.Limits, fib FIB, now func() uint64) *Model {
	m := &Model{cfg: cfg, limits: limits, fib: fib, now: now, CT: map[CTKey]*CTEntry{}}
	m.Counters = newCounters()
	m.Load(&tenant.Compiled{})
	return m
}

// Load replaces the model's configuration with c, as Writer.Apply does to the maps;
// connection tracking and counters are kept.
func (m *Model) Load(c *tenant.Compiled) {
	m.gen++
	m.attachments = map[attachKey]tenant.AttachmentEntry{}
	for _, a := range c.Attachments {
		m.attachments[attachKey{a.Ifindex, a.VLAN}] = a
	}
	m.egress = map[egressKey]uint16{}
	for _, e := range c.Egress {
		m.egress[egressKey{e.TenantID, e.Ifindex}] = e.VLAN
	}
	m.services = map[svcKey]*tenant.ServiceEntry{}
	for i := range c.Services {
		s := &c.Services[i]
		m.services[svcKey{s.TenantID, s.VIP.As4(), s.Port, uint8(s.Protocol)}] = s
	}
	protocol := map[uint32]uint8{} // by service id
	for _, s := range c.Services {
		protocol[s.ID] = uint8(s.Protocol)
	}
	m.backends = map[uint32]tenant.BackendEntry{}
	m.backendBits = map[uint32]bool{}
	for _, b := range c.Backends {
		m.backends[b.ID] = b
		m.backendBits[FilterHash(b.TenantID, b.Addr.As4(), b.Port, protocol[b.ServiceID])] = true
	}
	m.policy = map[policyScope][]netip.Prefix{}
	for _, p := range c.Policy {
		k := policyScope{p.TenantID, p.ServiceID}
		m.policy[k] = append(m.policy[k], p.Source)
	}
	m.txPorts = map[uint32]bool{}
	for _, i := range c.TxPorts {
		m.txPorts[i] = true
	}
}

// SetHostServices mirrors Writer.SetHostServices.
func (m *Model) SetHostServices(services []HostService) {
	m.host = map[HostService]bool{}
	for _, h := range services {
		m.host[h] = true
	}
}

// pkt is struct pkt: what parsing learnt, with offsets instead of pointers.
type pkt struct {
	frame    []byte
	ifindex  uint32
	len      uint32
	proto    uint16
	vlan     uint16
	tagged   bool
	l3, l4   int
	l4proto  uint8
	tcpFlags uint8
	saddr    [4]byte
	daddr    [4]byte
	sport    uint16 // host order
	dport    uint16
}

const (
	ethPVLAN = 0x8100
	ethPQinQ = 0x88a8
	ethPIPv4 = 0x0800
	ethPIPv6 = 0x86dd
	ethPARP  = 0x0806

	protoICMP = 1
	protoTCP  = 6
	protoUDP  = 17

	tcpFIN = 0x01
	tcpSYN = 0x02
	tcpRST = 0x04
	tcpACK = 0x10
)

var be = binary.BigEndian
var le = binary.LittleEndian // raw loads, as the BPF program on x86 and arm64 sees them

// Process runs one frame arriving on ifindex through the model.
func (m *Model) Process(frame []byte, ifindex uint32) Result {
	p := &pkt{frame: append([]byte(nil), frame...), ifindex: ifindex, len: uint32(len(frame))}

	if r := parseL2(p); r != ReasonNone {
		return m.drop(p, 0, r)
	}
	att, ok := m.attachments[attachKey{p.ifindex, p.vlan}]
	if !ok {
		return m.drop(p, 0, DropNoTenant)
	}
	tid := att.TenantID
	m.Counters.tenant(tid, m.limits).RX.add(p.len)

	switch p.proto {
	case ethPARP:
		return m.pass(p, tid, PassARP)
	case ethPIPv6:
		return m.drop(p, tid, DropIPv6Unsupported)
	case ethPIPv4:
	default:
		return m.drop(p, tid, DropUnsupportedL3)
	}
	if r := parseIPv4(p); r != ReasonNone {
		return m.drop(p, tid, r)
	}
	if r := parseL4(p); r != ReasonNone {
		return m.drop(p, tid, r)
	}
	now := m.now()
	svc, ok := m.services[svcKey{tid, p.daddr, p.dport, p.l4proto}]
	m.checkEstablishedShortcut(p, tid, svc, now)
	if ok {
		return m.toBackend(p, att, svc, now)
	}
	return m.toClient(p, att)
}

// checkEstablishedShortcut checks the claim that lets the fast path skip the service
// lookup (to_service in bpf/gateway.c): when a packet's forward conntrack entry has a
// usable backend of the entry's service and a route reusable under the current
// generation, the packet is for that same service. The model itself always looks the
// service up; it counts the packets for which the fast path takes the shortcut, and
// those for which the shortcut would be wrong (a bug the differential test reports).
func (m *Model) checkEstablishedShortcut(p *pkt, tid uint32, svc *tenant.ServiceEntry, now uint64) {
	e := m.ctLookup(CTKey{tid, p.saddr, p.daddr, p.sport, p.dport, p.l4proto, CTDirForward}, p, now)
	if e == nil {
		return
	}
	b, ok := m.backend(e.BackendID)
	totLen := be.Uint16(p.frame[p.l3+2:])
	if !ok || !usable(b, tid, e.ServiceID) || !m.routeReusable(&e.Route, now, totLen) {
		return
	}
	m.Shortcuts.Taken++
	if svc == nil || svc.ID != e.ServiceID {
		m.Shortcuts.Wrong++
	}
}

func parseL2(p *pkt) Reason {
	f := p.frame
	if len(f) < 14 {
		return DropTruncatedL2
	}
	p.proto = be.Uint16(f[12:])
	p.l3 = 14
	if p.proto == ethPQinQ {
		return DropVLANStacked
	}
	if p.proto == ethPVLAN {
		if len(f) < 18 {
			return DropTruncatedL2
		}
		p.tagged = true
		p.vlan = be.Uint16(f[14:]) & 0x0fff
		p.proto = be.Uint16(f[16:])
		p.l3 = 18
		if p.proto == ethPVLAN || p.proto == ethPQinQ {
			return DropVLANStacked
		}
	}
	return ReasonNone
}

func parseIPv4(p *pkt) Reason {
	f, l3 := p.frame, p.l3
	if len(f) < l3+20 {
		return DropTruncatedL3
	}
	if f[l3]>>4 != 4 {
		return DropBadIPVersion
	}
	ihl := int(f[l3] & 0x0f)
	if ihl < 5 {
		return DropBadIHL
	}
	if l3+ihl*4 > len(f) {
		return DropTruncatedL3
	}
	totLen := int(be.Uint16(f[l3+2:]))
	if totLen < ihl*4 || l3+totLen > len(f) {
		return DropBadIPLen
	}
	if Checksum(f[l3:l3+ihl*4]) != 0 {
		return DropBadIPCsum
	}
	if be.Uint16(f[l3+6:])&0x3fff != 0 {
		return DropFragment
	}
	if f[l3+8] <= 1 {
		return DropTTLExceeded
	}
	p.l4proto = f[l3+9]
	copy(p.saddr[:], f[l3+12:])
	copy(p.daddr[:], f[l3+16:])
	p.l4 = l3 + ihl*4
	return ReasonNone
}

func parseL4(p *pkt) Reason {
	f, l3, l4 := p.frame, p.l3, p.l4
	payload := int(be.Uint16(f[l3+2:])) - (l4 - l3)
	switch p.l4proto {
	case protoTCP:
		if l4+20 > len(f) || payload < 20 {
			return DropTruncatedL4
		}
		doff := int(f[l4+12] >> 4)
		if doff < 5 || doff*4 > payload {
			return DropBadTCPHdr
		}
		p.tcpFlags = f[l4+13]
	case protoUDP:
		if l4+8 > len(f) || payload < 8 {
			return DropTruncatedL4
		}
		ulen := int(be.Uint16(f[l4+4:]))
		if ulen < 8 || ulen > payload {
			return DropBadUDPLen
		}
	case protoICMP:
		return DropICMPUnsupported
	default:
		return DropUnsupportedL4
	}
	p.sport = be.Uint16(f[l4:])
	p.dport = be.Uint16(f[l4+2:])
	return ReasonNone
}

// backend is the fast path's array lookup: an id past the array has no entry, an id
// never written is the zero value (evicted, tenant 0).
func (m *Model) backend(id uint32) (tenant.BackendEntry, bool) {
	if id >= m.limits.MaxBackends {
		return tenant.BackendEntry{}, false
	}
	return m.backends[id], true
}

func usable(b tenant.BackendEntry, tid, sid uint32) bool {
	return b.TenantID == tid && b.ServiceID == sid && b.State.AcceptsExistingFlows()
}

func (m *Model) policyAllows(tid, sid uint32, src [4]byte) bool {
	a := netip.AddrFrom4(src)
	for _, pfx := range m.policy[policyScope{tid, sid}] {
		if pfx.Contains(a) {
			return true
		}
	}
	return false
}

func (m *Model) toBackend(p *pkt, att tenant.AttachmentEntry, svc *tenant.ServiceEntry, now uint64) Result {
	tid, sid := att.TenantID, svc.ID
	ss := m.Counters.service(sid, m.limits)
	totLen := be.Uint16(p.frame[p.l3+2:])
	var (
		b                tenant.BackendEntry
		bid              uint32
		existing, cached bool
		r                = ReasonNone
	)
	e := m.ctLookup(CTKey{tid, p.saddr, p.daddr, p.sport, p.dport, p.l4proto, CTDirForward}, p, now)
	if e != nil {
		bid = e.BackendID
		if cand, ok := m.backend(bid); ok && usable(cand, tid, sid) {
			b, existing = cand, true
			// The fast path reuses the route only through the shortcut, which
			// checks the entry's own service id.
			cached = e.ServiceID == sid && m.routeReusable(&e.Route, now, totLen)
		}
	}
	if !cached && !m.policyAllows(tid, sid, p.saddr) {
		if ss != nil {
			ss.Denied++
		}
		return m.drop(p, tid, DropPolicyDenied)
	}
	stamped := false
	if existing {
		stamped = m.ctRefresh(e, p, now)
	} else {
		if svc.TableSize == 0 {
			return m.drop(p, tid, DropBackendUnavailable)
		}
		h := FlowHash(m.cfg.HashSeed, tid, p.saddr, p.daddr, p.sport, p.dport, p.l4proto)
		bid = svc.Table[h%svc.TableSize]
		cand, ok := m.backend(bid)
		if !ok || cand.State != lb.StateAdmitted {
			return m.drop(p, tid, DropBackendUnavailable)
		}
		if cand.TenantID != tid || cand.ServiceID != sid {
			return m.drop(p, tid, DropTenantMismatch)
		}
		b = cand
	}
	baddr := b.Addr.As4()

	natRewrite(p, natDst, baddr, b.Port)
	var rt Route
	if cached {
		rt = e.Route
	} else {
		rt, r = m.route(p, att, p.saddr, baddr)
		if r.IsDrop() {
			return m.drop(p, tid, r)
		}
		if r == ReasonNone {
			rt.Time, rt.Gen, rt.LenOK = now, m.gen, totLen
		}
	}
	bs := m.Counters.backend(bid, m.limits)
	if !existing {
		m.ctCreate(tid, p, baddr, b.Port, bid, sid, rt, now)
		if ss != nil {
			ss.NewFlows++
		}
		if bs != nil {
			bs.NewFlows++
		}
	} else {
		if !cached {
			e.Route = rt
			e.ServiceID = sid // what the established shortcut relies on
		}
		if stamped {
			m.ctKeepReply(tid, p, baddr, b.Port, bid, sid, rt.Ifindex, now)
		}
	}
	if ss != nil {
		ss.Fwd.add(p.len)
	}
	if bs != nil {
		bs.Fwd.add(p.len)
	}
	return m.transmit(p, tid, r, rt)
}

func (m *Model) toClient(p *pkt, att tenant.AttachmentEntry) Result {
	tid := att.TenantID
	totLen := be.Uint16(p.frame[p.l3+2:])
	now := m.now()
	var e *CTEntry
	if m.backendBits[FilterHash(tid, p.saddr, p.sport, p.l4proto)] { // replies come from backends
		e = m.ctLookup(CTKey{tid, p.saddr, p.daddr, p.sport, p.dport, p.l4proto, CTDirReply}, p, now)
	}
	if e == nil {
		if !p.tagged && m.host[HostService{p.ifindex, netip.AddrFrom4(p.daddr), p.dport, p.l4proto}] {
			return m.pass(p, tid, PassHostService)
		}
		return m.drop(p, tid, DropNoService)
	}
	b, ok := m.backend(e.BackendID)
	if !ok || !usable(b, tid, e.ServiceID) {
		return m.drop(p, tid, DropBackendEvicted)
	}
	if e.Ifindex != p.ifindex {
		return m.drop(p, tid, DropReplyWrongIface)
	}
	if m.ctRefresh(e, p, now) {
		m.ctKeepForward(tid, p, e, now)
	}
	cached := m.routeReusable(&e.Route, now, totLen)
	natRewrite(p, natSrc, e.VIP, e.VPort)
	rt, r := e.Route, ReasonNone
	if !cached {
		rt, r = m.route(p, att, e.VIP, p.daddr)
		if r.IsDrop() {
			return m.drop(p, tid, r)
		}
		if r == ReasonNone {
			rt.Time, rt.Gen, rt.LenOK = now, m.gen, totLen
			e.Route = rt
		}
	}
	if bs := m.Counters.backend(e.BackendID, m.limits); bs != nil {
		bs.Reply.add(p.len)
	}
	return m.transmit(p, tid, r, rt)
}

// route is fib_route: the kernel's lookup, then the tenant's egress check.
func (m *Model) route(p *pkt, att tenant.AttachmentEntry, src, dst [4]byte) (Route, Reason) {
	res := m.fib.Lookup(FIBQuery{
		Ifindex: p.ifindex,
		Table:   att.FIBTable,
		Src:     netip.AddrFrom4(src),
		Dst:     netip.AddrFrom4(dst),
		TotLen:  be.Uint16(p.frame[p.l3+2:]),
	})
	switch res.Status {
	case FIBSuccess, FIBNoNeigh:
	case FIBFragNeeded:
		return Route{}, DropFIBFragNeeded
	case FIBFwdDisabled:
		return Route{}, DropFIBFwdDisabled
	default:
		return Route{}, DropFIBUnreachable
	}
	vlan, ok := m.egress[egressKey{att.TenantID, res.Ifindex}]
	if !ok {
		return Route{}, DropEgressNotAttached
	}
	rt := Route{Ifindex: res.Ifindex, VLAN: vlan}
	if res.Status == FIBNoNeigh {
		if p.tagged || vlan != 0 {
			return rt, DropNoNeighTagged
		}
		return rt, PassNoNeigh
	}
	if !m.txPorts[rt.Ifindex] {
		return rt, DropNoTXPort
	}
	rt.SMAC, rt.DMAC = res.SrcMAC, res.DstMAC
	return rt, ReasonNone
}

func (m *Model) transmit(p *pkt, tid uint32, r Reason, rt Route) Result {
	if r == PassNoNeigh {
		return m.pass(p, tid, r)
	}
	ttlDecrement(p)
	setEgressVLAN(p, rt.VLAN)
	copy(p.frame[0:6], rt.DMAC[:])
	copy(p.frame[6:12], rt.SMAC[:])
	m.Counters.tenant(tid, m.limits).Fwd.add(p.len)
	return Result{Verdict: XDPRedirect, Frame: p.frame, Ifindex: rt.Ifindex}
}

func (m *Model) drop(p *pkt, tid uint32, r Reason) Result {
	m.Counters.Reasons[r].add(p.len)
	if tid != 0 {
		if ts := m.Counters.tenant(tid, m.limits); ts != nil {
			ts.Dropped.add(p.len)
		}
	}
	return Result{Verdict: XDPDrop, Reason: r, Frame: p.frame}
}

func (m *Model) pass(p *pkt, tid uint32, r Reason) Result {
	m.Counters.Reasons[r].add(p.len)
	m.Counters.tenant(tid, m.limits).Fwd.add(p.len)
	return Result{Verdict: XDPPass, Reason: r, Frame: p.frame}
}

func (m *Model) ctTimeout(e *CTEntry, proto uint8) uint64 {
	if proto == protoTCP {
		if e.Flags&CTFClosing != 0 {
			return uint64(m.cfg.CTTCPClosingTimeout)
		}
		return uint64(m.cfg.CTTCPTimeout)
	}
	return uint64(m.cfg.CTUDPTimeout)
}

func (m *Model) ctAlive(e *CTEntry, proto uint8, now uint64) bool {
	return now <= e.LastSeen || now-e.LastSeen <= m.ctTimeout(e, proto)
}

func (m *Model) ctLookup(k CTKey, p *pkt, now uint64) *CTEntry {
	e, ok := m.CT[k]
	if !ok || !m.ctAlive(e, p.l4proto, now) {
		return nil
	}
	if p.l4proto == protoTCP && e.Flags&CTFClosing != 0 && p.tcpFlags&(tcpSYN|tcpACK) == tcpSYN {
		return nil
	}
	return e
}

// ctRefresh returns whether it wrote the entry's stamp (CT_STAMPED): the moment the
// other entry of the flow is kept alive.
func (m *Model) ctRefresh(e *CTEntry, p *pkt, now uint64) bool {
	ended := false
	if p.l4proto == protoTCP && p.tcpFlags&(tcpFIN|tcpRST) != 0 && e.Flags&CTFClosing == 0 {
		e.Flags |= CTFClosing
		ended = true
	}
	if ended || now-e.LastSeen >= uint64(m.cfg.CTRefresh) {
		e.LastSeen = now
		return true
	}
	return false
}

// ctKeepReply is ct_keep_reply: stamp the flow's reply entry, or write it again when
// it is gone or expired, unless a live entry of another flow holds the key.
func (m *Model) ctKeepReply(tid uint32, p *pkt, baddr [4]byte, bport uint16, bid, sid, ifindex uint32, now uint64) {
	k := CTKey{tid, baddr, p.saddr, bport, p.sport, p.l4proto, CTDirReply}
	if r, ok := m.CT[k]; ok {
		if r.BackendID == bid && r.VIP == p.daddr && r.VPort == p.dport {
			r.LastSeen = now
			m.Kept.Stamped++
			return
		}
		if m.ctAlive(r, p.l4proto, now) {
			return
		}
	}
	m.CT[k] = &CTEntry{LastSeen: now, BackendID: bid, ServiceID: sid, VIP: p.daddr, VPort: p.dport, Ifindex: ifindex}
	m.Kept.Written++
}

// ctKeepForward is ct_keep_forward: stamp the flow's forward entry, or write it again
// without a route when it is gone or expired, unless a live entry names another
// backend.
func (m *Model) ctKeepForward(tid uint32, p *pkt, rep *CTEntry, now uint64) {
	k := CTKey{tid, p.daddr, rep.VIP, p.dport, rep.VPort, p.l4proto, CTDirForward}
	if f, ok := m.CT[k]; ok {
		if f.BackendID == rep.BackendID && f.ServiceID == rep.ServiceID {
			f.LastSeen = now
			m.Kept.Stamped++
			return
		}
		if m.ctAlive(f, p.l4proto, now) {
			return
		}
	}
	m.CT[k] = &CTEntry{LastSeen: now, BackendID: rep.BackendID, ServiceID: rep.ServiceID}
	m.Kept.Written++
}

func (m *Model) ctCreate(tid uint32, p *pkt, baddr [4]byte, bport uint16, bid, sid uint32, rt Route, now uint64) {
	fwd := &CTEntry{LastSeen: now, BackendID: bid, ServiceID: sid, Route: rt}
	if p.l4proto == protoTCP && p.tcpFlags&(tcpFIN|tcpRST) != 0 {
		fwd.Flags = CTFClosing
	}
	m.CT[CTKey{tid, p.saddr, p.daddr, p.sport, p.dport, p.l4proto, CTDirForward}] = fwd
	reply := &CTEntry{LastSeen: now, BackendID: bid, ServiceID: sid, VIP: p.daddr, VPort: p.dport, Ifindex: rt.Ifindex, Route: rt}
	reply.Route.Time = 0 // the reply direction finds its own route
	m.CT[CTKey{tid, baddr, p.saddr, bport, p.sport, p.l4proto, CTDirReply}] = reply
}

const (
	natDst = 0
	natSrc = 1
)

// natRewrite is nat_rewrite: address and port replaced, checksums updated
// incrementally exactly as bpf/lib/csum.h does.
func natRewrite(p *pkt, which int, addr [4]byte, port uint16) {
	f, l3, l4 := p.frame, p.l3, p.l4
	addrOff, portOff := l3+16, l4+2
	if which == natSrc {
		addrOff, portOff = l3+12, l4
	}
	checkOff := -1
	if p.l4proto == protoTCP {
		checkOff = l4 + 16
	} else if le.Uint16(f[l4+6:]) != 0 {
		checkOff = l4 + 6
	}
	oldAddr := le.Uint32(f[addrOff:])
	newAddr := le.Uint32(addr[:])
	oldPort := le.Uint16(f[portOff:])
	var newPort [2]byte
	be.PutUint16(newPort[:], port)

	le.PutUint16(f[l3+10:], csumReplace4(le.Uint16(f[l3+10:]), oldAddr, newAddr))
	copy(f[addrOff:], addr[:])
	copy(f[portOff:], newPort[:])
	if checkOff >= 0 {
		c := csumReplace4(le.Uint16(f[checkOff:]), oldAddr, newAddr)
		c = csumReplace2(c, oldPort, le.Uint16(newPort[:]))
		if p.l4proto == protoUDP && c == 0 {
			c = 0xffff
		}
		le.PutUint16(f[checkOff:], c)
	}
}

func ttlDecrement(p *pkt) {
	f, l3 := p.frame, p.l3
	old := le.Uint16(f[l3+8:])
	f[l3+8]--
	le.PutUint16(f[l3+10:], csumReplace2(le.Uint16(f[l3+10:]), old, le.Uint16(f[l3+8:])))
}

// setEgressVLAN is vlan_set_egress: retag, pop or push so the frame carries vid.
func setEgressVLAN(p *pkt, vid uint16) {
	f := p.frame
	switch {
	case p.tagged && vid != 0:
		be.PutUint16(f[14:], be.Uint16(f[14:])&0xf000|vid)
	case p.tagged:
		p.frame = append(f[:12:12], f[16:]...)
	case vid != 0:
		out := make([]byte, 0, len(f)+4)
		out = append(out, f[:12]...)
		out = be.AppendUint16(out, ethPVLAN)
		out = be.AppendUint16(out, vid)
		out = be.AppendUint16(out, ethPIPv4)
		p.frame = append(out, f[14:]...)
	}
}

func csumFold(sum uint32) uint16 {
	sum = sum&0xffff + sum>>16
	sum = sum&0xffff + sum>>16
	return uint16(sum)
}

func csumReplace2(check, old, new uint16) uint16 {
	sum := uint32(^check) + uint32(^old) + uint32(new)
	return ^csumFold(sum)
}

func csumReplace4(check uint16, old, new uint32) uint16 {
	sum := uint32(^check)
	sum += uint32(^uint16(old))
	sum += uint32(^uint16(old >> 16))
	sum += new & 0xffff
	sum += new >> 16
	return ^csumFold(sum)
}

// Checksum is the Internet checksum (RFC 1071) of b: 0 over a header whose checksum
// field is right.
func Checksum(b []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(be.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	return ^csumFold(sum)
}

// FlowHash is flow_hash of bpf/lib/hash.h: MurmurHash3 (x86, 32-bit) over tenant,
// addresses, ports and protocol, reading each field as raw little-endian words.
func FlowHash(seed, tenantID uint32, saddr, daddr [4]byte, sport, dport uint16, proto uint8) uint32 {
	swap := func(v uint16) uint32 { return uint32(v>>8 | v<<8) } // host-order port as its raw load
	h := seed
	h = murmurMix(h, tenantID)
	h = murmurMix(h, le.Uint32(saddr[:]))
	h = murmurMix(h, le.Uint32(daddr[:]))
	h = murmurMix(h, swap(sport)<<16|swap(dport))
	h = murmurMix(h, uint32(proto))
	return murmurFmix(h ^ 20)
}

func rol32(w uint32, s uint) uint32 { return w<<s | w>>(32-s) }

func murmurMix(h, k uint32) uint32 {
	k *= 0xcc9e2d51
	k = rol32(k, 15)
	k *= 0x1b873593
	h ^= k
	h = rol32(h, 13)
	return h*5 + 0xe6546b64
}

func murmurFmix(h uint32) uint32 {
	h ^= h >> 16
	h *= 0x85ebca6b
	h ^= h >> 13
	h *= 0xc2b2ae35
	h ^= h >> 16
	return h
}
