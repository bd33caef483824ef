package state

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/seed4c/moat/controlapi/kv"
	"github.com/seed4c/moat/lb"
	"github.com/seed4c/moat/tenant"
)

// Errors of the store; the API maps them to HTTP statuses.
var (
	ErrNotFound = errors.New("not found")
	ErrExists   = errors.New("already exists")
	// ErrVersion: the object changed since the version the writer based its change on.
	ErrVersion = errors.New("version mismatch")
	// ErrInUse: the object has dependents (a tenant with services, a policy in use).
	ErrInUse = errors.New("in use")
)

// InvalidError is a write refused because the resulting configuration is invalid.
type InvalidError struct{ Err error }

func (e *InvalidError) Error() string { return "invalid configuration: " + e.Err.Error() }
func (e *InvalidError) Unwrap() error { return e.Err }

// Validator checks a whole desired configuration (the gateway passes tenant.Validate
// with its interfaces and limits).
type Validator func(tenant.Config) error

// Store is the desired state on a kv.Store.
type Store struct {
	kv       kv.Store
	validate Validator
	overlay  func(*Snapshot) error
	now      func() time.Time

	mu   sync.Mutex
	subs []chan struct{}
}

// New returns a Store over kvs. validate may be nil (no whole-configuration check).
func New(kvs kv.Store, validate Validator, now func() time.Time) *Store {
	if now == nil {
		now = time.Now
	}
	return &Store{kv: kvs, validate: validate, now: now}
}

// CheckOverlay adds what the gateway checks of the overlay part of every
// configuration the store would hold (its overlay addresses, whether it runs one at
// all), beside the checks that need no gateway. Call it before the first write.
func (s *Store) CheckOverlay(check func(*Snapshot) error) { s.overlay = check }

// Changes returns a channel that receives a value after every committed change of
// the desired state (not of results or transitions). It has room for one value: a
// slow reader sees one notification for many changes, never a blocked writer.
func (s *Store) Changes() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := make(chan struct{}, 1)
	s.subs = append(s.subs, c)
	return c
}

func (s *Store) notify() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range s.subs {
		select {
		case c <- struct{}{}:
		default:
		}
	}
}

// record is what every stored kind implements.
type record interface {
	key() string
	meta() *Meta
	check() error // names and fields the whole-configuration check does not cover
}

func (t *Tenant) key() string      { return t.Name }
func (t *Service) key() string     { return t.Tenant + "/" + t.Name }
func (b *Backend) key() string     { return b.Tenant + "/" + b.Service + "/" + b.Name }
func (r *Rule) key() string        { return r.Tenant + "/" + r.Name }
func (p *Policy) key() string      { return p.Tenant + "/" + p.Name }
func (p *OverlayPeer) key() string { return p.Name }
func (t *Tenant) meta() *Meta      { return &t.Meta }
func (t *Service) meta() *Meta     { return &t.Meta }
func (b *Backend) meta() *Meta     { return &b.Meta }
func (r *Rule) meta() *Meta        { return &r.Meta }
func (p *Policy) meta() *Meta      { return &p.Meta }
func (p *OverlayPeer) meta() *Meta { return &p.Meta }
func (t *Tenant) check() error {
	if err := names("tenant", t.Name); err != nil {
		return err
	}
	if o := t.Overlay; o != nil {
		if o.VNI == 0 || o.VNI >= 1<<24 {
			return fmt.Errorf("tenant %s: overlay VNI %d: want 1 to 16777215", t.Name, o.VNI)
		}
		if a := o.Address; !a.IsValid() || !a.Addr().Is4() || a.Bits() > 30 || a.Addr() == a.Masked().Addr() {
			return fmt.Errorf("tenant %s: overlay address %v: want the gateway's IPv4 address on the segment with its prefix (at most /30)", t.Name, a)
		}
	}
	return nil
}
func (t *Service) check() error {
	if err := names("tenant", t.Tenant, "service", t.Name); err != nil {
		return err
	}
	if t.Protocol != tenant.TCP && t.Protocol != tenant.UDP {
		return fmt.Errorf("service %s: protocol missing or unknown (want tcp or udp)", t.Name)
	}
	if _, err := t.MinTrust.MarshalText(); err != nil {
		return fmt.Errorf("service %s: min_trust: %w", t.Name, err)
	}
	return nil
}
func (r *Rule) check() error { return names("tenant", r.Tenant, "rule", r.Name) }

