package reconcile

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/seed4c/moat/attest"
	"github.com/seed4c/moat/controlapi/kv"
	"github.com/seed4c/moat/controlapi/state"
	"github.com/seed4c/moat/lb"
	"github.com/seed4c/moat/tenant"
)

var testIfaces = tenant.StaticInterfaces{"eth0": 2}

// fakeApplier records what it is given; fail makes the next Apply fail, and onApply
// runs in Apply. It is an Evicter: evicted lists the ids of each Evict call, and
// onEvict runs in it; Evicted returns pinned, the ids a previous run left evicted.
type fakeApplier struct {
	mu      sync.Mutex
	last    *tenant.Compiled
	count   int
	fail    bool
	evicted [][]uint32
	onEvict func()
	onApply func()
	pinned  []uint32
}

func (f *fakeApplier) Evicted() ([]uint32, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.pinned), nil
}

func (f *fakeApplier) Evict(ids []uint32) error {
	f.mu.Lock()
	f.evicted = append(f.evicted, slices.Clone(ids))
	hook := f.onEvict
	f.mu.Unlock()
	if hook != nil {
		hook()
	}
	return nil
}

func (f *fakeApplier) evictions() [][]uint32 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.evicted)
}

func (f *fakeApplier) id(name string) uint32 {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, b := range f.last.Backends {
		if b.Name == name {
			return b.ID
		}
	}
	return 0
}

// applyOnly is an Applier that is no Evicter.
type applyOnly struct{ f *fakeApplier }

func (a applyOnly) Apply(c *tenant.Compiled) error { return a.f.Apply(c) }

func (f *fakeApplier) Apply(c *tenant.Compiled) error {
	f.mu.Lock()
	hook := f.onApply
	f.mu.Unlock()
	if hook != nil {
		hook()
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail {
		f.fail = false
		return errors.New("map full")
	}
	f.last, f.count = c, f.count+1
	return nil
}

func (f *fakeApplier) state(name string) (lb.State, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.last == nil {
		return 0, false
	}
	for _, b := range f.last.Backends {
		if b.Name == name {
			return b.State, true
		}
	}
	return 0, false
}

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time          { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration)     { c.mu.Lock(); c.t = c.t.Add(d); c.mu.Unlock() }
func newClock() *clock                   { return &clock{t: time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)} }
func second[T any](_ T, err error) error { return err }

const digest = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"

// setup: tenant a, service web (min trust allow-listed), backends w1 (host h1) and w2
// (host h2, EK pinned), policy app.
func setup(t *testing.T, kvs kv.Store, c *clock) (*state.Store, *Reconciler, *fakeApplier) {
	t.Helper()
	st := state.New(kvs, func(cfg tenant.Config) error {
		return tenant.Validate(cfg, testIfaces, tenant.IDs{}, tenant.DefaultLimits())
	}, c.now)
	if _, err := st.GetTenant("a"); errors.Is(err, state.ErrNotFound) {
		for _, err := range []error{
			second(st.CreateTenant(state.Tenant{Name: "a", Attachments: []tenant.Attachment{{Interface: "eth0"}}})),
			second(st.CreateService(state.Service{Tenant: "a", Name: "web", VIP: netip.MustParseAddr("10.100.0.1"), Port: 80,
				Protocol: tenant.TCP, MaglevSize: 251, MinTrust: attest.TrustAllowListed})),
			second(st.CreatePolicy(state.Policy{Tenant: "a", Name: "app", References: map[string][]string{"/srv/app": {digest}}})),
			second(st.CreateBackend(state.Backend{Tenant: "a", Service: "web", Name: "w1", Identity: "h1",
				Addr: netip.MustParseAddr("10.1.0.1"), Weight: 1, Policy: "app"})),
			second(st.CreateBackend(state.Backend{Tenant: "a", Service: "web", Name: "w2", Identity: "h2",
				Addr: netip.MustParseAddr("10.1.0.2"), Weight: 1, Policy: "app", EKSHA256: digest})),
		} {
			if err != nil {
				t.Fatal(err)
			}
		}
	}
	ids, _ := st.LoadIDs()
	app := &fakeApplier{}
	r, err := New(Config{State: st, Compiler: tenant.NewCompiler(testIfaces, tenant.DefaultLimits(), ids), Applier: app, Clock: c.now,
		Enrolled: func(s string) bool { return s == "a/h2" }})
	if err != nil {
		t.Fatal(err)
	}
	return st, r, app
}

