// Package reconcile turns the gateway's desired state (controlapi/state) and its
// backends' attestation results into the fast path's configuration, and is the only
// path by which anything reaches the map writer. A backend is admitted while its host's
// latest result admits it at the service's minimum trust level and, for a backend
// reached through an overlay peer, while the link with that peer is up (Links); a
// failed or expired result, or the link going down, evicts it on the next pass, which
// runs as soon as the result (or the link's change) arrives. When the Applier can
// (Evicter), the backends that lost admission are evicted on their own before the
// whole configuration is written, whose Maglev table rebuilds take milliseconds: those
// admitted on a result that no longer admits them as the result arrives (Notify) or,
// for an expiry, as the pass starts; the others (a link down, a trust level below the
// service's) once the pass has derived every backend's status.
//
// The fast path is written first and the store after: the standings that changed and
// the transitions a pass made are committed once the pass has written the
// configuration that follows from them, and while Run runs, by a goroutine of their
// own, so that no eviction, admission or following pass waits for the disk (a bbolt
// commit is fsync'ed: 0.4 ms on an idle disk here, tens of milliseconds under load).
// A gateway that stops in between restarts with a store one result behind its pinned
// fast path; New reconciles the two towards eviction.
package reconcile

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/seed4c/moat/attest"
	"github.com/seed4c/moat/attest/verifier"
	"github.com/seed4c/moat/controlapi/state"
	"github.com/seed4c/moat/lb"
	"github.com/seed4c/moat/tenant"
)

// Applier writes a compiled configuration into the fast path (dataplane.Writer does).
//
// Contract: Apply leaves the fast path holding c, or returns an error and leaves it
// holding the previous configuration.
type Applier interface {
	Apply(c *tenant.Compiled) error
}

// Evicter is an Applier that can also take backends out of the fast path on their
// own (dataplane.Writer can). When a backend loses its admission (its attestation
// failed or expired, or its overlay link went down), the reconciler evicts it this way
// before it compiles the configuration without it: compiling rebuilds the service's
// Maglev table, which takes milliseconds, and an untrusted host should not get one
// more frame meanwhile.
//
// Contract: Evict makes the listed backend ids unusable by the fast path at once (no
// established flow reaches them, no new flow is sent to them) and changes nothing
// else; ids it does not hold as usable are ignored. The next Apply writes what its
// configuration says, whatever Evict did. Evicted returns the ids of the backends the
// fast path holds as evicted, as it finds them (a fast path pinned by the gateway's
// previous run holds what that run last wrote).
type Evicter interface {
	Evict(backendIDs []uint32) error
	Evicted() ([]uint32, error)
}

// Devices makes and removes the gateway devices a configuration attaches tenants to
// beyond the configured interfaces (the overlay's tenant segments).
//
// Contract: Prepare runs before each compilation of sn and leaves every device sn
// attaches to existing (it is cheap when nothing changed: it runs on every pass);
// Applied runs after sn's configuration is written to the fast path (the maps know the
// new devices: the program may now be attached to them). An error fails the pass,
// which is retried.
type Devices interface {
	Prepare(sn *state.Snapshot) error
	Applied(sn *state.Snapshot) error
}

// Config configures a Reconciler.
type Config struct {
	State    *state.Store
	Compiler *tenant.Compiler
	Applier  Applier
	// Devices, when set, is called around each write (the overlay); nil: none.
	Devices Devices
	// Links, when set, gates the backends reached through overlay peers on their
	// links (see Links); nil: no overlay, and a backend on a segment or behind a
	// peer's route is never admitted (nothing could carry its traffic).
	Links Links
	// Enrolled reports whether a subject has enrolled with the verifier (for the
	// "attesting" state); nil: never.
	Enrolled func(subject string) bool
	Clock    func() time.Time
	Log      *slog.Logger
	// FlushInterval is how often the latest results are written to the store (what a
	// restarted gateway admits on until agents attest again); default 250 ms.
	FlushInterval time.Duration
	// RetryInterval is how soon a failed pass is retried; default 1 s.
	RetryInterval time.Duration
	// HistoryInterval is the least interval between two affirming results recorded in
	// a subject's history (every change of status is recorded); default 1 min.
	HistoryInterval time.Duration
}