func (b *Backend) check() error {
	if b.OverlayPeer != "" {
		if err := names("tenant", b.Tenant, "service", b.Service, "backend", b.Name, "overlay peer", b.OverlayPeer); err != nil {
			return err
		}
		if b.Identity != "" || b.Policy != "" || b.EKSHA256 != "" {
			return fmt.Errorf("backend %s: another site (overlay_peer %s) is appraised as that peer: give no identity, policy or ek_sha256", b.Name, b.OverlayPeer)
		}
		return nil
	}
	if err := names("tenant", b.Tenant, "service", b.Service, "backend", b.Name, "identity", b.Identity, "policy", b.Policy); err != nil {
		return err
	}
	if b.EKSHA256 != "" {
		if _, err := parseDigest(b.EKSHA256); err != nil {
			return fmt.Errorf("ek_sha256: %w", err)
		}
	}
	return nil
}

func (p *Policy) check() error {
	if err := names("tenant", p.Tenant, "policy", p.Name); err != nil {
		return err
	}
	_, err := p.Verifier("check")
	return err
}

func names(kv ...string) error {
	for i := 0; i+1 < len(kv); i += 2 {
		if err := tenant.CheckName(kv[i+1]); err != nil {
			return fmt.Errorf("%s %w", kv[i], err)
		}
	}
	return nil
}

// collection is one bucket of one kind.
type collection[T any, P interface {
	*T
	record
}] struct{ bucket string }

var (
	tenants      = collection[Tenant, *Tenant]{"tenants"}
	services     = collection[Service, *Service]{"services"}
	backends     = collection[Backend, *Backend]{"backends"}
	rules        = collection[Rule, *Rule]{"rules"}
	policies     = collection[Policy, *Policy]{"policies"}
	overlayPeers = collection[OverlayPeer, *OverlayPeer]{"overlay_peers"}
)

func (c collection[T, P]) get(tx kv.Tx, key string) (*T, error) {
	raw, err := tx.Get(c.bucket, key)
	if errors.Is(err, kv.ErrNotFound) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, err
	}
	v := new(T)
	if err := json.Unmarshal(raw, v); err != nil {
		return nil, fmt.Errorf("decode %s %s: %w", c.bucket, key, err)
	}
	return v, nil
}

func (c collection[T, P]) put(tx kv.Tx, v P) error {
	raw, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode %s %s: %w", c.bucket, v.key(), err)
	}
	return tx.Put(c.bucket, v.key(), raw)
}

// list returns up to limit objects under prefix after the key after, and the key to
// continue from ("" when there is nothing more).
func (c collection[T, P]) list(tx kv.Tx, prefix, after string, limit int) ([]T, string, error) {
	var (
		out  []T
		next string
		derr error
	)
	err := tx.Scan(c.bucket, prefix, after, func(k string, raw []byte) bool {
		if limit > 0 && len(out) == limit {
			next = P(&out[len(out)-1]).key()
			return false
		}
		var v T
		if derr = json.Unmarshal(raw, &v); derr != nil {
			derr = fmt.Errorf("decode %s %s: %w", c.bucket, k, derr)
			return false
		}
		out = append(out, v)
		return true
	})
	return out, next, errors.Join(err, derr)
}

func (c collection[T, P]) count(tx kv.Tx, prefix string) (int, error) {
	n := 0
	err := tx.Scan(c.bucket, prefix, "", func(string, []byte) bool { n++; return true })
	return n, err
}

// write runs fn in a transaction, validates the configuration it leaves, and notifies
// subscribers once it is committed.
func (s *Store) write(fn func(tx kv.Tx) error) error {
	err := s.kv.Update(func(tx kv.Tx) error {
		if err := fn(tx); err != nil {
			return err
		}
		sn, err := readSnapshot(tx)
		if err != nil {
			return err
		}
		if err := errors.Join(sn.checkIdentities(), sn.checkOverlay()); err != nil {
			return &InvalidError{Err: err}
		}
		if s.overlay != nil {
			if err := s.overlay(sn); err != nil {
				return &InvalidError{Err: err}
			}
		}
		if s.validate == nil {
			return nil
		}
		if err := s.validate(sn.Config(nil)); err != nil {
			return &InvalidError{Err: err}
		}
		return nil
	})
	if err == nil {
		s.notify()
	}
	return err
}

