package tenant

import (
	"encoding/json"
	"fmt"
	"maps"
	"math/rand/v2"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/seed4c/moat/lb"
)

// TestIDsRecompileIdentical: compiling the same configuration again with the previous
// ids gives the same output, ids and cursors included.
func TestIDsRecompileIdentical(t *testing.T) {
	first := mustCompile(t, baseConfig(), IDs{}, DefaultLimits())
	second := mustCompile(t, baseConfig(), first.IDs, DefaultLimits())
	if !reflect.DeepEqual(first, second) {
		t.Errorf("recompiling changed the output:\nfirst ids  %s\nsecond ids %s",
			sortedIDs(first.IDs.Backends), sortedIDs(second.IDs.Backends))
	}
	// Ids do not depend on where things appear in the configuration once they exist.
	shuffled := baseConfig()
	slices.Reverse(shuffled.Tenants)
	slices.Reverse(shuffled.Tenants[1].Services)
	slices.Reverse(shuffled.Tenants[1].Services[1].Backends)
	third := mustCompile(t, shuffled, first.IDs, DefaultLimits())
	if !reflect.DeepEqual(third.IDs, first.IDs) {
		t.Errorf("reordering the configuration changed ids:\n got %+v\nwant %+v", third.IDs, first.IDs)
	}
}

// TestIDsSurviveEdits: adding and removing tenants, services and backends leaves the
// ids of everything else alone, and new things get ids nothing ever had.
func TestIDsSurviveEdits(t *testing.T) {
	first := mustCompile(t, baseConfig(), IDs{}, DefaultLimits())
	// a: 1 (web 1: w1..w4 = 1..4, dns 2: d1 = 5), b: 2 (web 3: v1 = 6).
	cfg := baseConfig()
	cfg.Tenants[0].Services[0].Backends = slices.Delete(cfg.Tenants[0].Services[0].Backends, 1, 2) // w2 gone
	cfg.Tenants[0].Services = cfg.Tenants[0].Services[:1]                                          // dns gone
	cfg.Tenants[0].Rules = []Rule{{Sources: pfxs("10.0.0.0/24"), Services: []string{AllServices}}}
	cfg.Tenants = append([]Tenant{{Name: "c", Services: []Service{{Name: "s", VIP: addr("10.100.0.1"), Port: 80, Protocol: TCP,
		Backends: []Backend{backend("n1", "10.1.0.1", 0, 1, lb.StateAdmitted)}}}}}, cfg.Tenants...)
	cfg.Tenants[1].Services[0].Backends = append(cfg.Tenants[1].Services[0].Backends, backend("w5", "10.1.0.5", 0, 1, lb.StateAdmitted))
	second := mustCompile(t, cfg, first.IDs, DefaultLimits())

	for _, k := range []struct {
		kind        string
		before, now map[string]uint32
	}{{"tenant", first.IDs.Tenants, second.IDs.Tenants}, {"service", first.IDs.Services, second.IDs.Services}, {"backend", first.IDs.Backends, second.IDs.Backends}} {
		old := map[uint32]bool{}
		for _, id := range k.before {
			old[id] = true
		}
		for key, id := range k.now {
			if was, ok := k.before[key]; ok && was != id {
				t.Errorf("%s %s: id %d became %d", k.kind, key, was, id)
			}
			if _, ok := k.before[key]; !ok && old[id] {
				t.Errorf("new %s %s got id %d, which the previous compilation used", k.kind, key, id)
			}
		}
	}
	wantNew := map[string]uint32{"tenant c": 3, "service c/s": 4, "backend c/s/n1": 7, "backend a/web/w5": 8}
	got := map[string]uint32{
		"tenant c": second.IDs.Tenants["c"], "service c/s": second.IDs.Services["c/s"],
		"backend c/s/n1": second.IDs.Backends["c/s/n1"], "backend a/web/w5": second.IDs.Backends["a/web/w5"],
	}
	if !reflect.DeepEqual(got, wantNew) {
		t.Errorf("new ids %v, want %v (the next never-used ones)", got, wantNew)
	}
	if _, ok := second.IDs.Backends["a/web/w2"]; ok {
		t.Errorf("removed backend a/web/w2 still has an id")
	}
	if _, ok := second.IDs.Services["a/dns"]; ok {
		t.Errorf("removed service a/dns still has an id")
	}
}