// Stats counts what the reconciler did.
type Stats struct {
	Passes      uint64                     `json:"passes"`
	Failures    uint64                     `json:"failures"`
	LastPass    time.Duration              `json:"last_pass_ns"`
	LastLatency time.Duration              `json:"last_result_to_applied_ns"` // from a result's arrival to the write of the configuration that follows from it
	Transitions uint64                     `json:"transitions"`
	ByState     map[state.BackendState]int `json:"backends_by_state"`
	// LastEviction is the last delay from a failed result's arrival to the eviction
	// of the backends it admitted (Notify's map write; zero until one happened).
	LastEviction time.Duration `json:"last_result_to_evicted_ns"`
}

type backendKey struct{ tenant, service, name string }

// usableBackend is a backend the fast path may use: its id, and the attestation
// subject whose result admitted it.
type usableBackend struct {
	id      uint32
	subject string
}

// Reconciler is the gateway's reconciler. Its methods are safe for concurrent use.
type Reconciler struct {
	cfg  Config
	wake chan struct{}

	// fastPath orders the writes to the fast path: an eviction on a failed result's
	// arrival (Notify) and a pass's Apply with the record of what it lets the fast
	// path use, which must not put back a backend evicted after the pass derived its
	// configuration. It is taken before mu, never while mu is held.
	fastPath sync.Mutex
	// storing serialises flushes, so that an older snapshot of the standings is never
	// committed after a newer one.
	storing sync.Mutex
	// commitNow wakes Run's committer: a pass has something to store.
	commitNow chan struct{}

	mu          sync.Mutex
	standings   map[string]attest.Result // subject -> latest result that is not "refused"
	arrived     time.Time                // when the oldest unapplied result arrived
	statuses    map[backendKey]state.BackendStatus
	dirty       map[string]bool // subjects whose standing is not yet stored
	urgent      bool            // a stored standing's status is outdated: Pass stores it before it returns
	history     []attest.Result
	transitions []state.Transition // made by passes, not yet stored
	lastHistory map[string]time.Time
	stats       Stats
	// usable are the backends the last configuration applied lets the fast path use
	// (admitted or draining): those Evicter may evict ahead of a pass.
	usable map[backendKey]usableBackend
	// held are the backends the fast path held as evicted when the reconciler was
	// made: none is admitted again on a result stored before then, only on one that
	// arrives after (fresh holds the subjects of those while any is held).
	held  map[backendKey]bool
	fresh map[string]bool

	policies atomic.Pointer[map[string]*verifier.Policy]
	changes  <-chan struct{}
}

