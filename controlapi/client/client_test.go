package client_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/seed4c/moat/attest"
	"github.com/seed4c/moat/controlapi/auth"
	"github.com/seed4c/moat/controlapi/client"
	"github.com/seed4c/moat/controlapi/client/clienttest"
	"github.com/seed4c/moat/controlapi/state"
	"github.com/seed4c/moat/tenant"
)

// recorder remembers every request the client sends.
type recorder struct {
	next http.RoundTripper
	mu   sync.Mutex
	reqs []string // "METHOD /path"
}

func (r *recorder) RoundTrip(req *http.Request) (*http.Response, error) {
	r.mu.Lock()
	r.reqs = append(r.reqs, req.Method+" "+req.URL.Path)
	r.mu.Unlock()
	return r.next.RoundTrip(req)
}

func newClient(t *testing.T, e *clienttest.Env, caller string) (*client.Client, *recorder) {
	t.Helper()
	hc, err := client.NewHTTPClient(client.TLSOptions{CAFile: e.CAFile})
	if err != nil {
		t.Fatal(err)
	}
	rec := &recorder{next: hc.Transport}
	hc.Transport = rec
	return client.New(e.URL+"/", e.Tokens[caller], hc), rec
}

func check(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// TestEveryRoute calls every method as an operator and checks what comes back; then
// it checks that every operation of the server's OpenAPI document was called, so a
// route added to the API without a client method fails here.
func TestEveryRoute(t *testing.T) {
	e := clienttest.New(t)
	c, rec := newClient(t, e, "operator")
	ctx := t.Context()

	// Tenants.
	tn, err := c.CreateTenant(ctx, state.Tenant{Name: "c", Attachments: []tenant.Attachment{{Interface: "eth2", VLAN: 7}}})
	check(t, err)
	if tn.Version != 1 || tn.Created.IsZero() {
		t.Fatalf("created tenant: %+v", tn)
	}
	tn, err = c.GetTenant(ctx, "c")
	check(t, err)
	tn.FIBTable = 9
	tn, err = c.UpdateTenant(ctx, tn, tn.Version)
	check(t, err)
	if tn.Version != 2 || tn.FIBTable != 9 {
		t.Fatalf("updated tenant: %+v", tn)
	}
	tenants, err := c.ListTenants(ctx)
	check(t, err)
	if names(tenants, func(v state.Tenant) string { return v.Name }) != "a,b,c" {
		t.Fatalf("tenants: %v", tenants)
	}

	// Services.
	sv, err := c.CreateService(ctx, state.Service{Tenant: "c", Name: "api", VIP: netip.MustParseAddr("10.100.0.9"), Port: 443,
		Protocol: tenant.TCP, MinTrust: attest.TrustAllowListed})
	check(t, err)
	sv.Port = 8443
	sv, err = c.UpdateService(ctx, sv, sv.Version)
	check(t, err)
	if got, err := c.GetService(ctx, "c", "api"); err != nil || got.Port != 8443 || got.Version != 2 || got.MinTrust != attest.TrustAllowListed {
		t.Fatalf("service: %+v %v", got, err)
	}
	svs, err := c.ListServices(ctx, "c")
	check(t, err)
	if len(svs) != 1 || svs[0].VIP != sv.VIP {
		t.Fatalf("services: %+v", svs)
	}

	// Policies.
	pol, err := c.CreatePolicy(ctx, state.Policy{Tenant: "c", Name: "p", References: map[string][]string{"/bin/app": {clienttest.Digest}}})
	check(t, err)
	pol.AllowedEKs = []string{clienttest.Digest}
	pol.GoldenPCRs = map[int][]string{8: {clienttest.Digest}}
	pol.PCRs = []int{8, 15}
	pol, err = c.UpdatePolicy(ctx, pol, pol.Version)
	check(t, err)
	if got, err := c.GetPolicy(ctx, "c", "p"); err != nil || got.Version != 2 || len(got.GoldenPCRs[8]) != 1 {
		t.Fatalf("policy: %+v %v", got, err)
	}
	pols, err := c.ListPolicies(ctx, "c")
	check(t, err)
	if len(pols) != 1 {
		t.Fatalf("policies: %+v", pols)
	}

	// Backends, drain, attestations.
	e.Live.Set("c", "api", "b1", state.BackendStatus{State: state.StateAdmitted, Reason: "affirming", Since: clienttest.Since})
	bv, err := c.CreateBackend(ctx, state.Backend{Tenant: "c", Service: "api", Name: "b1", Identity: "host1",
		Addr: netip.MustParseAddr("10.3.0.1"), Port: 8443, Weight: 2, Policy: "p"})
	check(t, err)
	if bv.Subject != "c/host1" || bv.Status.State != state.StateAdmitted || bv.Version != 1 {
		t.Fatalf("created backend: %+v", bv)
	}
	b := bv.Backend
	b.Weight = 5
	bv, err = c.UpdateBackend(ctx, b, b.Version)
	check(t, err)
	bv, err = c.DrainBackend(ctx, "c", "api", "b1")
	check(t, err)
	if !bv.Drain || bv.Version != 3 || bv.Weight != 5 {
		t.Fatalf("drained: %+v", bv)
	}
	bv, err = c.UndrainBackend(ctx, "c", "api", "b1")
	check(t, err)
	if bv.Drain || bv.Version != 4 {
		t.Fatalf("undrained: %+v", bv)
	}
	if got, err := c.GetBackend(ctx, "c", "api", "b1"); err != nil || got.Version != 4 || got.Status.Reason != "affirming" {
		t.Fatalf("backend: %+v %v", got, err)
	}
	bvs, err := c.ListBackends(ctx, "c", "api")
	check(t, err)
	if len(bvs) != 1 || bvs[0].Status.State != state.StateAdmitted {
		t.Fatalf("backends: %+v", bvs)
	}
	now := time.Now().UTC().Truncate(time.Second)
	for i := range 3 {
		check(t, e.State.AppendResult(attest.Result{Subject: "c/host1", Status: attest.StatusAffirming, TrustLevel: attest.TrustAllowListed,
			Issued: now.Add(time.Duration(i) * time.Second), Expires: now.Add(time.Minute), Policy: "c/p"}))
	}
	check(t, e.State.AppendResult(attest.Result{Subject: "c/other", Status: attest.StatusAffirming, Issued: now, Expires: now}))
	res, err := c.ListAttestations(ctx, "c", "api", "b1")
	check(t, err)
	if len(res) != 3 || res[0].Result.Subject != "c/host1" || !res[2].Result.Issued.Equal(now.Add(2*time.Second)) {
		t.Fatalf("attestations: %+v", res)
	}

	// Rules.
	r, err := c.CreateRule(ctx, state.Rule{Tenant: "c", Name: "all", Sources: []netip.Prefix{netip.MustParsePrefix("192.168.0.0/16")}, Services: []string{"*"}})
	check(t, err)
	r.Services = []string{"api"}
	r, err = c.UpdateRule(ctx, r, r.Version)
	check(t, err)
	if got, err := c.GetRule(ctx, "c", "all"); err != nil || got.Services[0] != "api" || got.Version != 2 {
		t.Fatalf("rule: %+v %v", got, err)
	}
	rules, err := c.ListRules(ctx, "c")
	check(t, err)
	if len(rules) != 1 {
		t.Fatalf("rules: %+v", rules)
	}

	// Overlay peers, on tenant c's segment.
	tn.Overlay = &state.TenantOverlay{VNI: 11, Address: netip.MustParsePrefix("10.9.0.1/24")}
	tn, err = c.UpdateTenant(ctx, tn, tn.Version)
	check(t, err)
	pv, err := c.CreateOverlayPeer(ctx, state.OverlayPeer{Name: "r", Subject: "c/host1", Policy: "p", Address: netip.MustParseAddr("100.64.0.3"),
		Verifier: "https://10.255.0.20:9445/attest", Tenants: []string{"c"}})
	check(t, err)
	if pv.Version != 1 || !pv.Status.Configured {
		t.Fatalf("created overlay peer: %+v", pv)
	}
	peer := pv.OverlayPeer
	peer.Endpoint = netip.MustParseAddrPort("192.0.2.3:51820")
	pv, err = c.UpdateOverlayPeer(ctx, peer, peer.Version)
	check(t, err)
	if got, err := c.GetOverlayPeer(ctx, "r"); err != nil || got.Version != 2 || got.Endpoint != peer.Endpoint {
		t.Fatalf("overlay peer: %+v %v", got, err)
	}
	pvs, err := c.ListOverlayPeers(ctx)
	check(t, err)
	if len(pvs) != 1 || pvs[0].Subject != "c/host1" {
		t.Fatalf("overlay peers: %+v", pvs)
	}
	check(t, c.DeleteOverlayPeer(ctx, "r", pv.Version))

	// Transitions, per tenant and global.
	for _, tr := range []state.Transition{
		{Tenant: "c", Service: "api", Backend: "b1", From: state.StateRegistered, To: state.StateAttesting, Reason: "enrolled"},
		{Tenant: "a", Service: "web", Backend: "w1", From: state.StateRegistered, To: state.StateAttesting, Reason: "enrolled"},
		{Tenant: "c", Service: "api", Backend: "b1", From: state.StateAttesting, To: state.StateAdmitted, Reason: "affirming"},
	} {
		tr.Time = now
		_, err := e.State.AppendTransition(tr)
		check(t, err)
	}
	trs, err := c.ListTransitions(ctx, "c")
	check(t, err)
	if len(trs) != 2 || trs[1].To != state.StateAdmitted || trs[1].Seq != 3 {
		t.Fatalf("tenant c's transitions: %+v", trs)
	}
	if trs, err := c.ListTransitions(ctx, ""); err != nil || len(trs) != 3 {
		t.Fatalf("all transitions: %+v %v", trs, err)
	}

	// Tokens.
	nt, err := c.CreateToken(ctx, client.TokenRequest{Name: "ci", Role: auth.RoleTenantAdmin, Tenant: "c"})
	check(t, err)
	if nt.Secret == "" || nt.ID == "" || nt.Tenant != "c" || nt.Hash != nil {
		t.Fatalf("new token: %+v", nt)
	}
	toks, err := c.ListTokens(ctx)
	check(t, err)
	if len(toks) != 5 {
		t.Fatalf("tokens: %+v", toks)
	}
	for _, tok := range toks {
		if tok.Hash != nil {
			t.Fatalf("token %s listed with its hash", tok.ID)
		}
	}
	ci := client.New(e.URL, nt.Secret, c2hc(t, e))
	if got, err := ci.ListTenants(ctx); err != nil || len(got) != 1 || got[0].Name != "c" {
		t.Fatalf("new token's tenants: %v %v", got, err)
	}
	check(t, c.DeleteToken(ctx, nt.ID))
	if _, err := ci.ListTenants(ctx); !client.IsUnauthenticated(err) {
		t.Fatalf("revoked token: %v", err)
	}

	// Status and the document.
	st, err := c.Status(ctx)
	check(t, err)
	if st["role"] != "operator" {
		t.Fatalf("status: %v", st)
	}
	doc, err := c.OpenAPI(ctx)
	check(t, err)

	// Deletes, children first.
	check(t, c.DeleteBackend(ctx, "c", "api", "b1", 4))
	check(t, c.DeleteRule(ctx, "c", "all", 0))
	check(t, c.DeleteService(ctx, "c", "api", 2))
	check(t, c.DeletePolicy(ctx, "c", "p", 0))
	check(t, c.DeleteTenant(ctx, "c", 3))
	if _, err := c.GetTenant(ctx, "c"); !client.IsNotFound(err) {
		t.Fatalf("deleted tenant: %v", err)
	}

	// Every operation of the document was called.
	var d struct {
		Paths map[string]map[string]any `json:"paths"`
	}
	check(t, json.Unmarshal(doc, &d))
	n := 0
	for p, ops := range d.Paths {
		// QuoteMeta escapes the braces of {name}.
		re := regexp.MustCompile("^" + regexp.MustCompile(`\\\{[^}]+\\\}`).ReplaceAllString(regexp.QuoteMeta(p), `[^/]+`) + "$")
		for method := range ops {
			n++
			if !slices.ContainsFunc(rec.reqs, func(r string) bool {
				m, u, _ := strings.Cut(r, " ")
				return m == strings.ToUpper(method) && re.MatchString(u)
			}) {
				t.Errorf("the client never called %s %s", strings.ToUpper(method), p)
			}
		}
	}
	if n < 30 {
		t.Fatalf("only %d operations in the document", n)
	}
}

func c2hc(t *testing.T, e *clienttest.Env) *http.Client {
	hc, err := client.NewHTTPClient(client.TLSOptions{CAFile: e.CAFile})
	check(t, err)
	return hc
}

func names[T any](vs []T, name func(T) string) string {
	var out []string
	for _, v := range vs {
		out = append(out, name(v))
	}
	return strings.Join(out, ",")
}

func TestPagination(t *testing.T) {
	e := clienttest.New(t)
	c, rec := newClient(t, e, "admin-b")
	ctx := t.Context()
	var want []string
	want = append(want, "lan")
	for i := range 11 {
		name := fmt.Sprintf("r%02d", i)
		_, err := c.CreateRule(ctx, state.Rule{Tenant: "b", Name: name, Sources: []netip.Prefix{netip.MustParsePrefix(fmt.Sprintf("10.%d.0.0/16", i))}, Services: []string{"web"}})
		check(t, err)
		want = append(want, name)
	}

	// One page at a time.
	p, err := c.Rules("b").Page(ctx, 5, "")
	check(t, err)
	if len(p.Items) != 5 || p.NextPageToken == "" {
		t.Fatalf("first page: %+v", p)
	}
	p2, err := c.Rules("b").Page(ctx, 5, p.NextPageToken)
	check(t, err)
	if p2.Items[0].Name != want[5] {
		t.Fatalf("second page starts at %s", p2.Items[0].Name)
	}

	// Followed to the end: 12 rules in pages of 4 are 3 requests.
	c.PageSize = 4
	rec.reqs = nil
	all, err := c.ListRules(ctx, "b")
	check(t, err)
	if got := names(all, func(r state.Rule) string { return r.Name }); got != strings.Join(want, ",") {
		t.Fatalf("all rules: %s", got)
	}
	if len(rec.reqs) != 3 {
		t.Fatalf("%d requests for 3 pages: %v", len(rec.reqs), rec.reqs)
	}

	// The iterator stops fetching when the caller stops.
	rec.reqs = nil
	n := 0
	for r, err := range c.Rules("b").All(ctx) {
		check(t, err)
		if n++; r.Name == "r04" {
			break
		}
	}
	if n != 6 || len(rec.reqs) != 2 {
		t.Fatalf("stopped after %d items and %d requests", n, len(rec.reqs))
	}

	// Transitions are paged by sequence, filtered by tenant.
	for i := range 9 {
		tn := []string{"a", "b", "b"}[i%3]
		_, err := e.State.AppendTransition(state.Transition{Time: time.Now(), Tenant: tn, Service: "web", Backend: "w1",
			From: state.StateRegistered, To: state.StateAttesting, Reason: fmt.Sprint(i)})
		check(t, err)
	}
	c.PageSize = 2
	trs, err := c.ListTransitions(ctx, "b")
	check(t, err)
	if got := names(trs, func(v state.Transition) string { return v.Reason }); got != "1,2,4,5,7,8" {
		t.Fatalf("tenant b's transitions: %s", got)
	}

	// An error in the middle of a list ends it with that error.
	c.PageSize = 0
	if _, err := c.Rules("b").Page(ctx, 2, "not-a-token!"); client.StatusOf(err) != 400 {
		t.Fatalf("bad page token: %v", err)
	}
	if _, err := c.ListRules(ctx, "a"); !client.IsNotFound(err) {
		t.Fatalf("another tenant's list: %v", err)
	}
}

func TestErrors(t *testing.T) {
	e := clienttest.New(t)
	c, _ := newClient(t, e, "operator")
	ctx := t.Context()

	_, err := c.GetTenant(ctx, "zz")
	var ce *client.Error
	if !errors.As(err, &ce) || ce.Status != 404 || ce.Type != client.TypeNotFound || ce.Title == "" || ce.Detail != "tenant zz: not found" || ce.Instance != "/v1/tenants/zz" {
		t.Fatalf("not found: %#v", err)
	}
	if err.Error() != "404 Not Found: tenant zz: not found" || !client.IsNotFound(err) || client.IsConflict(err) {
		t.Fatalf("message: %q", err)
	}
	// Wrapped errors are found too.
	if !client.IsNotFound(fmt.Errorf("get: %w", err)) {
		t.Fatal("wrapped error not recognized")
	}

	_, err = c.CreateRule(ctx, state.Rule{Tenant: "a", Name: "lan", Sources: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/24")}, Services: []string{"web"}})
	if !client.IsConflict(err) || !errors.As(err, &ce) || ce.Type != client.TypeConflict {
		t.Fatalf("duplicate: %v", err)
	}
	err = c.DeleteTenant(ctx, "a", 0)
	if !client.IsConflict(err) || !strings.Contains(err.Error(), "delete them first") {
		t.Fatalf("tenant in use: %v", err)
	}
	_, err = c.CreateService(ctx, state.Service{Tenant: "a", Name: "dup", VIP: netip.MustParseAddr("10.100.0.1"), Port: 80, Protocol: tenant.TCP})
	if client.StatusOf(err) != 422 || !errors.As(err, &ce) || ce.Type != client.TypeInvalid {
		t.Fatalf("invalid configuration: %v", err)
	}
	_, err = c.CreateService(ctx, state.Service{Tenant: "a", Name: "Bad_Name", Protocol: tenant.UDP})
	if client.StatusOf(err) != 422 || !strings.HasPrefix(err.Error(), "422 Unprocessable Entity: invalid configuration: service name") {
		t.Fatalf("bad name: %v", err)
	}

	aud, _ := newClient(t, e, "auditor")
	if _, err := aud.CreateToken(ctx, client.TokenRequest{Name: "x", Role: auth.RoleOperator}); !client.IsForbidden(err) {
		t.Fatalf("auditor made a token: %v", err)
	}
	anon := client.New(e.URL, "", c2hc(t, e))
	if _, err := anon.ListTenants(ctx); !client.IsUnauthenticated(err) || !errors.As(err, &ce) || ce.Type != client.TypeUnauthenticated {
		t.Fatalf("no token: %v", err)
	}
	if _, err := anon.OpenAPI(ctx); err != nil {
		t.Fatalf("the document needs no token: %v", err)
	}
	if _, err := c.GetTenant(ctx, ""); err == nil || !strings.Contains(err.Error(), "empty name") {
		t.Fatalf("empty name: %v", err)
	}

	// An answer that is not a problem document (a proxy's page) still gives its status.
	proxy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html")
		w.WriteHeader(http.StatusBadGateway)
		fmt.Fprint(w, "<html>upstream down</html>")
	}))
	defer proxy.Close()
	_, err = client.New(proxy.URL, "x", nil).ListTenants(ctx)
	if !errors.As(err, &ce) || ce.Status != 502 || ce.Detail != "<html>upstream down</html>" || err.Error() != "502 Bad Gateway: <html>upstream down</html>" {
		t.Fatalf("proxy error: %v", err)
	}
	// Cancelled contexts stop calls.
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := c.ListTenants(cctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled: %v", err)
	}
}