// TestIDsFreedNotReused: an id freed by one compilation is not handed to something new
// by the next one, nor by any later one, while some id was never used.
func TestIDsFreedNotReused(t *testing.T) {
	step := (&backendHistory{t: t, limits: DefaultLimits()}).step
	step("x1", "x2", "x3") // 1, 2, 3
	step("x1", "x3")       // 2 freed
	got := step("x1", "x3", "y")
	if got["t/s/y"] != 4 {
		t.Errorf("y got id %d right after id 2 was freed; want 4", got["t/s/y"])
	}
	got = step("x1", "x3", "y", "z") // 2 freed two compilations ago
	if got["t/s/z"] != 5 {
		t.Errorf("z got id %d; want 5: id 2 must not come back while never-used ids remain", got["t/s/z"])
	}
	got = step("x1", "x2", "x3", "y", "z") // x2 again: a new thing, a new id
	if got["t/s/x2"] != 6 {
		t.Errorf("re-added x2 got id %d, want 6", got["t/s/x2"])
	}
}

// TestIDsReuseOnlyWhenExhausted: with every id used once, freed ids come back, those
// free for longest first, and an id the previous compilation held is taken last.
func TestIDsReuseOnlyWhenExhausted(t *testing.T) {
	limits := DefaultLimits()
	limits.MaxBackends = 5 // ids 1..4
	step := (&backendHistory{t: t, limits: limits}).step
	step("a", "b", "c", "d")   // 1 2 3 4: every id used
	step("b", "c", "d")        // 1 freed
	got := step("c", "d", "e") // 2 freed now, 1 free for longer: e takes 1
	if got["t/s/e"] != 1 {
		t.Errorf("e got %d, want 1 (free since the previous compilation, not held by it)", got["t/s/e"])
	}
	got = step("c", "d", "e", "f") // 2 is the only id left, and not held by the previous compilation
	if got["t/s/f"] != 2 {
		t.Errorf("f got %d, want 2, the only id left", got["t/s/f"])
	}
	// All four held; removing one and adding one in the same compilation must reuse it.
	got = step("c", "d", "e", "g")
	if got["t/s/g"] != 2 {
		t.Errorf("g got %d, want 2: the id f held is the only one left", got["t/s/g"])
	}
}

// backendHistory compiles generation after generation of one service "t/s", each
// with the previous generation's ids.
type backendHistory struct {
	t      *testing.T
	limits Limits
	ids    IDs
}

// step compiles the service with the named backends and returns the backend ids.
func (h *backendHistory) step(backends ...string) map[string]uint32 {
	h.t.Helper()
	s := Service{Name: "s", VIP: addr("10.100.0.1"), Port: 80, Protocol: TCP, MaglevSize: 1021}
	for i, b := range backends {
		s.Backends = append(s.Backends, backend(b, fmt.Sprintf("10.1.0.%d", i+1), 0, 1, lb.StateAdmitted))
	}
	c := mustCompile(h.t, Config{Tenants: []Tenant{{Name: "t", Services: []Service{s}}}}, h.ids, h.limits)
	if err := checkCompiled(c, h.limits); err != nil {
		h.t.Fatal(err)
	}
	h.ids = c.IDs
	return c.IDs.Backends
}

