package dataplane

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/seed4c/moat/internal/packet"
	"github.com/seed4c/moat/lb"
	"github.com/seed4c/moat/tenant"
)

// The differential test's gateway: three tenants with overlapping client prefixes
// (10.0.0.0/24 on c1 and c2), the same VIP (10.100.0.1:80) and the same backend
// addresses (10.1.0.1-3, on b1 for A and b2 for B), a VLAN trunk t carrying A (100)
// and B (200), a tenant routed by policy rules (C), a tenant whose interface does not
// forward (D), and routes that would leak if the egress check did not stop them. c3's
// ifindex is beyond the port array, so its untagged attachment is classified through
// the hash map, as the trunk's tagged ones are, and the others through the array.
var (
	diffIfaces = []envIface{
		{"c1", 1500, true, 0}, {"c2", 1500, true, 0}, {"c3", 1500, true, maxPortIfindex + 904},
		{"b1", 1400, true, 0}, {"b2", 1500, true, 0}, {"t", 1500, true, 0},
		{"x", 1500, false, 0}, {"u", 1500, true, 0},
	}
	diffRoutes = []envRoute{
		{table: 100, dst: "10.0.0.0/24", dev: "c1"},
		{table: 100, dst: "10.1.0.0/24", dev: "b1"},
		{table: 100, dst: "10.9.0.0/24", dev: "t"},
		{table: 100, dst: "10.2.0.0/24", dev: "b2"}, // B's interface: must never be used for A
		{table: 100, dst: "10.66.0.0/16", blackhole: true},
		{table: 100, dst: "10.50.0.0/24", dev: "c1", via: "10.0.0.254"},
		{table: 200, dst: "10.0.0.0/24", dev: "c2"},
		{table: 200, dst: "10.1.0.0/24", dev: "b2"},
		{table: 200, dst: "10.2.0.0/24", dev: "b2"},
		{table: 200, dst: "10.19.0.0/24", dev: "t"},
		{table: 300, dst: "10.3.0.0/24", dev: "c3"},
		{table: 300, dst: "10.4.0.0/24", dev: "c3"},
		{table: 0, dst: "10.5.0.0/24", dev: "u"}, // main table: C falls through to it
		{table: 400, dst: "10.8.0.0/24", dev: "x"},
	}
	diffRules = map[string]int{"c3": 300}
)

func diffNeighbors() []envNeigh {
	var n []envNeigh
	add := func(dev, pfx string, from, to int) {
		for i := from; i <= to; i++ {
			n = append(n, envNeigh{dev, pfx + strconv.Itoa(i)})
		}
	}
	add("c1", "10.0.0.", 2, 15) // 10.0.0.16-20 and .130+ stay unresolved: the stack resolves them
	add("c1", "10.0.0.", 254, 254)
	add("c2", "10.0.0.", 2, 20)
	add("c2", "10.0.0.", 130, 140)
	add("b1", "10.1.0.", 1, 2) // 10.1.0.3 unresolved
	add("b1", "10.1.0.", 4, 4)
	add("b2", "10.1.0.", 1, 4)
	add("b2", "10.2.0.", 9, 9)
	add("t", "10.9.0.", 2, 10)
	add("t", "10.19.0.", 2, 10)
	add("c3", "10.3.0.", 2, 9)
	add("c3", "10.4.0.", 1, 3)
	add("u", "10.5.0.", 1, 1)
	add("x", "10.8.0.", 1, 1)
	return n
}

func ap(s string) netip.Addr    { return netip.MustParseAddr(s) }
func pfx(s string) netip.Prefix { return netip.MustParsePrefix(s) }
func bk(name, addr string, port uint16, w uint32, st lb.State) tenant.Backend {
	return tenant.Backend{Name: name, Addr: ap(addr), Port: port, Weight: w, State: st}
}