func affirming(subject string, c *clock, ttl time.Duration, trust attest.TrustLevel) attest.Result {
	return attest.Result{Subject: subject, Status: attest.StatusAffirming, TrustLevel: trust, Policy: "a/app",
		Issued: c.now(), Expires: c.now().Add(ttl)}
}

func pass(t *testing.T, r *Reconciler) time.Time {
	t.Helper()
	due, err := r.Pass()
	if err != nil {
		t.Fatal(err)
	}
	return due
}

func TestAdmissionFollowsAttestation(t *testing.T) {
	c := newClock()
	st, r, app := setup(t, kv.NewMem(), c)
	pass(t, r)
	if s, _ := app.state("w1"); s != lb.StateEvicted {
		t.Fatalf("unattested backend in the fast path as %s", s)
	}
	if got := r.BackendStatus("a", "web", "w1").State; got != state.StateRegistered {
		t.Fatalf("w1 before its agent: %s", got)
	}
	if got := r.BackendStatus("a", "web", "w2").State; got != state.StateAttesting {
		t.Fatalf("w2 enrolled, no quote: %s", got)
	}

	r.Notify(affirming("a/h1", c, 6*time.Second, attest.TrustAllowListed))
	due := pass(t, r)
	if s, _ := app.state("w1"); s != lb.StateAdmitted {
		t.Fatalf("affirmed backend not admitted: %s", s)
	}
	if !due.Equal(c.now().Add(6 * time.Second)) {
		t.Fatalf("next pass due %v, want the result's expiry", due)
	}

	// A failed round evicts at once, with the verifier's reasons.
	c.add(time.Second)
	r.Notify(attest.Result{Subject: "a/h1", Status: attest.StatusContraindicated, Reasons: []string{"reference-value: /srv/app digest 00"}, Issued: c.now(), Expires: c.now()})
	pass(t, r)
	if s, _ := app.state("w1"); s != lb.StateEvicted {
		t.Fatalf("contraindicated backend still %s", s)
	}
	bs := r.BackendStatus("a", "web", "w1")
	if bs.State != state.StateEvicted || !strings.Contains(bs.Reason, "reference-value") || !bs.Since.Equal(c.now()) {
		t.Fatalf("status after eviction: %+v", bs)
	}

	// Refused submissions (someone else's garbage in h1's name) change nothing.
	r.Notify(affirming("a/h1", c, 6*time.Second, attest.TrustAllowListed))
	pass(t, r)
	r.Notify(attest.Result{Subject: "a/h1", Status: attest.StatusRefused, Reasons: []string{"signature"}})
	pass(t, r)
	if s, _ := app.state("w1"); s != lb.StateAdmitted {
		t.Fatalf("a refused submission evicted the backend: %s", s)
	}

	// An affirming result that is not renewed lapses by itself at its expiry.
	c.add(6 * time.Second)
	pass(t, r)
	if s, _ := app.state("w1"); s != lb.StateEvicted || !strings.Contains(r.BackendStatus("a", "web", "w1").Reason, "expired") {
		t.Fatalf("expired result still admits: %s %+v", s, r.BackendStatus("a", "web", "w1"))
	}

	trs, _, _ := st.ListTransitions("a", 0, 0)
	var seq []string
	for _, tr := range trs {
		if tr.Backend == "w1" {
			seq = append(seq, string(tr.To))
		}
	}
	if strings.Join(seq, ",") != "registered,admitted,evicted,admitted,evicted" {
		t.Fatalf("w1's transitions: %v", seq)
	}
}