// TestIDsExhausted: when there is no id left at all, Compile says which thing did not
// get one and what the limit is.
func TestIDsExhausted(t *testing.T) {
	limits := DefaultLimits()
	limits.MaxBackends = 4
	cfg := baseConfig() // six backends
	_, err := Compile(cfg, testIfaces, IDs{}, limits)
	want := []string{
		`tenant "a": service "web": backend "w4": no backend id left: the fast path holds at most 3 backends`,
		`tenant "a": service "dns": backend "d1": no backend id left: the fast path holds at most 3 backends`,
		`tenant "b": service "web": backend "v1": no backend id left: the fast path holds at most 3 backends`,
	}
	if ps := problems(err); !slices.Equal(ps, want) {
		t.Errorf("problems\n\t%s\nwant\n\t%s", strings.Join(ps, "\n\t"), strings.Join(want, "\n\t"))
	}
	// An id kept from a compilation with larger limits does not fit smaller ones.
	c := mustCompile(t, cfg, IDs{}, DefaultLimits())
	limits = DefaultLimits()
	limits.MaxServices = 3
	_, err = Compile(cfg, testIfaces, c.IDs, limits)
	if ps := problems(err); len(ps) != 1 || !strings.Contains(ps[0], `tenant "b": service "web": service id 3 (kept from the previous compilation) does not fit the fast path's limit of 3`) {
		t.Errorf("problems %q: want one saying b/web's id 3 does not fit", ps)
	}
}

// TestIDsFromDamagedPrevious: previous ids that are 0, shared by two keys, beyond the
// cursor or without a cursor at all still give unique, non-zero ids.
func TestIDsFromDamagedPrevious(t *testing.T) {
	prev := IDs{
		Tenants:  map[string]uint32{"a": 0, "b": 9},
		Services: map[string]uint32{"a/web": 4, "a/dns": 4, "b/web": 4},
		Backends: map[string]uint32{"a/web/w1": 7, "a/web/w2": 7, "b/web/v1": 1},
		// Next is zero: ids written before there was a cursor.
	}
	c := mustCompile(t, baseConfig(), prev, DefaultLimits())
	if err := checkCompiled(c, DefaultLimits()); err != nil {
		t.Fatal(err)
	}
	// The first key in configuration order keeps a shared id, the others get new ones
	// above every id held.
	want := IDs{
		Tenants:  map[string]uint32{"a": 10, "b": 9},
		Services: map[string]uint32{"a/web": 4, "a/dns": 5, "b/web": 6},
		Backends: map[string]uint32{"a/web/w1": 7, "a/web/w2": 8, "a/web/w3": 9, "a/web/w4": 10, "a/dns/d1": 11, "b/web/v1": 1},
		Next:     NextIDs{Tenant: 11, Service: 7, Backend: 12},
	}
	if !reflect.DeepEqual(c.IDs, want) {
		t.Errorf("ids\n got %+v\nwant %+v", c.IDs, want)
	}
}

// TestIDsRandomHistory edits a random configuration at random over many generations,
// compiling each with the previous generation's ids, and checks that:
//   - what survives a generation keeps its ids;
//   - ids never collide within a compilation, and stay within the limits;
//   - a new thing gets an id that was never used while such ids remain, and an id the
//     previous generation held only when no other is free.
//
// It runs once with roomy limits and once with limits tight enough to wrap around.
func TestIDsRandomHistory(t *testing.T) {
	roomy := DefaultLimits()
	tight := Limits{MaxTenants: 7, MaxServices: 13, MaxBackends: 41, MaxAttachments: 64, MaxPolicy: 1024}
	for _, tc := range []struct {
		name   string
		limits Limits
		gens   int
	}{{"roomy", roomy, 300}, {"tight", tight, 600}} {
		t.Run(tc.name, func(t *testing.T) {
			seed := rand.Uint64()
			t.Logf("seed %d", seed)
			w := newWorld(rand.New(rand.NewPCG(seed, 2)), tc.limits)
			var prev IDs
			everUsed := [3]map[uint32]bool{{}, {}, {}}
			reused, reheld := 0, 0 // new things given an id used before / held by the previous generation
			for gen := range tc.gens {
				for range 1 + w.r.IntN(6) {
					w.edit()
				}
				cfg := w.config()
				c, err := Compile(cfg, testIfaces, prev, tc.limits)
				if err != nil {
					t.Fatalf("generation %d: %v", gen, err)
				}
				if err := checkCompiled(c, tc.limits); err != nil {
					t.Fatalf("generation %d: %v", gen, err)
				}
				for k, tr := range idTransitions(prev, c.IDs, tc.limits) {
					ru, rh, err := tr.check(everUsed[k])
					if err != nil {
						t.Fatalf("generation %d: %v", gen, err)
					}
					reused, reheld = reused+ru, rh+reheld
					for _, id := range tr.now {
						everUsed[k][id] = true
					}
				}
				prev = c.IDs
			}
			t.Logf("%d generations; ids used: %d tenants, %d services, %d backends; now %d/%d/%d; %d ids reused, %d of them held by the generation before",
				tc.gens, len(everUsed[0]), len(everUsed[1]), len(everUsed[2]), len(prev.Tenants), len(prev.Services), len(prev.Backends), reused, reheld)
		})
	}
}