// diffConfig returns the tenants in phase p of the test: each phase changes backend
// states, membership, table sizes and rules, as an operator would mid-traffic.
func diffConfig(p int) tenant.Config {
	adm, drn, evc := lb.StateAdmitted, lb.StateDraining, lb.StateEvicted
	aWeb := []tenant.Backend{
		bk("w1", "10.1.0.1", 8080, 1, adm), bk("w2", "10.1.0.2", 8080, 2, adm), bk("w3", "10.1.0.3", 8080, 3, adm),
		bk("w4", "10.2.0.9", 8080, 1, adm), bk("w5", "10.66.0.1", 8080, 1, adm), bk("w6", "10.1.0.4", 8080, 2, adm),
	}
	bWeb := []tenant.Backend{
		bk("v1", "10.1.0.1", 8080, 1, adm), bk("v2", "10.1.0.2", 8080, 1, adm), bk("v3", "10.1.0.3", 8080, 1, adm),
	}
	bWebSize := uint32(257)
	aRules := []tenant.Rule{
		{Name: "lan", Sources: []netip.Prefix{pfx("10.0.0.0/25")}, Services: []string{"web", "dns"}},
		{Name: "trunk", Sources: []netip.Prefix{pfx("10.9.0.0/24")}, Services: []string{"web"}},
		{Name: "upper", Sources: []netip.Prefix{pfx("10.0.0.128/25")}, Services: []string{"*"}},
	}
	aServices := 4
	switch p {
	case 1:
		aWeb[1].State = drn
		bWeb[0].State = evc
	case 2:
		aWeb[1].State = drn
		aWeb = aWeb[:5] // w6 removed
		bWeb[0].State = evc
		bWeb[2].State = drn
		bWebSize = 263
		aRules = aRules[:2]
		aServices = 3 // admin removed
	}
	aSvcs := []tenant.Service{
		{Name: "web", VIP: ap("10.100.0.1"), Port: 80, Protocol: tenant.TCP, MaglevSize: 521, Backends: aWeb},
		{Name: "dns", VIP: ap("10.100.0.1"), Port: 53, Protocol: tenant.UDP, MaglevSize: 131, Backends: []tenant.Backend{
			bk("d1", "10.1.0.1", 53, 1, adm), bk("d2", "10.50.0.7", 53, 1, adm)}},
		{Name: "empty", VIP: ap("10.100.0.3"), Port: 80, Protocol: tenant.TCP, MaglevSize: 131},
		{Name: "admin", VIP: ap("10.100.0.2"), Port: 22, Protocol: tenant.TCP, Backends: []tenant.Backend{
			bk("a1", "10.1.0.2", 22, 1, adm)}},
	}[:aServices]
	return tenant.Config{Tenants: []tenant.Tenant{
		{
			Name: "a", FIBTable: 100,
			Attachments: []tenant.Attachment{{Interface: "c1"}, {Interface: "b1"}, {Interface: "t", VLAN: 100}},
			Services:    aSvcs,
			Rules:       aRules,
		},
		{
			Name: "b", FIBTable: 200,
			Attachments: []tenant.Attachment{{Interface: "c2"}, {Interface: "b2"}, {Interface: "t", VLAN: 200}},
			Services: []tenant.Service{
				{Name: "web", VIP: ap("10.100.0.1"), Port: 80, Protocol: tenant.TCP, MaglevSize: bWebSize, Backends: bWeb},
				{Name: "alt", VIP: ap("10.100.0.9"), Port: 443, Protocol: tenant.TCP, MaglevSize: 131, Backends: []tenant.Backend{
					bk("x1", "10.2.0.9", 443, 1, adm)}},
			},
			Rules: []tenant.Rule{
				{Sources: []netip.Prefix{pfx("10.0.0.0/24")}, Services: []string{"*"}},
				{Sources: []netip.Prefix{pfx("10.19.0.0/24")}, Services: []string{"web"}},
			},
		},
		{
			Name:        "c",
			Attachments: []tenant.Attachment{{Interface: "c3"}},
			Services: []tenant.Service{
				{Name: "s", VIP: ap("10.103.0.1"), Port: 80, Protocol: tenant.TCP, MaglevSize: 211, Backends: []tenant.Backend{
					bk("s1", "10.4.0.1", 80, 1, adm), bk("s2", "10.4.0.2", 80, 1, adm), bk("s3", "10.5.0.1", 80, 1, adm)}},
			},
			Rules: []tenant.Rule{{Sources: []netip.Prefix{pfx("10.3.0.0/24")}, Services: []string{"*"}}},
		},
		{
			Name: "d", FIBTable: 400,
			Attachments: []tenant.Attachment{{Interface: "x"}},
			Services: []tenant.Service{
				{Name: "s", VIP: ap("10.108.0.1"), Port: 80, Protocol: tenant.TCP, MaglevSize: 131, Backends: []tenant.Backend{
					bk("s1", "10.8.0.1", 80, 1, adm)}},
			},
			Rules: []tenant.Rule{{Sources: []netip.Prefix{pfx("0.0.0.0/0")}, Services: []string{"*"}}},
		},
	}}
}

