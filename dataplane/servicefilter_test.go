package dataplane

import (
	"maps"
	"math/rand/v2"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/seed4c/moat/internal/netns"
	"github.com/seed4c/moat/internal/packet"
)

// The filter's contract is "a clear bit means no service": for any sequence of
// service sets, setFilterBits leaves every bit of the old and the new set set (so the
// services published after it, and those still published, all have theirs), and
// clearFilterBits then leaves exactly the new set's bits.
func TestPrivilegedServiceFilterNeverClearsALiveBit(t *testing.T) {
	netns.RequireRoot(t)
	m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 8, MaxEntries: serviceFilterWords})
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
			h := serviceFilterHashRaw(k.TenantId, k.Addr, k.Port, k.Proto)
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

// A fast path opened over maps whose filter lost its bits (pins left by a version
// without the filter) refills it from the services map before any Apply: a service's
// traffic is never taken for traffic to no service.
func TestPrivilegedServiceFilterRefilledOnOpen(t *testing.T) {
	env, dp, _ := smallEnv(t, DefaultConfig())
	want, err := dp.Writer().readMapState()
	if err != nil {
		t.Fatal(err)
	}
	if len(want.filter) == 0 {
		t.Fatal("no filter bit set for the configured services")
	}
	for i := range uint32(serviceFilterWords) {
		if err := dp.objs.ServiceFilter.Put(i, uint64(0)); err != nil {
			t.Fatal(err)
		}
	}
	// With the bits gone, the program takes the service's packets for strays.
	syn := clientFrame(6, 7100, 80, packet.SYN)
	var v Verdict
	if err := env.gw.Do(func() (err error) { v, _, err = TimedRun(dp.Program(), syn, env.ifindex["c1"]); return err }); err != nil {
		t.Fatal(err)
	}
	if v != XDPDrop {
		t.Fatalf("with an empty filter the SYN got %s: the test does not show what the refill fixes", v)
	}
	var again *Dataplane
	if err := env.gw.Do(func() (err error) { again, err = Open(dp.Options()); return err }); err != nil {
		t.Fatal(err)
	}
	defer again.Close()
	got := map[uint32]uint64{}
	if err := readArray(again.objs.ServiceFilter, got); err != nil {
		t.Fatal(err)
	}
	if !maps.Equal(got, want.filter) {
		t.Fatalf("after Open the filter holds %v, want %v", got, want.filter)
	}
	if err := env.gw.Do(func() (err error) { v, _, err = TimedRun(again.Program(), syn, env.ifindex["c1"]); return err }); err != nil {
		t.Fatal(err)
	}
	if v != XDPRedirect {
		t.Fatalf("after Open the SYN got %s, want redirect", v)
	}
}

// The filter saves lookups only if its hash spreads services over its bits. (That the
// Go hash is the program's is shown by every test that reaches a service: the program
// finds the bit the writer set, or drops the packet.)
func TestServiceFilterHashSpreads(t *testing.T) {
	// 4096 services (the default MAX_SERVICES) set at most 4096 of 65536 bits; a hash
	// that clusters would set far fewer distinct bits than a uniform one (about 3,970).
	bitsSet := map[uint32]bool{}
	for i := range uint32(4096) {
		addr := [4]byte{10, 100, byte(i >> 8), byte(i)}
		bitsSet[ServiceFilterHash(1+i%16, addr, 80, 6)] = true
	}
	if len(bitsSet) < 3900 {
		t.Fatalf("4096 services set only %d distinct bits", len(bitsSet))
	}
}