// New returns a Reconciler that starts from what the store remembers: the latest
// results (a restarted gateway keeps admitting a backend whose result has not expired)
// and each backend's last transition.
//
// When the Applier is an Evicter, it also starts from what the fast path holds: a
// backend the fast path holds as evicted is not admitted on a stored result, only on a
// result that arrives afterwards. The store can be one result behind the fast path
// (the gateway stopped between an eviction and the commit of the result behind it),
// and its result would re-admit a backend that was just evicted; when the store is
// not behind, its result does not admit the backend either, or the backend was
// evicted for another reason (a link down, a trust level) and waits for its host's
// next result, seconds away.
func New(cfg Config) (*Reconciler, error) {
	if cfg.Clock == nil {
		cfg.Clock = time.Now
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.FlushInterval == 0 {
		cfg.FlushInterval = 250 * time.Millisecond
	}
	if cfg.RetryInterval == 0 {
		cfg.RetryInterval = time.Second
	}
	if cfg.HistoryInterval == 0 {
		cfg.HistoryInterval = time.Minute
	}
	r := &Reconciler{
		cfg: cfg, wake: make(chan struct{}, 1), commitNow: make(chan struct{}, 1),
		statuses: map[backendKey]state.BackendStatus{}, dirty: map[string]bool{}, lastHistory: map[string]time.Time{},
		held: map[backendKey]bool{}, fresh: map[string]bool{},
	}
	var err error
	if r.standings, err = cfg.State.LoadStandings(); err != nil {
		return nil, fmt.Errorf("load attestation standings: %w", err)
	}
	if ev, ok := cfg.Applier.(Evicter); ok {
		ids, err := ev.Evicted()
		if err != nil {
			return nil, fmt.Errorf("read the backends the fast path holds as evicted: %w", err)
		}
		keys := map[uint32]string{}
		for k, id := range cfg.Compiler.IDs().Backends {
			keys[id] = k
		}
		for _, id := range ids {
			if t, rest, ok := strings.Cut(keys[id], "/"); ok {
				if svc, name, ok := strings.Cut(rest, "/"); ok {
					r.held[backendKey{t, svc, name}] = true
				}
			}
		}
	}
	trs, _, err := cfg.State.ListTransitions("", 0, 0)
	if err != nil {
		return nil, fmt.Errorf("load transitions: %w", err)
	}
	for _, t := range trs {
		r.statuses[backendKey{t.Tenant, t.Service, t.Backend}] = state.BackendStatus{State: t.To, Reason: t.Reason, Since: t.Time}
	}
	r.changes = cfg.State.Changes()
	empty := map[string]*verifier.Policy{}
	r.policies.Store(&empty)
	return r, nil
}

// Notify takes an attestation result (it implements verifier.Subscriber). A result
// that no longer admits its subject evicts, before Notify returns, the backends the
// fast path admits on that subject, when the Applier is an Evicter (a map write: it
// waits at most for a configuration being written, never for the store or a
// compilation); any result that changes a status wakes the reconciler, whose next
// pass stores it and writes the configuration that follows from it.
func (r *Reconciler) Notify(res attest.Result) {
	now := r.cfg.Clock()
	r.mu.Lock()
	if res.Status != attest.StatusRefused {
		prev, had := r.standings[res.Subject]
		r.standings[res.Subject] = res
		if len(r.held) > 0 {
			r.fresh[res.Subject] = true
		}
		r.dirty[res.Subject] = true
		if !had || prev.Status != res.Status {
			r.urgent = true
		}
		if !had || prev.Status != res.Status || now.Sub(r.lastHistory[res.Subject]) >= r.cfg.HistoryInterval {
			r.history = append(r.history, res)
			r.lastHistory[res.Subject] = now
		}
	} else {
		r.history = append(r.history, res) // a forgery in the subject's name is worth keeping
	}
	if r.arrived.IsZero() {
		r.arrived = now
	}
	r.mu.Unlock()
	if res.Status != attest.StatusRefused && !res.Admits(now) {
		// After the standing: a pass applying meanwhile either sees it (keepLapsedOut)
		// or has finished, its usable backends recorded, when this runs.
		r.fastPath.Lock()
		if r.evictLapsed(now) {
			took := r.cfg.Clock().Sub(now)
			r.mu.Lock()
			r.stats.LastEviction = took
			r.mu.Unlock()
		}
		r.fastPath.Unlock()
	}
	r.poke()
}

func (r *Reconciler) poke() { signal(r.wake) }

// signal wakes whoever waits on c, unless it is already woken.
func signal(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// Run reconciles whenever the desired state changes, a result arrives or a result
// expires, until ctx ends; then it stores the latest results one last time. The
// store's commits run beside the passes, in a goroutine of their own: right after each
// pass that changed a status, and every FlushInterval for the renewals. A commit,
// fsync'ed, can take tens of milliseconds on a loaded machine, and no pass waits for
// it; one that fails is tried again at the next.
func (r *Reconciler) Run(ctx context.Context) error {
	var committer sync.WaitGroup
	committer.Go(func() {
		flush := time.NewTicker(r.cfg.FlushInterval)
		defer flush.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-flush.C:
			case <-r.commitNow:
			}
			if err := r.flush(); err != nil {
				r.cfg.Log.Error("store attestation results and transitions", "error", err)
			}
		}
	})
	next := time.NewTimer(0)
	defer next.Stop()
	for {
		select {
		case <-ctx.Done():
			committer.Wait()
			return r.flush()
		case <-r.wake:
		case <-r.changes:
		case <-next.C:
		}
		due, err := r.pass(false)
		if err != nil {
			r.cfg.Log.Error("reconcile", "error", err)
			due = r.cfg.Clock().Add(r.cfg.RetryInterval)
		}
		wait := time.Hour
		if !due.IsZero() {
			wait = max(due.Sub(r.cfg.Clock()), 0)
		}
		next.Reset(wait)
	}
}