// ingress is where a generated frame arrives.
type ingress struct {
	iface   string
	vlan    uint16
	clients []netip.Addr
}

func hosts(p string, from, to int) []netip.Addr {
	var out []netip.Addr
	for i := from; i <= to; i++ {
		out = append(out, ap(p+strconv.Itoa(i)))
	}
	return out
}

var diffIngresses = []ingress{
	{"c1", 0, append(append(hosts("10.0.0.", 2, 20), hosts("10.0.0.", 130, 140)...), ap("10.77.0.1"))},
	{"c2", 0, append(append(hosts("10.0.0.", 2, 20), hosts("10.0.0.", 130, 140)...), ap("10.77.0.1"))},
	{"t", 100, hosts("10.9.0.", 2, 10)},
	{"t", 200, hosts("10.19.0.", 2, 10)},
	{"t", 300, hosts("10.9.0.", 2, 4)},  // VLAN nobody is attached with
	{"c1", 100, hosts("10.0.0.", 2, 4)}, // tagged on an untagged attachment
	{"c3", 0, hosts("10.3.0.", 2, 9)},
	{"x", 0, hosts("10.8.1.", 1, 3)},
	{"u", 0, hosts("10.5.0.", 1, 2)}, // interface of no tenant
	{"b1", 0, hosts("10.1.0.", 1, 4)},
	{"b2", 0, hosts("10.1.0.", 1, 4)},
}

type target struct {
	addr  netip.Addr
	port  uint16
	proto uint8
}

var diffTargets = []target{
	{ap("10.100.0.1"), 80, 6}, {ap("10.100.0.1"), 53, 17}, {ap("10.100.0.2"), 22, 6},
	{ap("10.100.0.3"), 80, 6}, {ap("10.100.0.9"), 443, 6}, {ap("10.103.0.1"), 80, 6},
	{ap("10.108.0.1"), 80, 6}, {ap("10.100.0.1"), 81, 6}, {ap("10.100.0.1"), 80, 17},
	{ap("10.1.0.1"), 8080, 6}, {ap("10.2.0.9"), 443, 6}, {ap("10.4.0.1"), 80, 6}, // backends, directly
	{ap("10.1.0.254"), 9444, 6}, {ap("10.1.0.254"), 9444, 17}, {ap("10.1.0.254"), 9443, 6}, // the gateway itself
}

// diffHostServices: the gateway's verifier port on b1 and on the trunk t (where only
// untagged frames may reach it).
func diffHostServices(env *gwEnv) []HostService {
	return []HostService{
		{Ifindex: env.ifindex["b1"], Addr: ap("10.1.0.254"), Port: 9444, Proto: 6},
		{Ifindex: env.ifindex["t"], Addr: ap("10.1.0.254"), Port: 9444, Proto: 6},
	}
}

// gen produces the test's frames: valid flows and replies, cross-tenant probes,
// spoofed replies, and every kind of malformed frame.
type gen struct {
	r        *rand.Rand
	env      *gwEnv
	model    *Model
	compiled *tenant.Compiled
	replies  []CTKey
	forwards []CTKey              // tracked flows whose ingress is known: sent again
	ingress  map[tuple]ingressRef // where each client tuple was last sent from
}

type tuple struct {
	saddr, daddr [4]byte
	sport, dport uint16
	proto        uint8
}

type ingressRef struct {
	ifindex uint32
	vlan    uint16
}

func (g *gen) pick(n int) int { return g.r.IntN(n) }

func (g *gen) tcpFlags() uint8 {
	switch x := g.pick(100); {
	case x < 40:
		return packet.SYN
	case x < 70:
		return packet.ACK
	case x < 85:
		return packet.PSH | packet.ACK
	case x < 93:
		return packet.FIN | packet.ACK
	case x < 98:
		return packet.RST
	default:
		return packet.SYN | packet.ACK
	}
}