func TestRejectedTrustAndDrain(t *testing.T) {
	c := newClock()
	st, r, app := setup(t, kv.NewMem(), c)
	r.Notify(attest.Result{Subject: "a/h2", Status: attest.StatusContraindicated, Reasons: []string{"pcr-digest"}})
	pass(t, r)
	if got := r.BackendStatus("a", "web", "w2").State; got != state.StateRejected {
		t.Fatalf("never admitted, first verdict failed: %s", got)
	}
	// A service demanding certified TPMs refuses an allow-listed one.
	svc, _ := st.GetService("a", "web")
	svc.MinTrust = attest.TrustCertified
	if _, err := st.UpdateService(svc, svc.Version); err != nil {
		t.Fatal(err)
	}
	r.Notify(affirming("a/h1", c, 6*time.Second, attest.TrustAllowListed))
	pass(t, r)
	if s, _ := app.state("w1"); s != lb.StateEvicted || !strings.Contains(r.BackendStatus("a", "web", "w1").Reason, "below the service's minimum") {
		t.Fatalf("allow-listed TPM admitted to a certified-only service: %s %+v", s, r.BackendStatus("a", "web", "w1"))
	}
	svc, _ = st.GetService("a", "web")
	svc.MinTrust = attest.TrustAllowListed
	st.UpdateService(svc, svc.Version)
	b, _ := st.GetBackend("a", "web", "w1")
	b.Drain = true
	st.UpdateBackend(b, b.Version)
	pass(t, r)
	if s, _ := app.state("w1"); s != lb.StateDraining {
		t.Fatalf("drained backend: %s", s)
	}
}

// TestRestartKeepsAdmission: a new reconciler over the same store (a restarted
// gateway) admits the backends whose results have not expired, and remembers who was
// rejected or evicted.
func TestRestartKeepsAdmission(t *testing.T) {
	c := newClock()
	kvs := kv.NewMem()
	_, r, _ := setup(t, kvs, c)
	r.Notify(affirming("a/h1", c, 6*time.Second, attest.TrustAllowListed))
	r.Notify(attest.Result{Subject: "a/h2", Status: attest.StatusContraindicated})
	pass(t, r)
	if err := r.flush(); err != nil {
		t.Fatal(err)
	}
	c.add(2 * time.Second)
	_, r2, app2 := setup(t, kvs, c)
	pass(t, r2)
	if s, _ := app2.state("w1"); s != lb.StateAdmitted {
		t.Fatalf("after restart, a backend with a live result is %s", s)
	}
	if got := r2.BackendStatus("a", "web", "w2").State; got != state.StateRejected {
		t.Fatalf("after restart w2 is %s, want rejected", got)
	}
	c.add(5 * time.Second)
	pass(t, r2)
	if s, _ := app2.state("w1"); s != lb.StateEvicted {
		t.Fatalf("after restart the old result never expired: %s", s)
	}
}

func TestPolicySource(t *testing.T) {
	c := newClock()
	_, r, _ := setup(t, kv.NewMem(), c)
	pass(t, r)
	p, err := r.Policy("a/h2")
	if err != nil || p.Name != "a/app" || !p.PinEKs || len(p.AllowedEKs) != 1 {
		t.Fatalf("policy of a/h2: %+v %v", p, err)
	}
	if p, err := r.Policy("a/h1"); err != nil || p.PinEKs {
		t.Fatalf("policy of a/h1: %+v %v", p, err)
	}
	if _, err := r.Policy("b/h1"); err == nil {
		t.Fatal("a policy for an unregistered subject")
	}
}

func TestApplyFailureRetried(t *testing.T) {
	c := newClock()
	_, r, app := setup(t, kv.NewMem(), c)
	app.fail = true
	if _, err := r.Pass(); err == nil {
		t.Fatal("failed apply not reported")
	}
	if got := r.BackendStatus("a", "web", "w1").State; got != state.StateRegistered || r.Stats().Failures != 1 {
		t.Fatalf("after a failed apply: %s, %+v", got, r.Stats())
	}
	pass(t, r)
	if app.count != 1 {
		t.Fatalf("applies: %d", app.count)
	}
}