// idTransition is the ids of one kind before and after a compilation.
type idTransition struct {
	kind        string
	before, now map[string]uint32
	limit       uint32
}

func idTransitions(before, now IDs, l Limits) []idTransition {
	return []idTransition{
		{"tenant", before.Tenants, now.Tenants, l.MaxTenants},
		{"service", before.Services, now.Services, l.MaxServices},
		{"backend", before.Backends, now.Backends, l.MaxBackends},
	}
}

// check verifies the id guarantees over one compilation: a key in both keeps its id; a
// new key takes an id held before the compilation only if no other id was free; and,
// given everUsed (the ids any earlier compilation gave out), one used before only once
// every id has been used. It counts the new keys given an id used before, and those
// given one held before.
func (tr idTransition) check(everUsed map[uint32]bool) (reused, reheld int, err error) {
	held, taken := map[uint32]bool{}, map[uint32]bool{}
	for _, id := range tr.before {
		held[id] = true
	}
	for _, id := range tr.now {
		taken[id] = true
	}
	for key, id := range tr.now {
		if was, ok := tr.before[key]; ok {
			if was != id {
				return 0, 0, fmt.Errorf("%s %s changed id %d → %d", tr.kind, key, was, id)
			}
			continue
		}
		if everUsed[id] {
			reused++
			if !coversAll(tr.limit, everUsed, taken) {
				return 0, 0, fmt.Errorf("new %s %s got id %d, used before, while ids never used remain", tr.kind, key, id)
			}
		}
		if held[id] {
			reheld++
			if !coversAll(tr.limit, held, taken) {
				return 0, 0, fmt.Errorf("new %s %s got id %d, held by the previous compilation, while another was free", tr.kind, key, id)
			}
		}
	}
	return reused, reheld, nil
}

// coversAll reports whether every id below limit is in a or b.
func coversAll(limit uint32, a, b map[uint32]bool) bool {
	for i := uint32(1); i < limit; i++ {
		if !a[i] && !b[i] {
			return false
		}
	}
	return true
}

// world is a random configuration that edits itself, always staying valid and within
// its limits, with names from small pools so that removed names come back.
type world struct {
	r       *rand.Rand
	limits  Limits
	tenants map[string]map[string]map[string]lb.State // tenant → service → backend → state
	order   []string                                  // tenant order in the configuration
}

func newWorld(r *rand.Rand, limits Limits) *world {
	return &world{r: r, limits: limits, tenants: map[string]map[string]map[string]lb.State{}}
}

func (w *world) counts() (tenants, services, backends int) {
	for _, ss := range w.tenants {
		tenants++
		for _, bs := range ss {
			services++
			backends += len(bs)
		}
	}
	return
}

func pick[V any](r *rand.Rand, m map[string]V) (string, bool) {
	if len(m) == 0 {
		return "", false
	}
	keys := slices.Sorted(maps.Keys(m))
	return keys[r.IntN(len(keys))], true
}