// refreshReplies lists the flows the model tracks, to send their replies and their
// next client packets (which take the fast path's established shortcut).
func (g *gen) refreshReplies() {
	g.replies, g.forwards = g.replies[:0], g.forwards[:0]
	for k := range g.model.CT {
		switch {
		case k.Dir == CTDirReply:
			g.replies = append(g.replies, k)
		case g.ingress[tuple{k.Saddr, k.Daddr, k.Sport, k.Dport, k.Proto}] != ingressRef{}:
			g.forwards = append(g.forwards, k)
		}
	}
	// In a fixed order, so that a seed replays the same frames.
	slices.SortFunc(g.forwards, compareCTKeys)
	slices.SortFunc(g.replies, compareCTKeys)
}

func compareCTKeys(a, b CTKey) int {
	return cmp.Or(cmp.Compare(a.Tenant, b.Tenant), bytes.Compare(a.Saddr[:], b.Saddr[:]), bytes.Compare(a.Daddr[:], b.Daddr[:]),
		cmp.Compare(a.Sport, b.Sport), cmp.Compare(a.Dport, b.Dport), cmp.Compare(a.Proto, b.Proto), cmp.Compare(a.Dir, b.Dir))
}

// vlanOf returns the tag tenant tid's frames carry on ifindex.
func (g *gen) vlanOf(tid, ifindex uint32) (uint16, bool) {
	for _, e := range g.compiled.Egress {
		if e.TenantID == tid && e.Ifindex == ifindex {
			return e.VLAN, true
		}
	}
	return 0, false
}

func (g *gen) next() ([]byte, uint32) {
	f := packet.Frame{Src: mac("client"), Dst: mac("gw")}
	var ifindex uint32
	if len(g.replies) > 0 && g.pick(100) < 35 {
		k := g.replies[g.pick(len(g.replies))]
		e := g.model.CT[k]
		f.SrcIP, f.DstIP = netip.AddrFrom4(k.Saddr), netip.AddrFrom4(k.Daddr)
		f.SrcPort, f.DstPort, f.Proto = k.Sport, k.Dport, k.Proto
		ifindex = e.Ifindex
		if v, ok := g.vlanOf(k.Tenant, e.Ifindex); ok {
			f.VLAN = v
		}
		if g.pick(100) < 20 { // the same reply from somewhere else: spoofed
			in := diffIngresses[g.pick(len(diffIngresses))]
			ifindex, f.VLAN = g.env.ifindex[in.iface], in.vlan
		}
	} else if len(g.forwards) > 0 && g.pick(100) < 25 {
		k := g.forwards[g.pick(len(g.forwards))]
		f.SrcIP, f.DstIP = netip.AddrFrom4(k.Saddr), netip.AddrFrom4(k.Daddr)
		f.SrcPort, f.DstPort, f.Proto = k.Sport, k.Dport, k.Proto
		in := g.ingress[tuple{k.Saddr, k.Daddr, k.Sport, k.Dport, k.Proto}]
		ifindex, f.VLAN = in.ifindex, in.vlan
	} else {
		in := diffIngresses[g.pick(len(diffIngresses))]
		ifindex, f.VLAN = g.env.ifindex[in.iface], in.vlan
		f.SrcIP = in.clients[g.pick(len(in.clients))]
		f.SrcPort = uint16(20000 + g.pick(40))
		tg := diffTargets[g.pick(len(diffTargets))]
		if g.pick(100) < 3 {
			tg = target{netip.AddrFrom4([4]byte{10, byte(g.pick(256)), byte(g.pick(256)), byte(g.pick(256))}), uint16(g.pick(65536)), 6}
		}
		f.DstIP, f.DstPort, f.Proto = tg.addr, tg.port, tg.proto
		g.ingress[tuple{f.SrcIP.As4(), f.DstIP.As4(), f.SrcPort, f.DstPort, f.Proto}] = ingressRef{ifindex, f.VLAN}
	}
	if f.Proto == 6 {
		f.TCPFlags = g.tcpFlags()
	}
	if g.pick(100) < 5 {
		f.Payload = make([]byte, 1300+g.pick(200)) // some exceed b1's MTU of 1400
	} else if g.pick(100) < 30 {
		f.Payload = []byte("hello moat")
	}
	if g.pick(100) < 5 {
		f.IPOptions = make([]byte, 4*(1+g.pick(10)))
		f.IPOptions[0] = 1 // NOP
	}
	if g.pick(100) < 3 {
		f.TTL = uint8(g.pick(3))
	}
	if f.Proto == 17 && g.pick(100) < 20 {
		f.NoUDPCsum = true
	}
	b := f.Build()
	if g.pick(100) < 5 {
		b = append(b, make([]byte, g.pick(40))...) // Ethernet padding
	}
	if g.pick(100) < 18 {
		b = g.mangle(b, f)
	}
	return b, ifindex
}

