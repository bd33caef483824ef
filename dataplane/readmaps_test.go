package dataplane

import (
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/seed4c/moat/internal/netns"
	"github.com/seed4c/moat/internal/packet"
)

// readArrayOneByOne is the simple reference readArray is checked against: the map's
// iterator, two system calls per slot (what readArray did before it read in batches).
func readArrayOneByOne[V comparable](m *ebpf.Map, into map[uint32]V) error {
	var (
		i    uint32
		v, z V
	)
	it := m.Iterate()
	for it.Next(&i, &v) {
		if v != z {
			into[i] = v
		}
	}
	return it.Err()
}

// readArray reads a map in batches of mapBatch slots: a slot set at either end of a
// batch, in the last partial batch or in the map's last slot must come back, and no
// zero slot may; random fillings read the same as the reference does.
func TestPrivilegedReadArrayAcrossBatches(t *testing.T) {
	netns.RequireRoot(t)
	const size = 3*mapBatch + 7
	m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 8, MaxEntries: size})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	check := func(want map[uint32]uint64) {
		t.Helper()
		got, ref := map[uint32]uint64{}, map[uint32]uint64{}
		if err := errors.Join(readArray(m, got), readArrayOneByOne(m, ref)); err != nil {
			t.Fatal(err)
		}
		if !maps.Equal(got, want) || !maps.Equal(got, ref) {
			t.Fatalf("read %d slots, want %d, the reference reads %d (%v)", len(got), len(want), len(ref), got)
		}
	}
	want := map[uint32]uint64{}
	for i, k := range []uint32{0, 1, mapBatch - 1, mapBatch, 2*mapBatch + 5, 3 * mapBatch, size - 1} {
		want[k] = uint64(i+1) << 32
		if err := m.Put(k, want[k]); err != nil {
			t.Fatal(err)
		}
	}
	check(want)
	r := rand.New(rand.NewPCG(3, 4))
	for range 20 {
		for range r.IntN(200) {
			k, v := r.Uint32N(size), r.Uint64N(3) // a zero value clears the slot
			if err := m.Put(k, v); err != nil {
				t.Fatal(err)
			}
			if delete(want, k); v != 0 {
				want[k] = v
			}
		}
		check(want)
	}
}

// ReadStatus counts the conntrack entries in batches: with more entries than a batch
// holds it must count every one, as a walk of the map does.
func TestPrivilegedStatusCountsEveryFlow(t *testing.T) {
	env, dp, _ := smallEnv(t, DefaultConfig())
	const flows = mapBatch + 1000 // two entries each: three batches
	err := env.gw.Do(func() error {
		for i := range flows {
			f := packet.Frame{SrcIP: ap("10.0.0.2"), DstIP: ap("10.100.0.1"), Proto: 17,
				SrcPort: uint16(1024 + i), DstPort: 53}.Build()
			if v, _, err := TimedRun(dp.Program(), f, env.ifindex["c1"]); err != nil || v != XDPRedirect {
				return fmt.Errorf("flow %d: verdict %v, %v", i, v, err)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	entries, err := dp.ConntrackEntries()
	if err != nil {
		t.Fatal(err)
	}
	st, err := ReadStatus(dp.Options())
	if err != nil {
		t.Fatal(err)
	}
	if st.Flows != 2*flows || st.Flows != len(entries) {
		t.Fatalf("status counts %d conntrack entries; the map holds %d, want %d", st.Flows, len(entries), 2*flows)
	}
	if len(st.Backends) != 3 {
		t.Fatalf("status lists %d backends, want 3: %+v", len(st.Backends), st.Backends)
	}
	for i := 1; i < len(st.Backends); i++ {
		if st.Backends[i-1].ID >= st.Backends[i].ID {
			t.Fatalf("backends not in id order: %+v", st.Backends)
		}
	}
}

// BenchmarkReadArray: readArray over the backend array (65536 slots) against the
// reference's walk of the same map, in the same run.
//
//	go test -run '^$' -bench ReadArray ./dataplane/
func BenchmarkReadArray(b *testing.B) {
	_, dp, _ := smallEnv(b, DefaultConfig())
	var batched, oneByOne time.Duration
	for b.Loop() {
		start := time.Now()
		if err := readArray(dp.objs.Backends, map[uint32]gatewayBackend{}); err != nil {
			b.Fatal(err)
		}
		mid := time.Now()
		if err := readArrayOneByOne(dp.objs.Backends, map[uint32]gatewayBackend{}); err != nil {
			b.Fatal(err)
		}
		batched, oneByOne = batched+mid.Sub(start), oneByOne+time.Since(mid)
	}
	b.ReportMetric(float64(batched.Microseconds())/float64(b.N), "µs/read")
	b.ReportMetric(float64(oneByOne.Microseconds())/float64(b.N), "reference-µs/read")
	b.ReportMetric(float64(oneByOne)/float64(batched), "x-faster")
}