func (w *world) edit() {
	nt, ns, nb := w.counts()
	tn, hasT := pick(w.r, w.tenants)
	var (
		sn   string
		hasS bool
	)
	if hasT {
		sn, hasS = pick(w.r, w.tenants[tn])
	}
	switch op := w.r.IntN(8); {
	case op == 0 && uint32(nt) < w.limits.MaxTenants-1:
		name := fmt.Sprintf("t%d", w.r.IntN(12))
		if _, ok := w.tenants[name]; !ok {
			w.tenants[name] = map[string]map[string]lb.State{}
			w.order = append(w.order, name)
		}
	case op == 1 && hasT && w.r.IntN(5) == 0:
		delete(w.tenants, tn)
		w.order = slices.DeleteFunc(w.order, func(s string) bool { return s == tn })
	case op == 2 && hasT && uint32(ns) < w.limits.MaxServices-1:
		name := fmt.Sprintf("s%d", w.r.IntN(6))
		if _, ok := w.tenants[tn][name]; !ok {
			w.tenants[tn][name] = map[string]lb.State{}
		}
	case op == 3 && hasS && w.r.IntN(3) == 0:
		delete(w.tenants[tn], sn)
	case (op == 4 || op == 5) && hasS && uint32(nb) < w.limits.MaxBackends-1 && len(w.tenants[tn][sn]) < 16:
		w.tenants[tn][sn][fmt.Sprintf("b%d", w.r.IntN(20))] = lb.State(w.r.IntN(3))
	case op == 6 && hasS:
		if bn, ok := pick(w.r, w.tenants[tn][sn]); ok {
			delete(w.tenants[tn][sn], bn)
		}
	case op == 7 && hasS:
		if bn, ok := pick(w.r, w.tenants[tn][sn]); ok {
			w.tenants[tn][sn][bn] = lb.State(w.r.IntN(3)) // a state change never moves an id
		}
		w.r.Shuffle(len(w.order), func(i, j int) { w.order[i], w.order[j] = w.order[j], w.order[i] })
	}
}

// config renders the world; services and backends appear in a random order too.
func (w *world) config() Config {
	var cfg Config
	for ti, tn := range w.order {
		t := Tenant{Name: tn}
		if ti < 4 {
			t.Attachments = []Attachment{{Interface: fmt.Sprintf("eth%d", ti)}}
		}
		svcs := shuffledKeys(w, w.tenants[tn])
		for _, sn := range svcs {
			var si int
			fmt.Sscanf(sn, "s%d", &si)
			s := Service{Name: sn, VIP: addr("10.100.0.1"), Port: uint16(1000 + si), Protocol: TCP, MaglevSize: 1031}
			for _, bn := range shuffledKeys(w, w.tenants[tn][sn]) {
				var bi int
				fmt.Sscanf(bn, "b%d", &bi)
				s.Backends = append(s.Backends, Backend{
					Name: bn, Addr: addr(fmt.Sprintf("10.1.0.%d", bi+1)), Weight: uint32(1 + bi%3), State: w.tenants[tn][sn][bn],
				})
			}
			t.Services = append(t.Services, s)
		}
		if len(svcs) > 0 {
			t.Rules = []Rule{{Sources: pfxs("10.0.0.0/8"), Services: []string{AllServices}}}
		}
		cfg.Tenants = append(cfg.Tenants, t)
	}
	return cfg
}

// shuffledKeys returns m's keys in an order drawn from w's source only.
func shuffledKeys[V any](w *world, m map[string]V) []string {
	keys := slices.Sorted(maps.Keys(m))
	w.r.Shuffle(len(keys), func(i, j int) { keys[i], keys[j] = keys[j], keys[i] })
	return keys
}

// TestIDsJSON: IDs stored as JSON (with the configuration) and read back carry the
// cursor, so the order of new ids survives a restart of the control plane.
func TestIDsJSON(t *testing.T) {
	h := &backendHistory{t: t, limits: DefaultLimits()}
	h.step("x1", "x2", "x3")
	h.step("x1") // 2 and 3 freed: the cursor, not the ids held, remembers them
	data, err := json.Marshal(h.ids)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(data), `"next":{"tenant":2,"service":2,"backend":4}`) {
		t.Errorf("stored ids %s lack the cursor", data)
	}
	var back IDs
	if err := json.Unmarshal(data, &back); err != nil {
		t.Fatal(err)
	}
	h.ids = back
	if got := h.step("x1", "y"); got["t/s/y"] != 4 {
		t.Errorf("after a JSON round trip, y got id %d; want 4", got["t/s/y"])
	}
}