// mangle breaks a frame the ways the fast path must survive.
func (g *gen) mangle(b []byte, f packet.Frame) []byte {
	l3 := 14
	if f.VLAN != 0 {
		l3 = 18
	}
	fixIPCsum := func() {
		ihl := int(b[l3]&0x0f) * 4
		if ihl < 20 || l3+ihl > len(b) {
			return
		}
		b[l3+10], b[l3+11] = 0, 0
		c := packet.Checksum(b[l3:l3+ihl], 0)
		b[l3+10], b[l3+11] = byte(c>>8), byte(c)
	}
	switch g.pick(16) {
	case 0: // truncate anywhere (the kernel needs 14 bytes to run the program)
		return b[:14+g.pick(len(b)-13)]
	case 1: // a random byte
		b[g.pick(len(b))] = byte(g.pick(256))
	case 2: // IHL
		b[l3] = 0x40 | byte(g.pick(16))
		fixIPCsum()
	case 3: // total length
		b[l3+2], b[l3+3] = byte(g.pick(256)), byte(g.pick(256))
		fixIPCsum()
	case 4: // version
		b[l3] = byte(g.pick(16))<<4 | b[l3]&0x0f
		fixIPCsum()
	case 5: // fragment
		b[l3+6], b[l3+7] = byte(g.pick(4))|0x20, byte(g.pick(256))
		fixIPCsum()
	case 6: // another L4 protocol
		b[l3+9] = []byte{1, 47, 132, 0, 58}[g.pick(5)]
		fixIPCsum()
	case 7: // ethertypes: ARP, IPv6, unknown, QinQ
		et := []uint16{0x0806, 0x86dd, 0x88cc, 0x88a8, 0x8100}[g.pick(5)]
		b[l3-2], b[l3-1] = byte(et>>8), byte(et)
	case 8: // UDP length or TCP data offset
		ihl := int(b[l3]&0x0f) * 4
		if l3+ihl+14 <= len(b) {
			if f.Proto == 17 {
				b[l3+ihl+4], b[l3+ihl+5] = byte(g.pick(256)), byte(g.pick(256))
			} else {
				b[l3+ihl+12] = byte(g.pick(16)) << 4
			}
		}
	case 9: // random bytes entirely
		for i := range b {
			b[i] = byte(g.pick(256))
		}
	case 10: // bad IP checksum
		b[l3+10] ^= 0xff
	case 11: // short tagged frame
		return append([]byte{}, append(b[:12], 0x81, 0x00, 0x00)...)
	default: // a second tag (or a tag on a frame that had none)
		tag := []byte{0x81, 0x00, byte(g.pick(16)), byte(g.pick(256))}
		return append(append(append([]byte{}, b[:12]...), tag...), b[12:]...)
	}
	return b
}

func monotonicNow() uint64 {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC_COARSE, &ts)
	return uint64(ts.Nano())
}

// diffPackets is how many frames one run compares; DIFF_PACKETS overrides it.
func diffPackets(t *testing.T) int {
	if s := os.Getenv("DIFF_PACKETS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil {
			t.Fatalf("DIFF_PACKETS=%q: %v", s, err)
		}
		return n
	}
	return 120000
}