// Pass reconciles once: it builds the configuration from the store and the standings,
// compiles it and writes it; then, whether or not it got that far, it stores the
// standings whose status changed and the transitions it made (the fast path first,
// the store after: see New for a crash in between). It returns when the next pass is
// due by itself (the earliest expiry of an admitting result), zero if never.
func (r *Reconciler) Pass() (time.Time, error) { return r.pass(true) }

// pass is Pass; with store false it leaves the store's commits to Run's committer,
// and wakes it.
func (r *Reconciler) pass(store bool) (due time.Time, err error) {
	defer func() {
		if !store {
			signal(r.commitNow)
		} else if serr := r.store(); serr != nil && err == nil {
			r.fail(time.Time{})
			due, err = time.Time{}, serr
		}
	}()
	start := r.cfg.Clock()
	r.fastPath.Lock()
	r.evictLapsed(start) // results that expired: nothing notifies those
	r.fastPath.Unlock()
	sn, err := r.cfg.State.Snapshot()
	if err != nil {
		return time.Time{}, err
	}
	r.refreshPolicies(sn)

	ov := newOverlayView(sn)
	r.mu.Lock()
	arrived := r.arrived
	r.arrived = time.Time{}
	next := map[backendKey]state.BackendStatus{}
	subjects := map[backendKey]string{}
	cfg := sn.Config(func(b *state.Backend, sv *state.Service) lb.State {
		k := backendKey{b.Tenant, b.Service, b.Name}
		st, admitsUntil, subject := r.derive(b, sv, ov, start, r.statuses[k])
		next[k], subjects[k] = st, subject
		if !admitsUntil.IsZero() && (due.IsZero() || admitsUntil.Before(due)) {
			due = admitsUntil
		}
		switch st.State {
		case state.StateAdmitted:
			return lb.StateAdmitted
		case state.StateDraining:
			return lb.StateDraining
		}
		return lb.StateEvicted
	})
	r.mu.Unlock()

	r.evictAhead(next)

	if r.cfg.Devices != nil {
		if err := r.cfg.Devices.Prepare(sn); err != nil {
			r.fail(arrived)
			return time.Time{}, fmt.Errorf("prepare the devices the configuration attaches to: %w", err)
		}
	}
	compiled, err := r.cfg.Compiler.Compile(cfg)
	if err != nil {
		r.fail(arrived)
		return time.Time{}, fmt.Errorf("compile the desired state (the store should have refused it): %w", err)
	}
	// Ids go to the store before the maps: a crash in between leaves ids the maps do
	// not use yet, never maps whose ids the store forgot.
	if err := r.cfg.State.SaveIDs(compiled.IDs); err != nil {
		r.fail(arrived)
		return time.Time{}, fmt.Errorf("store ids: %w", err)
	}
	r.fastPath.Lock()
	r.keepLapsedOut(compiled, next, subjects)
	if err = r.cfg.Applier.Apply(compiled); err == nil {
		r.recordUsable(compiled, subjects)
	}
	r.fastPath.Unlock()
	if err != nil {
		r.fail(arrived)
		return time.Time{}, fmt.Errorf("write the fast path: %w", err)
	}
	applied := r.cfg.Clock()
	if r.cfg.Devices != nil {
		if err := r.cfg.Devices.Applied(sn); err != nil {
			r.cfg.Log.Error("after writing the fast path", "error", err)
		}
	}
	transitions := r.commit(next, applied)
	for _, t := range transitions {
		r.cfg.Log.Info("backend "+string(t.To), "tenant", t.Tenant, "service", t.Service, "backend", t.Backend,
			"from", t.From, "reason", t.Reason)
	}
	r.mu.Lock()
	r.transitions = append(r.transitions, transitions...)
	r.stats.Passes++
	r.stats.LastPass = applied.Sub(start)
	if !arrived.IsZero() {
		r.stats.LastLatency = applied.Sub(arrived)
	}
	r.mu.Unlock()
	return due, nil
}