// TestRunEvictsOnItsOwn: the running reconciler evicts when a result expires, without
// any notification, and reacts to results at once; its statistics time both, the
// eviction on a failed result apart. It stores the latest result when it stops.
func TestRunEvictsOnItsOwn(t *testing.T) {
	st := state.New(kv.NewMem(), nil, nil)
	st.CreateTenant(state.Tenant{Name: "a", Attachments: []tenant.Attachment{{Interface: "eth0"}}})
	st.CreateService(state.Service{Tenant: "a", Name: "web", VIP: netip.MustParseAddr("10.100.0.1"), Port: 80, Protocol: tenant.TCP, MaglevSize: 251})
	st.CreatePolicy(state.Policy{Tenant: "a", Name: "app", References: map[string][]string{"/srv/app": {digest}}})
	st.CreateBackend(state.Backend{Tenant: "a", Service: "web", Name: "w1", Identity: "h1", Addr: netip.MustParseAddr("10.1.0.1"), Weight: 1, Policy: "app"})
	app := &fakeApplier{}
	r, err := New(Config{State: st, Compiler: tenant.NewCompiler(testIfaces, tenant.DefaultLimits(), tenant.IDs{}), Applier: app})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- r.Run(ctx) }()
	waitFor := func(want lb.State, within time.Duration) time.Duration {
		t.Helper()
		start := time.Now()
		for time.Since(start) < within {
			if s, ok := app.state("w1"); ok && s == want {
				return time.Since(start)
			}
			time.Sleep(time.Millisecond)
		}
		t.Fatalf("w1 not %s within %v", want, within)
		return 0
	}
	now := time.Now()
	r.Notify(attest.Result{Subject: "a/h1", Status: attest.StatusAffirming, Issued: now, Expires: now.Add(300 * time.Millisecond)})
	waitFor(lb.StateAdmitted, time.Second)
	waitFor(lb.StateEvicted, time.Second) // nothing renews it
	if lat := r.Stats().LastLatency; lat <= 0 || lat > time.Second {
		t.Fatalf("result-to-applied latency %v", lat)
	}
	if ev := r.Stats().LastEviction; ev != 0 {
		t.Fatalf("result-to-evicted latency %v after an expiry alone (no failed result)", ev)
	}
	now = time.Now()
	r.Notify(attest.Result{Subject: "a/h1", Status: attest.StatusAffirming, Issued: now, Expires: now.Add(time.Minute)})
	waitFor(lb.StateAdmitted, time.Second)
	r.Notify(attest.Result{Subject: "a/h1", Status: attest.StatusContraindicated, Issued: time.Now(), Expires: time.Now()})
	if ev := r.Stats().LastEviction; ev <= 0 || ev > time.Second || len(app.evictions()) == 0 {
		t.Fatalf("after a failed result: result-to-evicted latency %v, evictions %v", ev, app.evictions())
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if got, _ := st.LoadStandings(); got["a/h1"].Status != attest.StatusContraindicated {
		t.Fatalf("the latest standing not stored on exit: %+v", got)
	}
}

