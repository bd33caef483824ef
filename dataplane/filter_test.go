package dataplane

import (
	"errors"
	"maps"
	"math/rand/v2"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/seed4c/moat/internal/netns"
	"github.com/seed4c/moat/internal/packet"
)

// A key filter's contract is "a clear bit means no such key": for any sequence of key
// sets, setFilterBits leaves every bit of the old and the new set set (so the keys
// published after it, and those still published, all have theirs), and
// clearFilterBits then leaves exactly the new set's bits.
func TestPrivilegedFilterNeverClearsALiveBit(t *testing.T) {
	netns.RequireRoot(t)
	m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 8, MaxEntries: filterWords})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	r := rand.New(rand.NewPCG(1, 2))
	randomServices := func() map[gatewayServiceKey]gatewayService {
		s := map[gatewayServiceKey]gatewayService{}
		for range r.IntN(300) {
			k := gatewayServiceKey{TenantId: 1 + r.Uint32N(4), Addr: r.Uint32(), Port: uint16(r.Uint32N(4)), Proto: uint8(6 + 11*r.IntN(2))}
			s[k] = gatewayService{Id: 1}
		}
		return s
	}
	read := func() map[uint32]uint64 {
		got := map[uint32]uint64{}
		if err := readArray(m, got); err != nil {
			t.Fatal(err)
		}
		return got
	}
	hasAll := func(words map[uint32]uint64, services map[gatewayServiceKey]gatewayService) bool {
		for k := range services {
			h := filterHashRaw(k.TenantId, k.Addr, k.Port, k.Proto)
			if words[h>>6]&(1<<(h&63)) == 0 {
				return false
			}
		}
		return true
	}
	prevSvcs := map[gatewayServiceKey]gatewayService{}
	prev := serviceFilterOf(prevSvcs)
	for step := range 200 {
		nextSvcs := randomServices()
		if step%3 == 0 { // often a small change of the previous set, as in operation
			nextSvcs = maps.Clone(prevSvcs)
			for k := range randomServices() {
				nextSvcs[k] = gatewayService{Id: 1}
				break
			}
		}
		next := serviceFilterOf(nextSvcs)
		if err := setFilterBits(m, prev, next); err != nil {
			t.Fatal(err)
		}
		mid := read()
		if !hasAll(mid, prevSvcs) || !hasAll(mid, nextSvcs) {
			t.Fatalf("step %d: a bit of the old or the new services is clear between the two writes", step)
		}
		if err := clearFilterBits(m, prev, next); err != nil {
			t.Fatal(err)
		}
		if got := read(); !maps.Equal(got, next) {
			t.Fatalf("step %d: filter holds %d words, want exactly the new set's %d", step, len(got), len(next))
		}
		prevSvcs, prev = nextSvcs, next
	}
}

// A fast path opened over maps whose filters lost their bits (pins left by a version
// without them) refills them from the services and backends maps before any Apply: a
// service's traffic is never taken for traffic to no service, nor a backend's reply
// for a stray.
func TestPrivilegedFiltersRefilledOnOpen(t *testing.T) {
	env, dp, _ := smallEnv(t, DefaultConfig())
	c1, b1 := env.ifindex["c1"], env.ifindex["b1"]
	run := func(d *Dataplane, frame []byte, ifindex uint32) Verdict {
		t.Helper()
		var v Verdict
		if err := env.gw.Do(func() (err error) { v, _, err = TimedRun(d.Program(), frame, ifindex); return err }); err != nil {
			t.Fatal(err)
		}
		return v
	}
	// A flow established before the bits are lost, and its reply.
	if v := run(dp, clientFrame(6, 7100, 80, packet.SYN), c1); v != XDPRedirect {
		t.Fatalf("SYN got %s", v)
	}
	var reply []byte
	cts, err := dp.ConntrackEntries()
	if err != nil {
		t.Fatal(err)
	}
	for k := range cts {
		if k.Dir == CTDirReply && k.Dport == 7100 {
			reply = packet.Frame{SrcIP: netip.AddrFrom4(k.Saddr), DstIP: ap("10.0.0.2"), Proto: 6, SrcPort: k.Sport, DstPort: 7100, TCPFlags: packet.SYN | packet.ACK}.Build()
		}
	}
	if reply == nil {
		t.Fatal("no reply entry for the flow")
	}
	want, err := dp.Writer().readMapState()
	if err != nil {
		t.Fatal(err)
	}
	if len(want.serviceFilter) == 0 || len(want.backendFilter) == 0 {
		t.Fatal("no filter bit set for the configured services and backends")
	}
	for i := range uint32(filterWords) {
		if err := errors.Join(dp.objs.ServiceFilter.Put(i, uint64(0)), dp.objs.BackendFilter.Put(i, uint64(0))); err != nil {
			t.Fatal(err)
		}
	}
	// With the bits gone, the program takes the service's packets and the backend's
	// replies for strays: what the refill must prevent.
	syn := clientFrame(6, 7101, 80, packet.SYN)
	if v := run(dp, syn, c1); v != XDPDrop {
		t.Fatalf("with empty filters a SYN got %s: the test does not show what the refill fixes", v)
	}
	if v := run(dp, reply, b1); v != XDPDrop {
		t.Fatalf("with empty filters a reply got %s: the test does not show what the refill fixes", v)
	}
	again, got := reopen(t, env, dp)
	if !maps.Equal(got.serviceFilter, want.serviceFilter) || !maps.Equal(got.backendFilter, want.backendFilter) {
		t.Fatalf("after Open the filters hold %v and %v, want %v and %v", got.serviceFilter, got.backendFilter, want.serviceFilter, want.backendFilter)
	}
	if v := run(again, syn, c1); v != XDPRedirect {
		t.Fatalf("after Open a SYN got %s, want redirect", v)
	}
	if v := run(again, reply, b1); v != XDPRedirect {
		t.Fatalf("after Open the reply got %s, want redirect", v)
	}
}