// evictLapsed evicts, through the Applier when it is an Evicter, the backends that
// the last applied configuration admitted on a subject's result which no longer admits
// them at now: a failed result arrived (Notify), or the result expired (the start of
// a pass). Nothing in the store or the desired state can keep such a backend, only an
// admitting result: it goes without waiting for either. It says whether it evicted
// any. Call it with r.fastPath held.
func (r *Reconciler) evictLapsed(now time.Time) bool {
	return r.evict(r.usableIDs(func(_ backendKey, u usableBackend) bool { return r.lapsed(u.subject, now) }))
}

// lapsed says whether subject has a standing that no longer admits it at now. Call it
// with r.mu held.
func (r *Reconciler) lapsed(subject string, now time.Time) bool {
	res, ok := r.standings[subject]
	return ok && !res.Admits(now)
}

// usable says whether the fast path may use a backend in state s.
func usable(s lb.State) bool { return s == lb.StateAdmitted || s == lb.StateDraining }

// keepLapsedOut evicts, in the configuration c a pass is about to apply, the backends
// admitted on a result that no longer admits them: one that arrived, or expired,
// since the pass derived c. Notify evicted them from the fast path meanwhile (or the
// pass's start will, for an expiry), and Apply must not put them back; the pass that
// the result woke derives their status properly. Call it with r.fastPath held.
func (r *Reconciler) keepLapsedOut(c *tenant.Compiled, next map[backendKey]state.BackendStatus, subjects map[backendKey]string) {
	now := r.cfg.Clock()
	r.mu.Lock()
	defer r.mu.Unlock()
	for i := range c.Backends {
		b := &c.Backends[i]
		if !usable(b.State) {
			continue
		}
		k := backendKey{b.Tenant, b.Service, b.Name}
		if r.lapsed(subjects[k], now) {
			b.State = lb.StateEvicted
			next[k] = state.BackendStatus{State: state.StateEvicted, Reason: "attestation result no longer admits it (arrived or expired during the pass)",
				LastResult: next[k].LastResult}
		}
	}
}

// recordUsable records the backends the configuration c, just applied, lets the fast
// path use: those evictLapsed and evictAhead may evict. Call it with r.fastPath held.
func (r *Reconciler) recordUsable(c *tenant.Compiled, subjects map[backendKey]string) {
	set := map[backendKey]usableBackend{}
	for _, b := range c.Backends {
		if usable(b.State) {
			k := backendKey{b.Tenant, b.Service, b.Name}
			set[k] = usableBackend{id: b.ID, subject: subjects[k]}
		}
	}
	r.mu.Lock()
	r.usable = set
	r.mu.Unlock()
}

// evictAhead evicts, through the Applier when it is an Evicter, the backends the last
// applied configuration lets the fast path use and next does not. A failure is only
// logged: the pass goes on to write the whole configuration, which evicts them too.
func (r *Reconciler) evictAhead(next map[backendKey]state.BackendStatus) {
	r.evict(r.usableIDs(func(k backendKey, _ usableBackend) bool {
		st, ok := next[k]
		return ok && st.State != state.StateAdmitted && st.State != state.StateDraining
	}))
}