// TestEvictionAheadOfTheConfiguration: a backend that loses its admission is evicted
// through the Evicter before the configuration without it is compiled and applied,
// and before its standing is stored (the eviction waits for no disk), which the pass
// then does; only a backend the fast path may use is, and only when it loses
// admission (not when admitted, not on a refused result, not twice). An Applier that
// is no Evicter evicts through Apply alone.
func TestEvictionAheadOfTheConfiguration(t *testing.T) {
	c := newClock()
	st, r, app := setup(t, kv.NewMem(), c)
	pass(t, r)
	r.Notify(affirming("a/h1", c, 6*time.Second, attest.TrustAllowListed))
	pass(t, r)
	if s, _ := app.state("w1"); s != lb.StateAdmitted || len(app.evictions()) != 0 {
		t.Fatalf("after admission: w1 %s, evictions %v", s, app.evictions())
	}
	w1 := app.id("w1")

	var storedAtEvict attest.Status
	appliesAtEvict := -1
	app.onEvict = func() {
		got, _ := st.LoadStandings()
		storedAtEvict = got["a/h1"].Status
		app.mu.Lock()
		appliesAtEvict = app.count
		app.mu.Unlock()
	}
	applies := app.count
	c.add(time.Second)
	r.Notify(attest.Result{Subject: "a/h1", Status: attest.StatusContraindicated, Issued: c.now(), Expires: c.now()})
	if ev := app.evictions(); len(ev) != 1 || !slices.Equal(ev[0], []uint32{w1}) {
		t.Fatalf("evictions when Notify returned %v, want [[%d]]: the result evicts at once, no pass needed", ev, w1)
	}
	pass(t, r)
	if ev := app.evictions(); len(ev) != 1 {
		t.Fatalf("evictions after the pass %v, want the one Notify made", ev)
	}
	if appliesAtEvict != applies || storedAtEvict != attest.StatusAffirming {
		t.Fatalf("at the eviction: %d applies (want %d: before the pass's Apply), stored standing %q (want the old one: the store comes after)",
			appliesAtEvict, applies, storedAtEvict)
	}
	if got, _ := st.LoadStandings(); got["a/h1"].Status != attest.StatusContraindicated {
		t.Fatalf("after the pass the stored standing is %q", got["a/h1"].Status)
	}
	if s, _ := app.state("w1"); s != lb.StateEvicted {
		t.Fatalf("the pass's configuration has w1 %s", s)
	}
	pass(t, r)
	r.Notify(attest.Result{Subject: "a/h1", Status: attest.StatusRefused, Reasons: []string{"signature"}})
	pass(t, r)
	if ev := app.evictions(); len(ev) != 1 {
		t.Fatalf("an evicted backend evicted again, or a refused result evicted: %v", ev)
	}

	// Expiry, with no result at all, evicts ahead too.
	r.Notify(affirming("a/h1", c, 6*time.Second, attest.TrustAllowListed))
	pass(t, r)
	c.add(7 * time.Second)
	pass(t, r)
	if ev := app.evictions(); len(ev) != 2 || !slices.Equal(ev[1], []uint32{w1}) {
		t.Fatalf("after the result expired: evictions %v", ev)
	}

	// No Evicter: the pass's Apply alone evicts.
	ids, _ := st.LoadIDs()
	plain := &fakeApplier{}
	r2, err := New(Config{State: st, Compiler: tenant.NewCompiler(testIfaces, tenant.DefaultLimits(), ids), Applier: applyOnly{plain}, Clock: c.now})
	if err != nil {
		t.Fatal(err)
	}
	r2.Notify(affirming("a/h1", c, 6*time.Second, attest.TrustAllowListed))
	pass(t, r2)
	r2.Notify(attest.Result{Subject: "a/h1", Status: attest.StatusContraindicated, Issued: c.now(), Expires: c.now()})
	pass(t, r2)
	if s, _ := plain.state("w1"); s != lb.StateEvicted || len(plain.evictions()) != 0 {
		t.Fatalf("without an Evicter: w1 %s, evictions %v", s, plain.evictions())
	}
}

// failing is a store whose reads fail while readsFail is set, and whose writes fail
// while writesFail is.
type failing struct {
	kv.Store
	readsFail, writesFail atomic.Bool
}

func (f *failing) View(fn func(kv.Tx) error) error {
	if f.readsFail.Load() {
		return errors.New("disk read error")
	}
	return f.Store.View(fn)
}

func (f *failing) Update(fn func(kv.Tx) error) error {
	if f.writesFail.Load() {
		return errors.New("disk full")
	}
	return f.Store.Update(fn)
}

// admitBoth admits w1 and w2 on results of their hosts, and returns w1's id.
func admitBoth(t *testing.T, r *Reconciler, app *fakeApplier, c *clock) uint32 {
	t.Helper()
	r.Notify(affirming("a/h1", c, 6*time.Second, attest.TrustAllowListed))
	r.Notify(affirming("a/h2", c, 6*time.Second, attest.TrustAllowListed))
	pass(t, r)
	for _, name := range []string{"w1", "w2"} {
		if s, _ := app.state(name); s != lb.StateAdmitted {
			t.Fatalf("%s %s after its host's result", name, s)
		}
	}
	return app.id("w1")
}

// failW1 has w1's host's result fail while broken is set (the store's reads or its
// writes fail): the pass that follows fails, and w1 (id w1) is evicted all the same.
func failW1(t *testing.T, r *Reconciler, app *fakeApplier, c *clock, w1 uint32, broken *atomic.Bool) {
	t.Helper()
	broken.Store(true)
	defer broken.Store(false)
	r.Notify(attest.Result{Subject: "a/h1", Status: attest.StatusContraindicated, Issued: c.now(), Expires: c.now()})
	if _, err := r.Pass(); err == nil {
		t.Fatal("a pass over a failing store succeeded")
	}
	if ev := app.evictions(); len(ev) != 1 || !slices.Equal(ev[0], []uint32{w1}) {
		t.Fatalf("evictions %v, want [[%d]] although the store failed", ev, w1)
	}
}