func create[T any, P interface {
	*T
	record
}](s *Store, c collection[T, P], v P, parent func(kv.Tx) error) (T, error) {
	if err := v.check(); err != nil {
		return *new(T), &InvalidError{Err: err}
	}
	now := s.now().UTC()
	*v.meta() = Meta{Version: 1, Created: now, Updated: now}
	err := s.write(func(tx kv.Tx) error {
		if _, err := c.get(tx, v.key()); err == nil {
			return fmt.Errorf("%s %s: %w", strings.TrimSuffix(c.bucket, "s"), v.key(), ErrExists)
		} else if !errors.Is(err, ErrNotFound) {
			return err
		}
		if parent != nil {
			if err := parent(tx); err != nil {
				return err
			}
		}
		return c.put(tx, v)
	})
	return *(*T)(v), err
}

func update[T any, P interface {
	*T
	record
}](s *Store, c collection[T, P], v P, ifMatch uint64, parent func(kv.Tx) error) (T, error) {
	if err := v.check(); err != nil {
		return *new(T), &InvalidError{Err: err}
	}
	err := s.write(func(tx kv.Tx) error {
		cur, err := c.get(tx, v.key())
		if err != nil {
			return fmt.Errorf("%s %s: %w", strings.TrimSuffix(c.bucket, "s"), v.key(), err)
		}
		m := P(cur).meta()
		if m.Version != ifMatch {
			return fmt.Errorf("%s %s is at version %d, not %d: %w", strings.TrimSuffix(c.bucket, "s"), v.key(), m.Version, ifMatch, ErrVersion)
		}
		if parent != nil {
			if err := parent(tx); err != nil {
				return err
			}
		}
		*v.meta() = Meta{Version: m.Version + 1, Created: m.Created, Updated: s.now().UTC()}
		return c.put(tx, v)
	})
	return *(*T)(v), err
}

// remove deletes key; ifMatch 0 means "whatever its version".
func remove[T any, P interface {
	*T
	record
}](s *Store, c collection[T, P], key string, ifMatch uint64, inUse func(kv.Tx) error) error {
	return s.write(func(tx kv.Tx) error {
		cur, err := c.get(tx, key)
		if err != nil {
			return fmt.Errorf("%s %s: %w", strings.TrimSuffix(c.bucket, "s"), key, err)
		}
		if v := P(cur).meta().Version; ifMatch != 0 && v != ifMatch {
			return fmt.Errorf("%s %s is at version %d, not %d: %w", strings.TrimSuffix(c.bucket, "s"), key, v, ifMatch, ErrVersion)
		}
		if inUse != nil {
			if err := inUse(tx); err != nil {
				return err
			}
		}
		return tx.Delete(c.bucket, key)
	})
}

func getOne[T any, P interface {
	*T
	record
}](s *Store, c collection[T, P], key string) (T, error) {
	var out T
	err := s.kv.View(func(tx kv.Tx) error {
		v, err := c.get(tx, key)
		if err != nil {
			return fmt.Errorf("%s %s: %w", strings.TrimSuffix(c.bucket, "s"), key, err)
		}
		out = *v
		return nil
	})
	return out, err
}

func listSome[T any, P interface {
	*T
	record
}](s *Store, c collection[T, P], prefix, after string, limit int) ([]T, string, error) {
	var (
		out  []T
		next string
	)
	err := s.kv.View(func(tx kv.Tx) (err error) {
		out, next, err = c.list(tx, prefix, after, limit)
		return err
	})
	return out, next, err
}

func exists[T any, P interface {
	*T
	record
}](tx kv.Tx, c collection[T, P], key string) error {
	if _, err := c.get(tx, key); err != nil {
		return fmt.Errorf("%s %s: %w", strings.TrimSuffix(c.bucket, "s"), key, err)
	}
	return nil
}

func empty[T any, P interface {
	*T
	record
}](tx kv.Tx, c collection[T, P], prefix, what string) error {
	n, err := c.count(tx, prefix)
	if err != nil {
		return err
	}
	if n > 0 {
		return fmt.Errorf("%s has %d %s: delete them first: %w", what, n, c.bucket, ErrInUse)
	}
	return nil
}

// Snapshot is the whole desired state read in one transaction.
type Snapshot struct {
	Tenants      []Tenant
	Services     []Service
	Backends     []Backend
	Rules        []Rule
	Policies     []Policy
	OverlayPeers []OverlayPeer
}