// usableIDs returns, sorted, the ids of the usable backends for which lapsed holds
// (lapsed runs with r.mu held), or nothing when the Applier is no Evicter.
func (r *Reconciler) usableIDs(lapsed func(backendKey, usableBackend) bool) []uint32 {
	if _, ok := r.cfg.Applier.(Evicter); !ok {
		return nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	var ids []uint32
	for k, u := range r.usable {
		if lapsed(k, u) {
			ids = append(ids, u.id)
		}
	}
	slices.Sort(ids)
	return ids
}

// evict evicts ids through the Applier (an Evicter: usableIDs said so) and drops them
// from the usable backends, so that a pass that fails afterwards does not evict them
// again in the next. A failure is only logged: the pass's Apply evicts them too. It
// says whether it evicted any.
func (r *Reconciler) evict(ids []uint32) bool {
	if len(ids) == 0 {
		return false
	}
	if err := r.cfg.Applier.(Evicter).Evict(ids); err != nil {
		r.cfg.Log.Error("evict ahead of the configuration", "backends", ids, "error", err)
		return false
	}
	r.mu.Lock()
	maps.DeleteFunc(r.usable, func(_ backendKey, u usableBackend) bool { return slices.Contains(ids, u.id) })
	r.mu.Unlock()
	return true
}

// store stores the standings whose status changed and the transitions not yet
// stored, if any, once the fast path has them; on failure the next pass tries again.
func (r *Reconciler) store() error {
	r.mu.Lock()
	due := r.urgent || len(r.transitions) > 0
	r.mu.Unlock()
	if !due {
		return nil
	}
	if err := r.flush(); err != nil {
		return fmt.Errorf("store attestation results and transitions: %w", err)
	}
	return nil
}

func (r *Reconciler) fail(arrived time.Time) {
	r.mu.Lock()
	r.stats.Failures++
	if r.arrived.IsZero() {
		r.arrived = arrived
	}
	r.mu.Unlock()
}

// derive is a backend's status given its host's standing and, for a backend reached
// through an overlay peer, that peer's link; admitsUntil is when that status lapses by
// itself (zero if it does not); subject is the attestation subject it follows.
func (r *Reconciler) derive(b *state.Backend, sv *state.Service, ov *overlayView, now time.Time, prev state.BackendStatus) (st state.BackendStatus, admitsUntil time.Time, subject string) {
	peer, problem := ov.behind(b)
	subject = b.Subject()
	if b.OverlayPeer != "" && peer != nil {
		subject = peer.Subject // another site: admitted on the peer gateway's attestation
	}
	res, ok := r.standings[subject]
	everAdmitted := prev.State == state.StateAdmitted || prev.State == state.StateDraining || prev.State == state.StateEvicted
	failed := state.StateRejected
	if everAdmitted {
		failed = state.StateEvicted
	}
	switch {
	case subject == "":
		st = state.BackendStatus{State: failed, Reason: problem}
	case !ok && r.cfg.Enrolled != nil && r.cfg.Enrolled(subject):
		st = state.BackendStatus{State: state.StateAttesting, Reason: "enrolled; waiting for its first quote"}
	case !ok:
		st = state.BackendStatus{State: state.StateRegistered, Reason: "waiting for the host's agent to enroll as " + subject}
	case res.Admits(now) && res.TrustLevel < sv.MinTrust:
		st = state.BackendStatus{State: failed, Reason: fmt.Sprintf("trust level %s is below the service's minimum %s", res.TrustLevel, sv.MinTrust)}
	case res.Admits(now) && b.Drain:
		st, admitsUntil = state.BackendStatus{State: state.StateDraining, Reason: "drain requested"}, res.Expires
	case res.Admits(now):
		st, admitsUntil = state.BackendStatus{State: state.StateAdmitted,
			Reason: fmt.Sprintf("attestation affirming (policy %s, trust %s)", res.Policy, res.TrustLevel)}, res.Expires
	case res.Status == attest.StatusAffirming:
		st = state.BackendStatus{State: failed, Reason: "attestation result expired at " + res.Expires.UTC().Format(time.RFC3339Nano)}
	default:
		reason := string(res.Status)
		if len(res.Reasons) > 0 {
			reason += ": " + strings.Join(res.Reasons, "; ")
		}
		st = state.BackendStatus{State: failed, Reason: reason}
	}
	if ok {
		last := res
		st.LastResult = &last
	}
	if st.State == state.StateAdmitted || st.State == state.StateDraining {
		st, admitsUntil = r.gate(st, admitsUntil, peer, problem, failed, now)
	}
	if k := (backendKey{b.Tenant, b.Service, b.Name}); r.held[k] {
		if r.fresh[subject] {
			if delete(r.held, k); len(r.held) == 0 {
				r.fresh = nil // nothing left to hold: results need no record
			}
		} else if st.State == state.StateAdmitted || st.State == state.StateDraining {
			st = state.BackendStatus{State: state.StateEvicted, LastResult: st.LastResult,
				Reason: "evicted in the fast path when the gateway started: waiting for a result newer than the stored one"}
			admitsUntil = time.Time{}
		}
	}
	st.Since = prev.Since
	return st, admitsUntil, subject
}

// gate keeps an attested backend out while nothing can carry its traffic: it is on a
// segment no peer can be told to be its host of, or the link with the peer it is
// reached through is not up. Before its first admission it waits; afterwards it is
// evicted, as by a failed result. A backend the gateway reaches directly passes.
func (r *Reconciler) gate(st state.BackendStatus, until time.Time, peer *state.OverlayPeer, problem string, failed state.BackendState, now time.Time) (state.BackendStatus, time.Time) {
	out := state.StateWaiting
	if failed == state.StateEvicted {
		out = failed
	}
	switch {
	case problem != "":
		return state.BackendStatus{State: out, Reason: problem, LastResult: st.LastResult}, time.Time{}
	case peer == nil:
		return st, until
	case r.cfg.Links == nil:
		return state.BackendStatus{State: out, Reason: "reached through overlay peer " + peer.Name + ", but this gateway runs no overlay",
			LastResult: st.LastResult}, time.Time{}
	}
	l := r.cfg.Links.Link(peer.Subject, now)
	if !l.Up {
		reason := "waiting for overlay link " + peer.Name + ": " + l.Why
		if out == state.StateEvicted {
			reason = "overlay link " + peer.Name + " down: " + l.Why
		}
		return state.BackendStatus{State: out, Reason: reason, LastResult: st.LastResult}, time.Time{}
	}
	if !l.Until.IsZero() && (until.IsZero() || l.Until.Before(until)) {
		until = l.Until
	}
	st.Reason += "; overlay link " + peer.Name + " up"
	return st, until
}

// commit makes next the current statuses, stamping changed ones with when they took
// effect, and returns the transitions.
func (r *Reconciler) commit(next map[backendKey]state.BackendStatus, at time.Time) []state.Transition {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []state.Transition
	for k, st := range next {
		prev, had := r.statuses[k]
		if !had || prev.State != st.State {
			st.Since = at
			from := prev.State
			if !had {
				from = ""
			}
			out = append(out, state.Transition{Time: at, Tenant: k.tenant, Service: k.service, Backend: k.name, From: from, To: st.State, Reason: st.Reason})
		}
		next[k] = st
	}
	r.statuses = next
	r.stats.Transitions += uint64(len(out))
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i], out[j]
		return a.Tenant+"/"+a.Service+"/"+a.Backend < b.Tenant+"/"+b.Service+"/"+b.Backend
	})
	return out
}