// TestEvictionBeforeTheStoreIsRead: a failed result evicts the backends it admitted
// as it arrives, before any pass reads the desired state: even a store that cannot be
// read (so the pass fails) does not keep them in the fast path, and the failed pass
// stores the standing all the same. Backends admitted on other subjects stay.
func TestEvictionBeforeTheStoreIsRead(t *testing.T) {
	c := newClock()
	store := &failing{Store: kv.NewMem()}
	st, r, app := setup(t, store, c)
	w1 := admitBoth(t, r, app, c)

	failW1(t, r, app, c, w1, &store.readsFail)
	if got, _ := st.LoadStandings(); got["a/h1"].Status != attest.StatusContraindicated {
		t.Fatalf("the standing behind the eviction was not stored: %+v", got["a/h1"])
	}
	pass(t, r)
	if ev := app.evictions(); len(ev) != 1 {
		t.Fatalf("evicted again by the pass that follows: %v", ev)
	}
	if s1, _ := app.state("w1"); s1 != lb.StateEvicted {
		t.Fatalf("the configuration that follows has w1 %s", s1)
	}
	if s2, _ := app.state("w2"); s2 != lb.StateAdmitted {
		t.Fatalf("w2, admitted on another subject, is %s", s2)
	}
}

// TestAdmissionWrittenBeforeStored: an admitting result reaches the fast path before
// the store (the admission waits for no disk), and the pass stores it after.
func TestAdmissionWrittenBeforeStored(t *testing.T) {
	c := newClock()
	st, r, app := setup(t, kv.NewMem(), c)
	pass(t, r)
	var storedAtApply attest.Status
	app.onApply = func() {
		got, _ := st.LoadStandings()
		storedAtApply = got["a/h1"].Status
	}
	r.Notify(affirming("a/h1", c, 6*time.Second, attest.TrustAllowListed))
	pass(t, r)
	if s, _ := app.state("w1"); s != lb.StateAdmitted {
		t.Fatalf("w1 %s", s)
	}
	if storedAtApply != "" {
		t.Fatalf("the standing was stored (%q) before the configuration that admits on it was written", storedAtApply)
	}
	if got, _ := st.LoadStandings(); got["a/h1"].Status != attest.StatusAffirming {
		t.Fatalf("after the pass the stored standing is %+v", got["a/h1"])
	}
}

// TestRestartBehindTheFastPath: the gateway stops after a failed result evicted a
// backend from the fast path and before the store recorded that result (here: the
// commit fails). The store still holds the older, admitting result, but a reconciler
// started over the same store and that fast path (a restarted gateway over its pins)
// does not re-admit the backend on it; a result that arrives afterwards does. A
// backend the fast path holds as admitted stays admitted on its stored result.
func TestRestartBehindTheFastPath(t *testing.T) {
	c := newClock()
	store := &failing{Store: kv.NewMem()}
	st, r, app := setup(t, store, c)
	w1 := admitBoth(t, r, app, c)

	failW1(t, r, app, c, w1, &store.writesFail)
	if got, _ := st.LoadStandings(); got["a/h1"].Status != attest.StatusAffirming {
		t.Fatalf("the store should be one result behind: %+v", got["a/h1"])
	}

	// The restart: the fast path holds w1 evicted, as the previous run left it.
	c.add(time.Second)
	ids, _ := st.LoadIDs()
	pinned := &fakeApplier{pinned: []uint32{w1}}
	r2, err := New(Config{State: st, Compiler: tenant.NewCompiler(testIfaces, tenant.DefaultLimits(), ids), Applier: pinned, Clock: c.now})
	if err != nil {
		t.Fatal(err)
	}
	pass(t, r2)
	if s, _ := pinned.state("w1"); s != lb.StateEvicted {
		t.Fatalf("after the restart w1 is %s on the stored result its eviction outdated", s)
	}
	if got := r2.BackendStatus("a", "web", "w1"); got.State != state.StateEvicted || !strings.Contains(got.Reason, "newer than the stored one") {
		t.Fatalf("w1's status after the restart: %+v", got)
	}
	if s, _ := pinned.state("w2"); s != lb.StateAdmitted {
		t.Fatalf("w2, admitted in the fast path on a live stored result, is %s after the restart", s)
	}
	// A refused result is no result about the host: w1 stays out.
	r2.Notify(attest.Result{Subject: "a/h1", Status: attest.StatusRefused, Reasons: []string{"signature"}})
	pass(t, r2)
	if s, _ := pinned.state("w1"); s != lb.StateEvicted {
		t.Fatalf("a refused result re-admitted w1 (%s)", s)
	}
	r2.Notify(affirming("a/h1", c, 6*time.Second, attest.TrustAllowListed))
	pass(t, r2)
	if s, _ := pinned.state("w1"); s != lb.StateAdmitted {
		t.Fatalf("a result after the restart did not admit w1: %s", s)
	}
}