// TestPrivilegedDifferential runs the same frames through the reference model and the
// real program (BPF_PROG_TEST_RUN, helpers and fib lookups for real, in a namespace
// whose routes are the model's) and requires the same verdict and the same bytes out,
// the same counters and the same connection tracking entries. Over the same frames it
// checks isolation: nothing classified to one tenant leaves toward another tenant.
func TestPrivilegedDifferential(t *testing.T) {
	env := newGWEnv(t, diffIfaces, diffRoutes, diffNeighbors(), diffRules)
	if env.ifindex["c3"] < maxPortIfindex {
		t.Fatalf("c3 has ifindex %d: its attachment would not take the hash path", env.ifindex["c3"])
	}
	cfg := DefaultConfig()
	// No entry reaches its refresh interval or a timeout during a run on its own:
	// the kernel counts them in jiffies and the model in its clock, which can put an
	// interval's end a tick apart, and a packet at that boundary would be a refresh
	// (and keep the flow's other entry) in one and not in the other. Refreshes still
	// happen where the test makes them, deterministically: loseEntries ages entries
	// past the interval, and FIN or RST forces one.
	cfg.CTRefresh = time.Hour
	cfg.CTTCPTimeout, cfg.CTTCPClosingTimeout, cfg.CTUDPTimeout = 3*time.Hour, 3*time.Hour, 3*time.Hour
	limits := tenant.DefaultLimits()
	dp := env.open(t, cfg, limits, 1<<20)
	model := NewModel(cfg, limits, env.fib, monotonicNow)

	seed := rand.Uint64()
	if s := os.Getenv("DIFF_SEED"); s != "" {
		seed, _ = strconv.ParseUint(s, 10, 64)
	}
	t.Logf("seed %d (DIFF_SEED=%d reproduces this run)", seed, seed)
	g := &gen{r: rand.New(rand.NewPCG(seed, 1)), env: env, model: model, ingress: map[tuple]ingressRef{}}

	n := diffPackets(t)
	phases := []int{0, 1, 2, 0}
	var ids tenant.IDs
	owner := map[attachKey]uint32{} // (ifindex, vlan) -> tenant, over all phases
	verdicts := map[Verdict]int{}
	reasons := map[Reason]int{}
	checked := 0

	err := env.gw.Do(func() error {
		for i := 0; i < n; i++ {
			if i%(n/len(phases)) == 0 && i/(n/len(phases)) < len(phases) {
				c, err := tenant.Compile(diffConfig(phases[i/(n/len(phases))]), env, ids, limits)
				if err != nil {
					return fmt.Errorf("compile phase: %w", err)
				}
				ids = c.IDs
				if err := dp.Writer().Apply(c); err != nil {
					return fmt.Errorf("apply phase: %w", err)
				}
				model.Load(c)
				if err := dp.Writer().SetHostServices(diffHostServices(env)); err != nil {
					return err
				}
				model.SetHostServices(diffHostServices(env))
				g.compiled = c
				for _, a := range c.Attachments {
					owner[attachKey{a.Ifindex, a.VLAN}] = a.TenantID
				}
			}
			if i%500 == 0 {
				g.refreshReplies()
			}
			if i%2000 == 1000 {
				if err := g.loseEntries(dp); err != nil {
					return err
				}
				g.refreshReplies()
			}
			frame, ifindex := g.next()
			v, out := runProg(t, dp, frame, ifindex)
			want := model.Process(frame, ifindex)
			verdicts[v]++
			reasons[want.Reason]++
			if v != want.Verdict || !bytes.Equal(out, want.Frame) {
				return fmt.Errorf("frame %d on ifindex %d:\n%s\nkernel: %s\n%s\nmodel: %s (%s)\n%s", i, ifindex,
					hex.Dump(frame), v, hex.Dump(out), want.Verdict, want.Reason, hex.Dump(want.Frame))
			}
			if v == XDPRedirect {
				if err := checkIsolation(env, owner, frame, ifindex, out); err != nil {
					return fmt.Errorf("frame %d: %w", i, err)
				}
				checked++
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d frames: verdicts %v; %d redirects checked for isolation", n, verdicts, checked)
	for r, c := range reasons {
		t.Logf("  %-26s %d", r, c)
	}
	// Every outcome the generator is meant to reach was reached.
	for _, r := range []Reason{ReasonNone, DropTruncatedL2, DropVLANStacked, DropNoTenant, DropIPv6Unsupported,
		DropUnsupportedL3, DropTruncatedL3, DropBadIPVersion, DropBadIHL, DropBadIPLen, DropBadIPCsum, DropFragment,
		DropTTLExceeded, DropICMPUnsupported, DropUnsupportedL4, DropTruncatedL4, DropBadTCPHdr, DropBadUDPLen,
		DropNoService, DropPolicyDenied, DropBackendUnavailable, DropBackendEvicted, DropReplyWrongIface,
		DropFIBUnreachable, DropFIBFragNeeded, DropFIBFwdDisabled, DropEgressNotAttached, PassARP, PassNoNeigh, PassHostService} {
		if reasons[r] == 0 && n >= 100000 {
			t.Errorf("no frame ended with %s: the generator lost coverage", r)
		}
	}

	got, err := dp.Counters()
	if err != nil {
		t.Fatal(err)
	}
	compareCounters(t, got, model.Counters)
	compareCT(t, dp, model)
	// The fast path skips the service lookup for established flows; the model checks
	// on every such packet that the service it would have found is the entry's.
	t.Logf("established shortcut: %d packets", model.Shortcuts.Taken)
	if model.Shortcuts.Wrong != 0 {
		t.Errorf("the established shortcut would have been wrong for %d packets", model.Shortcuts.Wrong)
	}
	if model.Shortcuts.Taken == 0 && n >= 100000 {
		t.Error("no packet took the established shortcut: the generator lost coverage")
	}
	// A flow's refresh stamps its other entry, and writes it again once lost.
	t.Logf("other entries kept: %d stamped, %d written again", model.Kept.Stamped, model.Kept.Written)
	if (model.Kept.Stamped == 0 || model.Kept.Written == 0) && n >= 100000 {
		t.Error("no refresh kept a flow's other entry: the generator lost coverage")
	}
}

// loseEntries stands in for the LRU map's evictions, which the model does not have:
// for a few tracked flows it deletes one of the two entries, in the kernel and in the
// model alike, and ages the other past the refresh interval in both clocks, so that
// the flow's next packet in that direction writes the lost entry again (or, for a
// reply whose entry was lost, is dropped in both).
func (g *gen) loseEntries(dp *Dataplane) error {
	hz, err := KernelHZ()
	if err != nil {
		return err
	}
	jiffies, _, err := readJiffies()
	if err != nil {
		return err
	}
	m := g.model
	refresh := uint32(toJiffies(m.cfg.CTRefresh, hz))
	var flows []CTKey
	for k := range m.CT {
		if k.Dir == CTDirForward {
			flows = append(flows, k)
		}
	}
	slices.SortFunc(flows, compareCTKeys) // a seed replays the same choices
	for range 16 {
		if len(flows) == 0 {
			return nil
		}
		fk := flows[g.pick(len(flows))]
		fe, ok := m.CT[fk] // gone when an earlier round picked the same flow
		if !ok {
			continue
		}
		b, ok := m.backends[fe.BackendID]
		if !ok {
			continue
		}
		rk := CTKey{fk.Tenant, b.Addr.As4(), fk.Saddr, b.Port, fk.Sport, fk.Proto, CTDirReply}
		if _, ok := m.CT[rk]; !ok {
			continue
		}
		lost, kept := fk, rk
		if g.pick(2) == 0 {
			lost, kept = rk, fk
		}
		if err := dp.objs.Conntrack.Delete(ctKeyRaw(lost)); err != nil {
			return fmt.Errorf("lose %+v: %w", lost, err)
		}
		delete(m.CT, lost)
		var e gatewayCtEntry
		if err := dp.objs.Conntrack.Lookup(ctKeyRaw(kept), &e); err != nil {
			return fmt.Errorf("age %+v: %w", kept, err)
		}
		e.LastSeen = uint32(jiffies) - refresh - 1
		if err := dp.objs.Conntrack.Put(ctKeyRaw(kept), &e); err != nil {
			return fmt.Errorf("age %+v: %w", kept, err)
		}
		m.CT[kept].LastSeen = m.now() - uint64(m.cfg.CTRefresh) - uint64(time.Millisecond)
	}
	return nil
}

// ctKeyRaw is k as the fast path stores it.
func ctKeyRaw(k CTKey) *gatewayCtKey {
	return &gatewayCtKey{TenantId: k.Tenant, Saddr: binary.LittleEndian.Uint32(k.Saddr[:]), Daddr: binary.LittleEndian.Uint32(k.Daddr[:]),
		Sport: portRaw(k.Sport), Dport: portRaw(k.Dport), Proto: k.Proto, Dir: k.Dir}
}

// checkIsolation: a frame redirected by the fast path leaves on an interface and VLAN
// attached to the tenant it arrived from, toward a neighbour on that interface.
func checkIsolation(env *gwEnv, owner map[attachKey]uint32, in []byte, inIfindex uint32, out []byte) error {
	pi, _ := packet.Parse(in)
	po, ok := packet.Parse(out)
	if !ok {
		return fmt.Errorf("redirected frame does not parse")
	}
	from, ok := owner[attachKey{inIfindex, pi.VLAN}]
	if !ok {
		return fmt.Errorf("redirected a frame from (ifindex %d, vlan %d), which no tenant owns", inIfindex, pi.VLAN)
	}
	for _, n := range env.fib.Neighbors {
		if bytes.Equal(n.MAC, po.Dst) {
			to, ok := owner[attachKey{n.Ifindex, po.VLAN}]
			if !ok || to != from {
				return fmt.Errorf("tenant %d's frame left toward %s on (ifindex %d, vlan %d), owned by tenant %d",
					from, n.Addr, n.Ifindex, po.VLAN, to)
			}
			// Checksums are updated incrementally: right in, right out (and a wrong
			// one stays wrong for the receiver to reject).
			if !po.IPCsumOK || pi.L4CsumOK && !po.L4CsumOK {
				return fmt.Errorf("redirected frame has a bad checksum: %+v", po)
			}
			return nil
		}
	}
	return fmt.Errorf("redirected frame to %s, which is no neighbour of the gateway", po.Dst)
}

func compareCounters(t *testing.T, got, want Counters) {
	t.Helper()
	for r := range NumReasons {
		if got.Reasons[r] != want.Reasons[r] {
			t.Errorf("reason %s: kernel %+v, model %+v", Reason(r), got.Reasons[r], want.Reasons[r])
		}
	}
	for id, w := range want.Tenants {
		if g := got.Tenants[id]; g == nil && *w != (TenantCounters{}) || g != nil && *g != *w {
			t.Errorf("tenant %d: kernel %+v, model %+v", id, g, w)
		}
	}
	for id, w := range want.Services {
		if g := got.Services[id]; g == nil && *w != (ServiceCounters{}) || g != nil && *g != *w {
			t.Errorf("service %d: kernel %+v, model %+v", id, g, w)
		}
	}
	for id, w := range want.Backends {
		if g := got.Backends[id]; g == nil && *w != (BackendCounters{}) || g != nil && *g != *w {
			t.Errorf("backend %d: kernel %+v, model %+v", id, g, w)
		}
	}
	if len(got.Tenants) > len(want.Tenants) || len(got.Services) > len(want.Services) || len(got.Backends) > len(want.Backends) {
		t.Errorf("kernel counted ids the model did not: tenants %d/%d services %d/%d backends %d/%d",
			len(got.Tenants), len(want.Tenants), len(got.Services), len(want.Services), len(got.Backends), len(want.Backends))
	}
}

func compareCT(t *testing.T, dp *Dataplane, m *Model) {
	t.Helper()
	got, err := dp.ConntrackEntries()
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(m.CT) {
		t.Errorf("conntrack: kernel has %d entries, model %d", len(got), len(m.CT))
	}
	for k, g := range got {
		if _, ok := m.CT[k]; !ok {
			t.Errorf("conntrack entry %+v in the kernel only: %+v", k, g)
		}
	}
	for k, w := range m.CT {
		g, ok := got[k]
		if !ok {
			t.Errorf("conntrack entry %+v missing in the kernel", k)
			continue
		}
		// Times come from clocks read at different instants, and with them which packet
		// refreshed a cached route; the routes' effect is in the frames compared above.
		w2 := *w
		g.LastSeen, w2.LastSeen = 0, 0
		g.Route, w2.Route = Route{}, Route{}
		if g != w2 {
			t.Errorf("conntrack %+v: kernel %+v, model %+v", k, g, w2)
		}
	}
}