// A filter saves lookups only if its hash spreads keys over its bits. (That the Go hash
// is the program's is shown by every test that reaches a service or gets a reply: the
// program finds the bits the writer set, or drops the packet.)
func TestFilterHashSpreads(t *testing.T) {
	// 4096 keys (the default MAX_SERVICES) set at most 4096 of 65536 bits; a uniform
	// hash sets about 3,971 distinct ones (65536 * (1 - e^(-1/16))), give or take 12.
	// Keys as operators make them are structured: the same addresses in every tenant
	// (overlapping address spaces), many ports of one address, consecutive addresses.
	sets := map[string]func(i uint32) (uint32, [4]byte, uint16){
		"services of 16 tenants":         func(i uint32) (uint32, [4]byte, uint16) { return 1 + i%16, [4]byte{10, 100, byte(i >> 8), byte(i)}, 80 },
		"16 tenants, the same addresses": func(i uint32) (uint32, [4]byte, uint16) { return 1 + i%16, [4]byte{10, 0, 0, byte(i / 16)}, 80 },
		"ports of one address":           func(i uint32) (uint32, [4]byte, uint16) { return 1, [4]byte{10, 0, 0, 1}, uint16(1024 + i) },
		"addresses times ports": func(i uint32) (uint32, [4]byte, uint16) {
			return 1 + i%4, [4]byte{10, 1, byte(i >> 6), 0}, uint16(8000 + i%64)
		},
		"one tenant's /20": func(i uint32) (uint32, [4]byte, uint16) { return 1, [4]byte{172, 16, byte(i >> 8), byte(i)}, 443 },
	}
	for name, key := range sets {
		bitsSet := map[uint32]bool{}
		for i := range uint32(4096) {
			tn, addr, port := key(i)
			h := FilterHash(tn, addr, port, 6)
			if h >= filterWords*64 {
				t.Fatalf("%s: hash %d beyond the filter's %d bits", name, h, filterWords*64)
			}
			bitsSet[h] = true
		}
		if len(bitsSet) < 3900 {
			t.Errorf("%s: 4096 keys set only %d distinct bits", name, len(bitsSet))
		}
	}
}

// A fast path opened over filters that hold bits of no key (pins left by a version
// with another filter hash) keeps them, which only costs lookups, until its next
// Apply: that clears them, even when the configuration is unchanged.
func TestPrivilegedStaleFilterBitsClearedByNextApply(t *testing.T) {
	env, dp, compiled := smallEnv(t, DefaultConfig())
	want, err := dp.Writer().readMapState()
	if err != nil {
		t.Fatal(err)
	}
	// A stale bit in a word no key uses, and one beside a live bit.
	var empty, shared uint32
	for i := range uint32(filterWords) {
		if want.serviceFilter[i] == 0 {
			empty = i
			break
		}
	}
	for i, w := range want.serviceFilter {
		if w != ^uint64(0) {
			shared = i
			break
		}
	}
	spare := uint64(1)
	for want.serviceFilter[shared]&spare != 0 {
		spare <<= 1
	}
	if err := errors.Join(dp.objs.ServiceFilter.Put(empty, uint64(1)<<7),
		dp.objs.ServiceFilter.Put(shared, want.serviceFilter[shared]|spare),
		dp.objs.BackendFilter.Put(empty, uint64(1)<<9)); err != nil {
		t.Fatal(err)
	}
	again, got := reopen(t, env, dp)
	if got.serviceFilter[empty] == 0 || got.serviceFilter[shared]&spare == 0 || got.backendFilter[empty] == 0 {
		t.Fatal("Open cleared bits: it must only set them (the running program may still need them)")
	}
	if err := again.Writer().Apply(compiled); err != nil {
		t.Fatal(err)
	}
	got, err = again.Writer().readMapState()
	if err != nil {
		t.Fatal(err)
	}
	if !maps.Equal(got.serviceFilter, want.serviceFilter) || !maps.Equal(got.backendFilter, want.backendFilter) {
		t.Fatalf("after Apply the filters hold %v and %v, want exactly the keys' bits %v and %v",
			got.serviceFilter, got.backendFilter, want.serviceFilter, want.backendFilter)
	}
}