// duringPass runs its hook in Prepare: after the pass derived the configuration, before
// it compiles and applies it.
type duringPass struct{ hook func() }

func (d duringPass) Prepare(*state.Snapshot) error {
	if d.hook != nil {
		d.hook()
	}
	return nil
}
func (duringPass) Applied(*state.Snapshot) error { return nil }

// TestResultDuringThePass: a failed result that arrives while a pass compiles a
// configuration admitting the backend evicts it at once, and that pass's Apply does
// not put it back; nor does it put back a backend whose result expired meanwhile.
func TestResultDuringThePass(t *testing.T) {
	c := newClock()
	st, _, _ := setup(t, kv.NewMem(), c)
	ids, _ := st.LoadIDs()
	app := &fakeApplier{}
	var hook func()
	r, err := New(Config{State: st, Compiler: tenant.NewCompiler(testIfaces, tenant.DefaultLimits(), ids), Applier: app, Clock: c.now,
		Devices: duringPass{hook: func() {
			if hook != nil {
				h := hook
				hook = nil
				h()
			}
		}}})
	if err != nil {
		t.Fatal(err)
	}
	r.Notify(affirming("a/h1", c, 6*time.Second, attest.TrustAllowListed))
	r.Notify(affirming("a/h2", c, 6*time.Second, attest.TrustAllowListed))
	pass(t, r)
	w1 := app.id("w1")

	// w2's status changes, so the pass writes a configuration; w1's result fails
	// while it is being compiled.
	r.Notify(attest.Result{Subject: "a/h2", Status: attest.StatusContraindicated, Issued: c.now(), Expires: c.now()})
	hook = func() {
		r.Notify(attest.Result{Subject: "a/h1", Status: attest.StatusContraindicated, Issued: c.now(), Expires: c.now()})
	}
	pass(t, r)
	if s, _ := app.state("w1"); s != lb.StateEvicted {
		t.Fatalf("the pass's Apply put w1 back (%s) after its result failed", s)
	}
	if ev := app.evictions(); !slices.ContainsFunc(ev, func(ids []uint32) bool { return slices.Contains(ids, w1) }) {
		t.Fatalf("w1 not evicted when its result arrived: %v", ev)
	}
	pass(t, r)
	if got := r.BackendStatus("a", "web", "w1"); got.State != state.StateEvicted || !strings.Contains(got.Reason, "contraindicated") {
		t.Fatalf("w1's status after the next pass: %+v", got)
	}

	// Expiry during the pass.
	r.Notify(affirming("a/h1", c, 6*time.Second, attest.TrustAllowListed))
	r.Notify(affirming("a/h2", c, 6*time.Second, attest.TrustAllowListed))
	pass(t, r)
	if s, _ := app.state("w1"); s != lb.StateAdmitted {
		t.Fatalf("w1 %s after a new result", s)
	}
	r.Notify(affirming("a/h2", c, 60*time.Second, attest.TrustAllowListed))
	r.Notify(attest.Result{Subject: "a/h2", Status: attest.StatusContraindicated, Issued: c.now(), Expires: c.now()})
	hook = func() { c.add(7 * time.Second) }
	pass(t, r)
	if s, _ := app.state("w1"); s != lb.StateEvicted {
		t.Fatalf("the pass's Apply admitted w1 (%s) on a result that expired during it", s)
	}
}

// stalled is a store whose commits wait while gate is closed (a disk that takes its
// time); reads do not.
type stalled struct {
	kv.Store
	gate    chan struct{}
	commits atomic.Int32
}