func readSnapshot(tx kv.Tx) (*Snapshot, error) {
	sn := &Snapshot{}
	var errs [6]error
	sn.Tenants, _, errs[0] = tenants.list(tx, "", "", 0)
	sn.Services, _, errs[1] = services.list(tx, "", "", 0)
	sn.Backends, _, errs[2] = backends.list(tx, "", "", 0)
	sn.Rules, _, errs[3] = rules.list(tx, "", "", 0)
	sn.Policies, _, errs[4] = policies.list(tx, "", "", 0)
	sn.OverlayPeers, _, errs[5] = overlayPeers.list(tx, "", "", 0)
	if err := errors.Join(errs[:]...); err != nil {
		return nil, err
	}
	return sn, nil
}

// checkIdentities refuses two backends or overlay peers of one host (tenant and
// identity) that disagree on how it is appraised: the verifier has one policy per
// subject.
func (sn *Snapshot) checkIdentities() error {
	type appraisal struct{ what, policy, ek string }
	first := map[string]appraisal{}
	check := func(subject string, a appraisal) error {
		f, seen := first[subject]
		if !seen {
			first[subject] = a
			return nil
		}
		if f.policy != a.policy || f.ek != a.ek {
			return fmt.Errorf("%s and %s are both host %q but name different policies or EKs", f.what, a.what, subject)
		}
		return nil
	}
	for i := range sn.Backends {
		b := &sn.Backends[i]
		if b.OverlayPeer != "" {
			continue // appraised as the peer
		}
		if err := check(b.Subject(), appraisal{"backend " + b.key(), b.Tenant + "/" + b.Policy, b.EKSHA256}); err != nil {
			return err
		}
	}
	for _, p := range sn.OverlayPeers {
		t, _, _ := strings.Cut(p.Subject, "/")
		if err := check(p.Subject, appraisal{"overlay peer " + p.Name, t + "/" + p.Policy, p.EKSHA256}); err != nil {
			return err
		}
	}
	return nil
}

// Snapshot reads the whole desired state consistently.
func (s *Store) Snapshot() (*Snapshot, error) {
	var sn *Snapshot
	err := s.kv.View(func(tx kv.Tx) (err error) {
		sn, err = readSnapshot(tx)
		return err
	})
	return sn, err
}

// Config is the tenant configuration of the snapshot. state gives each backend's
// admission state; nil admits every backend (for validation: whether a configuration
// is valid does not depend on who is attested).
func (sn *Snapshot) Config(state func(*Backend, *Service) lb.State) tenant.Config {
	// Every list is sorted by key, so children follow their parents in order.
	svcs := map[string][]*Service{}
	for i := range sn.Services {
		sv := &sn.Services[i]
		svcs[sv.Tenant] = append(svcs[sv.Tenant], sv)
	}
	bks := map[string][]*Backend{}
	for i := range sn.Backends {
		b := &sn.Backends[i]
		k := b.Tenant + "/" + b.Service
		bks[k] = append(bks[k], b)
	}
	rls := map[string][]*Rule{}
	for i := range sn.Rules {
		r := &sn.Rules[i]
		rls[r.Tenant] = append(rls[r.Tenant], r)
	}
	cfg := tenant.Config{Tenants: make([]tenant.Tenant, 0, len(sn.Tenants))}
	for _, t := range sn.Tenants {
		out := tenant.Tenant{Name: t.Name, FIBTable: t.FIBTable, Attachments: t.Attachments}
		if t.Overlay != nil {
			out.Attachments = append(slices.Clone(t.Attachments), tenant.Attachment{Interface: SegmentInterface(t.Overlay.VNI)})
		}
		for _, sv := range svcs[t.Name] {
			ts := tenant.Service{Name: sv.Name, VIP: sv.VIP, Port: sv.Port, Protocol: sv.Protocol, MaglevSize: sv.MaglevSize}
			for _, b := range bks[sv.Tenant+"/"+sv.Name] {
				st := lb.StateAdmitted
				if state != nil {
					st = state(b, sv)
				}
				ts.Backends = append(ts.Backends, tenant.Backend{Name: b.Name, Addr: b.Addr, Port: b.Port, Weight: b.Weight, State: st})
			}
			out.Services = append(out.Services, ts)
		}
		for _, r := range rls[t.Name] {
			out.Rules = append(out.Rules, tenant.Rule{Name: r.Name, Sources: r.Sources, Services: r.Services})
		}
		cfg.Tenants = append(cfg.Tenants, out)
	}
	return cfg
}
