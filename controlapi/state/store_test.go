package state

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/seed4c/moat/attest"
	"github.com/seed4c/moat/controlapi/kv"
	"github.com/seed4c/moat/lb"
	"github.com/seed4c/moat/tenant"
)

func newStore(t *testing.T) *Store {
	t.Helper()
	validate := func(c tenant.Config) error {
		return tenant.Validate(c, tenant.StaticInterfaces{"eth0": 2, "eth1": 3}, tenant.IDs{}, tenant.DefaultLimits())
	}
	clock := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	return New(kv.NewMem(), validate, func() time.Time { clock = clock.Add(time.Second); return clock })
}

const digest = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"

// populate creates tenant a with service web, policy app, backend w1 and a rule.
func populate(t *testing.T, s *Store) {
	t.Helper()
	steps := []error{
		second(s.CreateTenant(Tenant{Name: "a", Attachments: []tenant.Attachment{{Interface: "eth0"}}})),
		second(s.CreateService(Service{Tenant: "a", Name: "web", VIP: netip.MustParseAddr("10.100.0.1"), Port: 80, Protocol: tenant.TCP})),
		second(s.CreatePolicy(Policy{Tenant: "a", Name: "app", References: map[string][]string{"/srv/app": {digest}}})),
		second(s.CreateBackend(Backend{Tenant: "a", Service: "web", Name: "w1", Identity: "host-1", Addr: netip.MustParseAddr("10.1.0.1"), Weight: 1, Policy: "app"})),
		second(s.CreateRule(Rule{Tenant: "a", Name: "lan", Sources: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/24")}, Services: []string{"web"}})),
	}
	for i, err := range steps {
		if err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
	}
}

func second[T any](_ T, err error) error { return err }

func TestCreateGetUpdateDelete(t *testing.T) {
	s := newStore(t)
	populate(t, s)
	svc, err := s.GetService("a", "web")
	if err != nil {
		t.Fatal(err)
	}
	if svc.Version != 1 || svc.Created.IsZero() || svc.Updated != svc.Created {
		t.Fatalf("new object meta: %+v", svc.Meta)
	}
	svc.Port = 8080
	up, err := s.UpdateService(svc, 1)
	if err != nil {
		t.Fatal(err)
	}
	if up.Version != 2 || up.Created != svc.Created || !up.Updated.After(up.Created) {
		t.Fatalf("updated meta: %+v", up.Meta)
	}
	// A writer who read version 1 cannot overwrite version 2.
	svc.Port = 9090
	if _, err := s.UpdateService(svc, 1); !errors.Is(err, ErrVersion) {
		t.Fatalf("stale update: %v", err)
	}
	if got, _ := s.GetService("a", "web"); got.Port != 8080 {
		t.Fatalf("stale update changed the service: port %d", got.Port)
	}
	if _, err := s.CreateService(Service{Tenant: "a", Name: "web", VIP: netip.MustParseAddr("10.100.0.2"), Port: 80, Protocol: tenant.TCP}); !errors.Is(err, ErrExists) {
		t.Fatalf("create twice: %v", err)
	}
	if _, err := s.GetService("a", "nope"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("get missing: %v", err)
	}
	if err := s.DeleteTenant("a", 0); !errors.Is(err, ErrInUse) {
		t.Fatalf("delete a tenant with services: %v", err)
	}
	if err := s.DeletePolicy("a", "app", 0); !errors.Is(err, ErrInUse) {
		t.Fatalf("delete a policy in use: %v", err)
	}
	if err := s.DeleteBackend("a", "web", "w1", 7); !errors.Is(err, ErrVersion) {
		t.Fatalf("delete with a wrong version: %v", err)
	}
	for _, err := range []error{
		s.DeleteBackend("a", "web", "w1", 1),
		s.DeleteRule("a", "lan", 0),
		s.DeleteService("a", "web", 0),
		s.DeletePolicy("a", "app", 0),
		s.DeleteTenant("a", 0),
	} {
		if err != nil {
			t.Fatal(err)
		}
	}
	if ts, _, _ := s.ListTenants("", 0); len(ts) != 0 {
		t.Fatalf("tenants left: %v", ts)
	}
}

// TestWritesValidatedWhole: a write that would make the configuration invalid is
// refused and leaves nothing behind.
func TestWritesValidatedWhole(t *testing.T) {
	s := newStore(t)
	populate(t, s)
	cases := map[string]error{
		"duplicate VIP": second(s.CreateService(Service{Tenant: "a", Name: "web2", VIP: netip.MustParseAddr("10.100.0.1"), Port: 80, Protocol: tenant.TCP})),
		"unknown iface": second(s.CreateTenant(Tenant{Name: "b", Attachments: []tenant.Attachment{{Interface: "eth9"}}})),
		"zero weight":   second(s.CreateBackend(Backend{Tenant: "a", Service: "web", Name: "w2", Identity: "h2", Addr: netip.MustParseAddr("10.1.0.2"), Policy: "app"})),
		"rule to nothing": second(s.CreateRule(Rule{Tenant: "a", Name: "x", Sources: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")},
			Services: []string{"nope"}})),
		"bad name":            second(s.CreateTenant(Tenant{Name: "A/B"})),
		"bad digest":          second(s.CreatePolicy(Policy{Tenant: "a", Name: "p2", References: map[string][]string{"/x": {"zz"}}})),
		"no refs":             second(s.CreatePolicy(Policy{Tenant: "a", Name: "p3"})),
		"bad ek":              second(s.CreateBackend(Backend{Tenant: "a", Service: "web", Name: "w3", Identity: "h3", Addr: netip.MustParseAddr("10.1.0.3"), Weight: 1, Policy: "app", EKSHA256: "x"})),
		"no policy":           second(s.CreateBackend(Backend{Tenant: "a", Service: "web", Name: "w4", Identity: "h4", Addr: netip.MustParseAddr("10.1.0.4"), Weight: 1, Policy: "nope"})),
		"no tenant":           second(s.CreateService(Service{Tenant: "zz", Name: "web", VIP: netip.MustParseAddr("10.100.0.9"), Port: 80, Protocol: tenant.TCP})),
		"service with a rule": s.DeleteService("a", "web", 0), // has a backend: in use
	}
	for name, err := range cases {
		var inv *InvalidError
		switch {
		case err == nil:
			t.Errorf("%s: accepted", name)
		case name == "no policy" || name == "no tenant":
			if !errors.Is(err, ErrNotFound) {
				t.Errorf("%s: %v", name, err)
			}
		case name == "service with a rule":
			if !errors.Is(err, ErrInUse) {
				t.Errorf("%s: %v", name, err)
			}
		case !errors.As(err, &inv):
			t.Errorf("%s: not an InvalidError: %v", name, err)
		}
	}
	sn, err := s.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	if len(sn.Tenants) != 1 || len(sn.Services) != 1 || len(sn.Backends) != 1 || len(sn.Rules) != 1 || len(sn.Policies) != 1 {
		t.Fatalf("refused writes left something: %+v", sn)
	}
	// Deleting the rule's service through the rule's own deletion first works.
	if err := s.DeleteBackend("a", "web", "w1", 0); err != nil {
		t.Fatal(err)
	}
	err = s.DeleteService("a", "web", 0)
	var inv *InvalidError
	if !errors.As(err, &inv) || !strings.Contains(err.Error(), "unknown service") {
		t.Fatalf("deleting a service a rule names: %v", err)
	}
}

func TestChangesAndSnapshotConfig(t *testing.T) {
	s := newStore(t)
	ch := s.Changes()
	populate(t, s)
	select {
	case <-ch:
	default:
		t.Fatal("no change notification")
	}
	select {
	case <-ch:
		t.Fatal("more than one pending notification")
	default:
	}
	sn, err := s.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	cfg := sn.Config(func(b *Backend, sv *Service) lb.State {
		if b.Subject() != "a/host-1" || sv.Name != "web" {
			t.Errorf("state asked for %s of %s", b.Subject(), sv.Name)
		}
		return lb.StateDraining
	})
	if len(cfg.Tenants) != 1 || len(cfg.Tenants[0].Services) != 1 || cfg.Tenants[0].Services[0].Backends[0].State != lb.StateDraining ||
		len(cfg.Tenants[0].Rules) != 1 {
		t.Fatalf("config %+v", cfg)
	}
}

func TestListPagination(t *testing.T) {
	s := newStore(t)
	for i := range 7 {
		if _, err := s.CreateTenant(Tenant{Name: fmt.Sprintf("t%d", i)}); err != nil {
			t.Fatal(err)
		}
	}
	var all []string
	after := ""
	for pages := 0; ; pages++ {
		ts, next, err := s.ListTenants(after, 3)
		if err != nil {
			t.Fatal(err)
		}
		for _, x := range ts {
			all = append(all, x.Name)
		}
		if next == "" {
			break
		}
		if pages > 5 {
			t.Fatal("pagination does not end")
		}
		after = next
	}
	if strings.Join(all, ",") != "t0,t1,t2,t3,t4,t5,t6" {
		t.Fatalf("pages gave %v", all)
	}
}

func TestHistory(t *testing.T) {
	s := newStore(t)
	now := time.Now()
	for i := range ResultsKept + 5 {
		st := attest.StatusAffirming
		if i%2 == 1 {
			st = attest.StatusExpired
		}
		if err := s.AppendResult(attest.Result{Subject: "a/h", Status: st, Issued: now}); err != nil {
			t.Fatal(err)
		}
	}
	s.AppendResult(attest.Result{Subject: "b/h", Status: attest.StatusAffirming})
	rs, _, err := s.ListResults("a/h", 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(rs) != ResultsKept || rs[0].Seq != 6 || rs[len(rs)-1].Seq != ResultsKept+5 {
		t.Fatalf("kept %d results, seq %d..%d", len(rs), rs[0].Seq, rs[len(rs)-1].Seq)
	}
	page, next, _ := s.ListResults("a/h", 0, 10)
	if len(page) != 10 || next != page[9].Seq {
		t.Fatalf("page of 10: %d, next %d", len(page), next)
	}
	for i, tn := range []string{"a", "b", "a"} {
		if _, err := s.AppendTransition(Transition{Tenant: tn, Backend: fmt.Sprint(i), From: StateAttesting, To: StateAdmitted}); err != nil {
			t.Fatal(err)
		}
	}
	trs, _, err := s.ListTransitions("a", 0, 0)
	if err != nil || len(trs) != 2 || trs[0].Backend != "0" || trs[1].Backend != "2" {
		t.Fatalf("tenant a's transitions: %+v %v", trs, err)
	}
	all, next2, _ := s.ListTransitions("", 0, 2)
	if len(all) != 2 || next2 != 2 {
		t.Fatalf("first page of all transitions: %+v next %d", all, next2)
	}
	ids := tenant.IDs{Tenants: map[string]uint32{"a": 1}}
	if err := s.SaveIDs(ids); err != nil {
		t.Fatal(err)
	}
	if got, err := s.LoadIDs(); err != nil || got.Tenants["a"] != 1 {
		t.Fatalf("ids: %+v %v", got, err)
	}
}

// commitCounter counts a store's commits.
type commitCounter struct {
	kv.Store
	commits int
}

func (c *commitCounter) Update(fn func(kv.Tx) error) error {
	c.commits++
	return c.Store.Update(fn)
}

// TestSaveIDsCommitsChangesOnly: saving the ids the store holds commits nothing;
// saving others does.
func TestSaveIDsCommitsChangesOnly(t *testing.T) {
	kvs := &commitCounter{Store: kv.NewMem()}
	s := New(kvs, nil, nil)
	ids := tenant.IDs{Tenants: map[string]uint32{"a": 1, "b": 2}, Backends: map[string]uint32{"a/web/w1": 7}}
	for range 3 {
		if err := s.SaveIDs(ids); err != nil {
			t.Fatal(err)
		}
	}
	if kvs.commits != 1 {
		t.Fatalf("the same ids saved three times: %d commits, want 1", kvs.commits)
	}
	ids.Backends = map[string]uint32{"a/web/w1": 7, "a/web/w2": 8}
	if err := s.SaveIDs(ids); err != nil {
		t.Fatal(err)
	}
	if got, err := s.LoadIDs(); err != nil || kvs.commits != 2 || got.Backends["a/web/w2"] != 8 {
		t.Fatalf("changed ids: %d commits, stored %+v, %v", kvs.commits, got, err)
	}
}

func TestPolicyVerifier(t *testing.T) {
	p := Policy{Tenant: "a", Name: "app", References: map[string][]string{"/srv/app": {digest}}, AllowedEKs: []string{digest}}
	v, err := p.Verifier("a/app")
	if err != nil {
		t.Fatal(err)
	}
	if v.Name != "a/app" || v.MeasurementPCR != attest.DefaultMeasurementPCR || len(v.References["/srv/app"]) != 1 || len(v.AllowedEKs) != 1 {
		t.Fatalf("verifier policy %+v", v)
	}
	p.MeasurementPCR = 3
	if _, err := p.Verifier("x"); err == nil {
		t.Fatal("firmware PCR accepted as the measurement PCR")
	}
}

func TestStandings(t *testing.T) {
	s := newStore(t)
	exp := time.Now().Add(time.Minute).UTC().Round(0)
	if err := s.SaveResults([]attest.Result{{Subject: "a/h", Status: attest.StatusAffirming, Expires: exp}},
		[]attest.Result{{Subject: "a/h", Status: attest.StatusContraindicated}}); err != nil {
		t.Fatal(err)
	}
	s.SaveResults([]attest.Result{{Subject: "a/h", Status: attest.StatusExpired}}, nil)
	st, err := s.LoadStandings()
	if err != nil || len(st) != 1 || st["a/h"].Status != attest.StatusExpired {
		t.Fatalf("standings: %+v %v", st, err)
	}
	if rs, _, _ := s.ListResults("a/h", 0, 0); len(rs) != 1 || rs[0].Result.Status != attest.StatusContraindicated {
		t.Fatalf("history: %+v", rs)
	}
}

// TestSaveOutcomeOneCommit: standings, history and transitions go to the store in one
// commit, the transitions numbered in order after those already stored.
func TestSaveOutcomeOneCommit(t *testing.T) {
	kvs := &commitCounter{Store: kv.NewMem()}
	s := New(kvs, nil, nil)
	if _, err := s.AppendTransition(Transition{Tenant: "a", Backend: "w0", To: StateRegistered}); err != nil {
		t.Fatal(err)
	}
	res := attest.Result{Subject: "a/h", Status: attest.StatusContraindicated}
	trs := []Transition{{Tenant: "a", Backend: "w1", From: StateAdmitted, To: StateEvicted}, {Tenant: "a", Backend: "w2", From: StateAdmitted, To: StateEvicted}}
	if err := s.SaveOutcome([]attest.Result{res}, []attest.Result{res}, trs); err != nil {
		t.Fatal(err)
	}
	if kvs.commits != 2 {
		t.Fatalf("%d commits, want 1 for the outcome after 1 for the first transition", kvs.commits)
	}
	got, _, err := s.ListTransitions("a", 0, 0)
	if err != nil || len(got) != 3 || got[1].Backend != "w1" || got[2].Backend != "w2" || got[1].Seq != got[0].Seq+1 || got[2].Seq != got[1].Seq+1 {
		t.Fatalf("transitions %+v %v", got, err)
	}
	if st, _ := s.LoadStandings(); st["a/h"].Status != attest.StatusContraindicated {
		t.Fatalf("standing %+v", st["a/h"])
	}
	if hist, _, _ := s.ListResults("a/h", 0, 0); len(hist) != 1 {
		t.Fatalf("history %+v", hist)
	}
}