func (s *stalled) Update(fn func(kv.Tx) error) error {
	<-s.gate
	s.commits.Add(1)
	return s.Store.Update(fn)
}

// TestRunDoesNotWaitForCommits: while the store's commits hang, the running
// reconciler still admits, evicts and admits again; once the store answers, the
// latest standing and every transition are stored.
func TestRunDoesNotWaitForCommits(t *testing.T) {
	c := newClock()
	kvs := kv.NewMem()
	st, r0, _ := setup(t, kvs, c)
	pass(t, r0) // the desired state and its ids, committed before the stall
	ids, _ := st.LoadIDs()
	disk := &stalled{Store: kvs, gate: make(chan struct{})}
	st = state.New(disk, nil, c.now)
	app := &fakeApplier{}
	r, err := New(Config{State: st, Compiler: tenant.NewCompiler(testIfaces, tenant.DefaultLimits(), ids), Applier: app, Clock: c.now,
		FlushInterval: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- r.Run(ctx) }()
	waitFor := func(want lb.State) {
		t.Helper()
		for start := time.Now(); time.Since(start) < 5*time.Second; time.Sleep(time.Millisecond) {
			if s, ok := app.state("w1"); ok && s == want {
				return
			}
		}
		s, _ := app.state("w1")
		t.Fatalf("w1 %s, want %s, with the store's commits hanging", s, want)
	}
	r.Notify(affirming("a/h1", c, time.Hour, attest.TrustAllowListed))
	waitFor(lb.StateAdmitted)
	r.Notify(attest.Result{Subject: "a/h1", Status: attest.StatusContraindicated, Issued: c.now(), Expires: c.now()})
	waitFor(lb.StateEvicted)
	r.Notify(affirming("a/h1", c, time.Hour, attest.TrustAllowListed))
	waitFor(lb.StateAdmitted)
	if n := disk.commits.Load(); n != 0 {
		t.Fatalf("%d commits went through a closed gate", n)
	}

	close(disk.gate)
	for start := time.Now(); ; time.Sleep(time.Millisecond) {
		got, _ := st.LoadStandings()
		trs, _, _ := st.ListTransitions("a", 0, 0)
		var w1 []state.BackendState
		for _, tr := range trs {
			if tr.Backend == "w1" {
				w1 = append(w1, tr.To)
			}
		}
		if got["a/h1"].Status == attest.StatusAffirming && slices.Equal(w1[max(0, len(w1)-3):], []state.BackendState{state.StateAdmitted, state.StateEvicted, state.StateAdmitted}) {
			break
		}
		if time.Since(start) > 5*time.Second {
			t.Fatalf("once the store answered: standing %+v, w1's transitions %v", got["a/h1"], w1)
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestResultDuringTheApply: a failed result that arrives while a pass writes a
// configuration admitting the backend (too late for the pass to keep it out) evicts
// it as soon as that write is done.
func TestResultDuringTheApply(t *testing.T) {
	c := newClock()
	_, r, app := setup(t, kv.NewMem(), c)
	r.Notify(affirming("a/h2", c, 6*time.Second, attest.TrustAllowListed))
	pass(t, r)
	notified := make(chan struct{})
	app.onApply = func() {
		app.mu.Lock()
		app.onApply = nil
		app.mu.Unlock()
		go func() {
			r.Notify(attest.Result{Subject: "a/h1", Status: attest.StatusContraindicated, Issued: c.now(), Expires: c.now()})
			close(notified)
		}()
		for { // until the result is in, its eviction waiting for this Apply
			r.mu.Lock()
			in := r.standings["a/h1"].Status == attest.StatusContraindicated
			r.mu.Unlock()
			if in {
				return
			}
			time.Sleep(time.Millisecond)
		}
	}
	r.Notify(affirming("a/h1", c, 6*time.Second, attest.TrustAllowListed))
	pass(t, r) // admits w1: it derived and checked the configuration before the result
	<-notified
	w1 := app.id("w1")
	if ev := app.evictions(); !slices.ContainsFunc(ev, func(ids []uint32) bool { return slices.Contains(ids, w1) }) {
		t.Fatalf("w1, admitted by the Apply its failed result arrived during, was not evicted after it: %v", ev)
	}
}