// flush stores the standings that changed, the results worth a history entry and the
// transitions not yet stored, in one commit.
func (r *Reconciler) flush() error {
	r.storing.Lock()
	defer r.storing.Unlock()
	r.mu.Lock()
	latest := make([]attest.Result, 0, len(r.dirty))
	for sub := range r.dirty {
		latest = append(latest, r.standings[sub])
	}
	history, transitions := r.history, r.transitions
	r.dirty, r.history, r.transitions, r.urgent = map[string]bool{}, nil, nil, false
	r.mu.Unlock()
	if len(latest) == 0 && len(history) == 0 && len(transitions) == 0 {
		return nil
	}
	if err := r.cfg.State.SaveOutcome(latest, history, transitions); err != nil {
		r.mu.Lock() // keep them for the next flush
		for _, res := range latest {
			if _, newer := r.dirty[res.Subject]; !newer {
				r.dirty[res.Subject] = true
			}
		}
		r.history = append(history, r.history...)
		r.transitions = append(transitions, r.transitions...)
		r.urgent = true
		r.mu.Unlock()
		return err
	}
	return nil
}

// refreshPolicies rebuilds the verifier's view: subject -> policy (with its EK pin),
// from the registered backends and overlay peers.
func (r *Reconciler) refreshPolicies(sn *state.Snapshot) {
	pols := map[string]*state.Policy{}
	for i := range sn.Policies {
		p := &sn.Policies[i]
		pols[p.Tenant+"/"+p.Name] = p
	}
	out := map[string]*verifier.Policy{}
	add := func(subject, policy, ekSHA256 string) {
		if _, done := out[subject]; done {
			return // the store guarantees a host's backends and peer agree on policy and EK
		}
		p, ok := pols[policy]
		if !ok {
			return
		}
		vp, err := p.Verifier(policy)
		if err != nil {
			r.cfg.Log.Error("attestation policy unusable", "policy", policy, "error", err)
			return
		}
		if ekSHA256 != "" {
			ek, _ := verifier.ParseDigest(ekSHA256)
			vp.AllowedEKs, vp.PinEKs = append(vp.AllowedEKs, ek), true
		}
		out[subject] = vp
	}
	for i := range sn.Backends {
		if b := &sn.Backends[i]; b.OverlayPeer == "" { // another site is appraised as its peer
			add(b.Subject(), b.Tenant+"/"+b.Policy, b.EKSHA256)
		}
	}
	for _, p := range sn.OverlayPeers {
		t, _, _ := strings.Cut(p.Subject, "/")
		add(p.Subject, t+"/"+p.Policy, p.EKSHA256)
	}
	r.policies.Store(&out)
}