// TestLostUpdate: two admins read the same rule; the first update wins, the second is
// refused with a version mismatch and changes nothing.
func TestLostUpdate(t *testing.T) {
	e := clienttest.New(t)
	ctx := t.Context()
	alice, _ := newClient(t, e, "operator")
	bob, _ := newClient(t, e, "admin-a")
	ra, err := alice.GetRule(ctx, "a", "lan")
	check(t, err)
	rb, err := bob.GetRule(ctx, "a", "lan")
	check(t, err)
	if ra.Version != 1 || rb.Version != 1 {
		t.Fatalf("versions %d %d", ra.Version, rb.Version)
	}
	ra.Sources = []netip.Prefix{netip.MustParsePrefix("10.0.0.0/16")}
	if ra, err = alice.UpdateRule(ctx, ra, ra.Version); err != nil || ra.Version != 2 {
		t.Fatalf("first update: %v %d", err, ra.Version)
	}
	rb.Sources = []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}
	_, err = bob.UpdateRule(ctx, rb, rb.Version)
	var ce *client.Error
	if !client.IsVersionMismatch(err) || !errors.As(err, &ce) || ce.Type != client.TypeVersionMismatch ||
		err.Error() != "412 Precondition Failed: rule a/lan is at version 2, not 1: version mismatch" {
		t.Fatalf("second update: %v", err)
	}
	got, err := bob.GetRule(ctx, "a", "lan")
	check(t, err)
	if got.Sources[0].Bits() != 16 || got.Version != 2 {
		t.Fatalf("after the refused update: %+v", got)
	}
	// Deletes honour the version too.
	if err := bob.DeleteRule(ctx, "a", "lan", 1); !client.IsVersionMismatch(err) {
		t.Fatalf("stale delete: %v", err)
	}
	// An update without a version is refused before any request.
	if _, err := bob.UpdateRule(ctx, got, 0); !errors.Is(err, client.ErrNoVersion) {
		t.Fatalf("no version: %v", err)
	}
	// AnyVersion overwrites knowingly.
	got.Services = []string{"*"}
	if got, err = bob.UpdateRule(ctx, got, client.AnyVersion); err != nil || got.Version != 3 {
		t.Fatalf("If-Match *: %v %+v", err, got)
	}
}