// reopen opens the fast path again over dp's pins, as a restarted daemon does, and
// returns it (closed with the test) with the state it reads from the maps.
func reopen(t *testing.T, env *gwEnv, dp *Dataplane) (*Dataplane, *mapState) {
	t.Helper()
	var again *Dataplane
	if err := env.gw.Do(func() (err error) { again, err = Open(dp.Options()); return err }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { again.Close() })
	got, err := again.Writer().readMapState()
	if err != nil {
		t.Fatal(err)
	}
	return again, got
}

// The host filter answers "no host service" for strays with an array load, and never
// for a listed service: SetHostServices leaves exactly the listed services' bits, the
// program consults them (a listed service whose bit is lost is dropped) but decides by
// the hash (a stray whose bit is set by another key is still dropped), and Open refills
// bits that pins lost.
func TestPrivilegedHostFilter(t *testing.T) {
	env, dp, _ := smallEnv(t, DefaultConfig())
	c1, b1 := env.ifindex["c1"], env.ifindex["b1"]
	run := func(d *Dataplane, frame []byte) Verdict {
		t.Helper()
		var v Verdict
		if err := env.gw.Do(func() (err error) { v, _, err = TimedRun(d.Program(), frame, c1); return err }); err != nil {
			t.Fatal(err)
		}
		return v
	}
	frameTo := func(port uint16) []byte {
		return packet.Frame{SrcIP: ap("10.0.0.2"), DstIP: ap("10.0.0.1"), Proto: 6, SrcPort: 40000, DstPort: port, TCPFlags: packet.SYN}.Build()
	}
	verifier := HostService{Ifindex: c1, Addr: ap("10.0.0.1"), Port: 8443, Proto: protoTCP}
	other := HostService{Ifindex: b1, Addr: ap("10.1.0.254"), Port: 9000, Proto: protoUDP}
	filterOf := func(hs ...HostService) map[uint32]uint64 {
		keys := map[gatewayHostServiceKey]uint32{}
		for _, h := range hs {
			k, err := h.key()
			if err != nil {
				t.Fatal(err)
			}
			keys[k] = 1
		}
		return hostFilterOf(keys)
	}
	read := func() map[uint32]uint64 {
		got := map[uint32]uint64{}
		if err := readArray(dp.objs.HostFilter, got); err != nil {
			t.Fatal(err)
		}
		return got
	}
	if err := dp.Writer().SetHostServices([]HostService{verifier, other}); err != nil {
		t.Fatal(err)
	}
	want := filterOf(verifier, other)
	if got := read(); len(want) == 0 || !maps.Equal(got, want) {
		t.Fatalf("host filter holds %v, want the two services' bits %v", got, want)
	}
	if v := run(dp, frameTo(8443)); v != XDPPass {
		t.Fatalf("a listed host service got %s, want pass", v)
	}
	if v := run(dp, frameTo(8444)); v != XDPDrop {
		t.Fatalf("a port that is no host service got %s, want drop", v)
	}

	// A stray whose bit another key set: the hash lookup still refuses it.
	h := filterHashRaw(c1, addrRaw(ap("10.0.0.1")), portRaw(8444), protoTCP)
	if err := dp.objs.HostFilter.Put(h>>6, want[h>>6]|1<<(h&63)); err != nil {
		t.Fatal(err)
	}
	if v := run(dp, frameTo(8444)); v != XDPDrop {
		t.Fatalf("a stray with its filter bit set got %s, want drop", v)
	}

	// The program reads the filter: with the bits lost, the listed service is taken
	// for a stray; Open puts them back.
	for i := range uint32(filterWords) {
		if err := dp.objs.HostFilter.Put(i, uint64(0)); err != nil {
			t.Fatal(err)
		}
	}
	if v := run(dp, frameTo(8443)); v != XDPDrop {
		t.Fatalf("with the filter empty a listed host service got %s: the program does not consult the filter", v)
	}
	again, _ := reopen(t, env, dp)
	got := map[uint32]uint64{}
	if err := readArray(again.objs.HostFilter, got); err != nil {
		t.Fatal(err)
	}
	if !maps.Equal(got, want) {
		t.Fatalf("after Open the host filter holds %v, want %v", got, want)
	}
	if v := run(again, frameTo(8443)); v != XDPPass {
		t.Fatalf("after Open a listed host service got %s, want pass", v)
	}

	// A service that goes loses its bit, one that stays keeps it.
	if err := again.Writer().SetHostServices([]HostService{other}); err != nil {
		t.Fatal(err)
	}
	if got := read(); !maps.Equal(got, filterOf(other)) {
		t.Fatalf("after removing a host service the filter holds %v, want %v", got, filterOf(other))
	}
	if v := run(again, frameTo(8443)); v != XDPDrop {
		t.Fatalf("a removed host service got %s, want drop", v)
	}
}