// Policy implements verifier.PolicySource from the registered backends and overlay
// peers.
func (r *Reconciler) Policy(subject string) (*verifier.Policy, error) {
	p, ok := (*r.policies.Load())[subject]
	if !ok {
		return nil, fmt.Errorf("no backend or overlay peer is registered as %q", subject)
	}
	return p, nil
}

// BackendStatus implements the API's view of a backend.
func (r *Reconciler) BackendStatus(tenantName, service, backend string) state.BackendStatus {
	r.mu.Lock()
	defer r.mu.Unlock()
	st, ok := r.statuses[backendKey{tenantName, service, backend}]
	if !ok {
		return state.BackendStatus{State: state.StateRegistered, Reason: "not reconciled yet"}
	}
	return st
}

// Stats returns the counters and the number of backends in each state.
func (r *Reconciler) Stats() Stats {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.stats
	s.ByState = map[state.BackendState]int{}
	for _, st := range r.statuses {
		s.ByState[st.State]++
	}
	return s
}

// TenantStates counts a tenant's backends by state.
func (r *Reconciler) TenantStates(tenantName string) map[state.BackendState]int {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := map[state.BackendState]int{}
	for k, st := range r.statuses {
		if k.tenant == tenantName {
			out[st.State]++
		}
	}
	return out
}

var _ verifier.Subscriber = (*Reconciler)(nil)