// TestTenantAdminIsolation: a tenant admin sees its tenant and nothing of another, which
// answers exactly as a tenant that does not exist.
func TestTenantAdminIsolation(t *testing.T) {
	e := clienttest.New(t)
	ctx := t.Context()
	c, _ := newClient(t, e, "admin-a")
	ts, err := c.ListTenants(ctx)
	check(t, err)
	if len(ts) != 1 || ts[0].Name != "a" {
		t.Fatalf("tenants: %+v", ts)
	}
	if _, err := c.GetService(ctx, "a", "web"); err != nil {
		t.Fatal(err)
	}
	for name, call := range map[string]func(tn string) error{
		"get tenant":   func(tn string) error { _, err := c.GetTenant(ctx, tn); return err },
		"get service":  func(tn string) error { _, err := c.GetService(ctx, tn, "web"); return err },
		"get backend":  func(tn string) error { _, err := c.GetBackend(ctx, tn, "web", "w1"); return err },
		"drain":        func(tn string) error { _, err := c.DrainBackend(ctx, tn, "web", "w1"); return err },
		"list rules":   func(tn string) error { _, err := c.ListRules(ctx, tn); return err },
		"transitions":  func(tn string) error { _, err := c.ListTransitions(ctx, tn); return err },
		"delete rule":  func(tn string) error { return c.DeleteRule(ctx, tn, "lan", 0) },
		"attestations": func(tn string) error { _, err := c.ListAttestations(ctx, tn, "web", "w1"); return err },
	} {
		errB, errGhost := call("b"), call("ghost")
		if !client.IsNotFound(errB) || !client.IsNotFound(errGhost) ||
			strings.Replace(errB.Error(), "tenant b", "tenant ghost", 1) != errGhost.Error() {
			t.Errorf("%s: tenant b: %v; missing tenant: %v", name, errB, errGhost)
		}
	}
	if _, err := c.ListTransitions(ctx, ""); !client.IsForbidden(err) {
		t.Fatalf("global transitions: %v", err)
	}
	if _, err := c.ListTokens(ctx); !client.IsForbidden(err) {
		t.Fatalf("tokens: %v", err)
	}
	st, err := c.Status(ctx)
	check(t, err)
	if st["tenant"] != "a" {
		t.Fatalf("status: %v", st)
	}
	// Tenant b's rule is untouched.
	op, _ := newClient(t, e, "operator")
	if _, err := op.GetRule(ctx, "b", "lan"); err != nil {
		t.Fatal(err)
	}
}

func TestTLS(t *testing.T) {
	e := clienttest.New(t)
	ctx := t.Context()
	// The system's roots do not know the test CA.
	hc, err := client.NewHTTPClient(client.TLSOptions{})
	check(t, err)
	if _, err := client.New(e.URL, e.Tokens["operator"], hc).Status(ctx); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("unknown CA accepted: %v", err)
	}
	hc, err = client.NewHTTPClient(client.TLSOptions{InsecureSkipVerify: true})
	check(t, err)
	if _, err := client.New(e.URL, e.Tokens["operator"], hc).Status(ctx); err != nil {
		t.Fatalf("insecure: %v", err)
	}
	bad := filepath.Join(t.TempDir(), "bad.pem")
	check(t, os.WriteFile(bad, []byte("not a certificate\n"), 0o600))
	if _, err := client.NewHTTPClient(client.TLSOptions{CAFile: bad}); err == nil || !strings.Contains(err.Error(), "no PEM certificate") {
		t.Fatalf("bad bundle: %v", err)
	}
	if _, err := client.NewHTTPClient(client.TLSOptions{CAFile: bad + ".missing"}); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing bundle: %v", err)
	}
}
