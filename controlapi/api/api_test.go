package api

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"regexp"
	"strings"
	"testing"

	"github.com/seed4c/moat/controlapi/auth"
	"github.com/seed4c/moat/controlapi/kv"
	"github.com/seed4c/moat/controlapi/state"
	"github.com/seed4c/moat/tenant"
)

const digest = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"

type fakeLive struct{}

func (fakeLive) BackendStatus(t, s, b string) state.BackendStatus {
	return state.BackendStatus{State: state.StateAdmitted, Reason: "test"}
}
func (fakeLive) GatewayStatus(p auth.Principal) any { return map[string]any{"role": p.Role} }
func (fakeLive) OverlayPeerStatus(string) state.OverlayPeerStatus {
	return state.OverlayPeerStatus{Configured: true}
}

// env is a server with tenants a and b (each: service web, policy app, backend w1,
// rule lan; a has overlay segment VNI 11 and overlay peer r) and a token per role.
type env struct {
	srv    *Server
	h      http.Handler
	tokens map[string]string // role name -> secret
	ids    map[string]string // role name -> token id
}

func newEnv(t testing.TB) *env {
	t.Helper()
	kvs := kv.NewMem()
	st := state.New(kvs, func(c tenant.Config) error {
		return tenant.Validate(c, tenant.StaticInterfaces{"eth0": 2, "eth1": 3, "eth2": 4, "ov11": 5}, tenant.IDs{}, tenant.DefaultLimits())
	}, nil)
	for i, tn := range []string{"a", "b"} {
		var ov *state.TenantOverlay
		if tn == "a" {
			ov = &state.TenantOverlay{VNI: 11, Address: netip.MustParsePrefix("10.9.0.1/24")}
		}
		must(t, second(st.CreateTenant(state.Tenant{Name: tn, Attachments: []tenant.Attachment{{Interface: fmt.Sprintf("eth%d", i)}}, Overlay: ov})))
		must(t, second(st.CreateService(state.Service{Tenant: tn, Name: "web", VIP: netip.MustParseAddr("10.100.0.1"), Port: 80, Protocol: tenant.TCP})))
		must(t, second(st.CreatePolicy(state.Policy{Tenant: tn, Name: "app", References: map[string][]string{"/srv/app": {digest}}})))
		must(t, second(st.CreateBackend(state.Backend{Tenant: tn, Service: "web", Name: "w1", Identity: "h1",
			Addr: netip.MustParseAddr("10.1.0.1"), Weight: 1, Policy: "app"})))
		must(t, second(st.CreateRule(state.Rule{Tenant: tn, Name: "lan", Sources: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/24")}, Services: []string{"web"}})))
	}
	must(t, second(st.CreateOverlayPeer(state.OverlayPeer{Name: "r", Subject: "a/r", Policy: "app", Address: netip.MustParseAddr("100.64.0.3"),
		Verifier: "https://10.255.0.20:9445/attest", Tenants: []string{"a"}})))
	toks := auth.New(kvs, nil)
	e := &env{tokens: map[string]string{}, ids: map[string]string{}}
	for name, c := range map[string]struct {
		role   auth.Role
		tenant string
	}{"operator": {auth.RoleOperator, ""}, "admin-a": {auth.RoleTenantAdmin, "a"}, "admin-b": {auth.RoleTenantAdmin, "b"}, "auditor": {auth.RoleAuditor, ""}} {
		sec, tok, err := toks.Create(name, c.role, c.tenant)
		must(t, err)
		e.tokens[name], e.ids[name] = sec, tok.ID
	}
	e.srv = &Server{State: st, Tokens: toks, Live: fakeLive{}}
	e.h = e.srv.Handler()
	return e
}

func second[T any](_ T, err error) error { return err }

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func (e *env) do(method, path, token, body string, hdr ...string) *httptest.ResponseRecorder {
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req := httptest.NewRequest(method, path, rd)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	w := httptest.NewRecorder()
	e.h.ServeHTTP(w, req)
	return w
}

// call is one concrete request for a route, and the status an allowed caller gets.
type call struct {
	path, body string
	ifMatch    bool
	ok         int
}

// calls gives a concrete request per route (tenant a's objects).
func calls(e *env) map[string]call {
	return map[string]call{
		"GET /v1/openapi.json":     {path: "/v1/openapi.json", ok: 200},
		"GET /v1/status":           {path: "/v1/status", ok: 200},
		"GET /v1/tenants":          {path: "/v1/tenants", ok: 200},
		"POST /v1/tenants":         {path: "/v1/tenants", body: `{"name":"c","attachments":[{"interface":"eth2"}]}`, ok: 201},
		"GET /v1/tenants/{tenant}": {path: "/v1/tenants/a", ok: 200},
		"PUT /v1/tenants/{tenant}": {path: "/v1/tenants/a", body: `{"attachments":[{"interface":"eth0"}],"fib_table":5,"overlay":{"vni":11,"address":"10.9.0.1/24"}}`,
			ifMatch: true, ok: 200},
		"DELETE /v1/tenants/{tenant}":       {path: "/v1/tenants/a", ok: 409}, // still has services
		"GET /v1/tenants/{tenant}/services": {path: "/v1/tenants/a/services", ok: 200},
		"POST /v1/tenants/{tenant}/services": {path: "/v1/tenants/a/services",
			body: `{"name":"api","vip":"10.100.0.2","port":443,"protocol":"tcp","min_trust":"allow-listed"}`, ok: 201},
		"GET /v1/tenants/{tenant}/services/{service}": {path: "/v1/tenants/a/services/web", ok: 200},
		"PUT /v1/tenants/{tenant}/services/{service}": {path: "/v1/tenants/a/services/web",
			body: `{"vip":"10.100.0.1","port":8080,"protocol":"tcp","min_trust":"allow-listed"}`, ifMatch: true, ok: 200},
		"DELETE /v1/tenants/{tenant}/services/{service}":       {path: "/v1/tenants/a/services/web", ok: 409},
		"GET /v1/tenants/{tenant}/services/{service}/backends": {path: "/v1/tenants/a/services/web/backends", ok: 200},
		"POST /v1/tenants/{tenant}/services/{service}/backends": {path: "/v1/tenants/a/services/web/backends",
			body: `{"name":"w2","identity":"h2","addr":"10.1.0.2","weight":1,"policy":"app"}`, ok: 201},
		"GET /v1/tenants/{tenant}/services/{service}/backends/{backend}": {path: "/v1/tenants/a/services/web/backends/w1", ok: 200},
		"PUT /v1/tenants/{tenant}/services/{service}/backends/{backend}": {path: "/v1/tenants/a/services/web/backends/w1",
			body: `{"identity":"h1","addr":"10.1.0.1","weight":3,"policy":"app"}`, ifMatch: true, ok: 200},
		"DELETE /v1/tenants/{tenant}/services/{service}/backends/{backend}":       {path: "/v1/tenants/a/services/web/backends/w1", ok: 204},
		"POST /v1/tenants/{tenant}/services/{service}/backends/{backend}/drain":   {path: "/v1/tenants/a/services/web/backends/w1/drain", ok: 200},
		"DELETE /v1/tenants/{tenant}/services/{service}/backends/{backend}/drain": {path: "/v1/tenants/a/services/web/backends/w1/drain", ok: 200},
		"GET /v1/tenants/{tenant}/services/{service}/backends/{backend}/attestations": {
			path: "/v1/tenants/a/services/web/backends/w1/attestations", ok: 200},
		"GET /v1/tenants/{tenant}/rules":           {path: "/v1/tenants/a/rules", ok: 200},
		"POST /v1/tenants/{tenant}/rules":          {path: "/v1/tenants/a/rules", body: `{"name":"r2","sources":["10.9.0.0/16"],"services":["web"]}`, ok: 201},
		"GET /v1/tenants/{tenant}/rules/{rule}":    {path: "/v1/tenants/a/rules/lan", ok: 200},
		"PUT /v1/tenants/{tenant}/rules/{rule}":    {path: "/v1/tenants/a/rules/lan", body: `{"sources":["10.0.0.0/16"],"services":["*"]}`, ifMatch: true, ok: 200},
		"DELETE /v1/tenants/{tenant}/rules/{rule}": {path: "/v1/tenants/a/rules/lan", ok: 204},
		"GET /v1/tenants/{tenant}/policies":        {path: "/v1/tenants/a/policies", ok: 200},
		"POST /v1/tenants/{tenant}/policies": {path: "/v1/tenants/a/policies",
			body: `{"name":"p2","references":{"/x":["` + digest + `"]}}`, ok: 201},
		"GET /v1/tenants/{tenant}/policies/{policy}": {path: "/v1/tenants/a/policies/app", ok: 200},
		"PUT /v1/tenants/{tenant}/policies/{policy}": {path: "/v1/tenants/a/policies/app",
			body: `{"references":{"/srv/app":["` + digest + `"]},"allowed_eks":["` + digest + `"]}`, ifMatch: true, ok: 200},
		"DELETE /v1/tenants/{tenant}/policies/{policy}": {path: "/v1/tenants/a/policies/app", ok: 409}, // in use
		"GET /v1/tenants/{tenant}/transitions":          {path: "/v1/tenants/a/transitions", ok: 200},
		"GET /v1/transitions":                           {path: "/v1/transitions", ok: 200},
		"GET /v1/overlay/peers":                         {path: "/v1/overlay/peers", ok: 200},
		"POST /v1/overlay/peers": {path: "/v1/overlay/peers", ok: 201,
			body: `{"name":"s","subject":"a/s","policy":"app","address":"100.64.0.4","verifier":"https://10.255.0.21:9445/attest","tenants":["a"]}`},
		"GET /v1/overlay/peers/{peer}": {path: "/v1/overlay/peers/r", ok: 200},
		"PUT /v1/overlay/peers/{peer}": {path: "/v1/overlay/peers/r", ifMatch: true, ok: 200,
			body: `{"subject":"a/r","policy":"app","address":"100.64.0.3","endpoint":"192.0.2.3:51820","verifier":"https://10.255.0.20:9445/attest","tenants":["a"]}`},
		"DELETE /v1/overlay/peers/{peer}": {path: "/v1/overlay/peers/r", ok: 204},
		"GET /v1/tokens":                  {path: "/v1/tokens", ok: 200},
		"POST /v1/tokens":                 {path: "/v1/tokens", body: `{"name":"t2","role":"tenant-admin","tenant":"a"}`, ok: 201},
		"DELETE /v1/tokens/{id}":          {path: "/v1/tokens/" + e.ids["auditor"], ok: 204},
	}
}

// TestEveryEndpointEveryRole: each route, called by each kind of caller on tenant a's
// objects, gets exactly the status its role allows; tenant b's admin cannot tell tenant
// a's objects exist.
func TestEveryEndpointEveryRole(t *testing.T) {
	e0 := newEnv(t)
	cs := calls(e0)
	for _, rt := range e0.srv.routes() {
		key := rt.method + " " + rt.path
		c, ok := cs[key]
		if !ok {
			t.Errorf("no test call for %s", key)
			continue
		}
		for _, caller := range []string{"operator", "admin-a", "admin-b", "auditor", "none", "forged"} {
			want := expected(rt, caller, c.ok)
			t.Run(key+"/"+caller, func(t *testing.T) {
				e := newEnv(t)
				c := calls(e)[key]
				tok := e.tokens[caller]
				if caller == "forged" {
					tok = "moat_000000000000_" + strings.Repeat("A", 43)
				}
				hdr := []string{}
				if c.ifMatch {
					hdr = append(hdr, "If-Match", `"1"`)
				}
				w := e.do(rt.method, c.path, tok, c.body, hdr...)
				if w.Code != want {
					t.Fatalf("%s as %s: %d, want %d: %s", key, caller, w.Code, want, w.Body)
				}
				if w.Code >= 400 {
					checkProblem(t, w)
				}
				if caller == "admin-b" && w.Code == 404 {
					// The same answer as for a tenant that does not exist.
					ghost := e.do(rt.method, strings.Replace(c.path, "/tenants/a", "/tenants/zz", 1), tok, c.body, hdr...)
					if ghost.Code != 404 || problemDetail(t, ghost) != strings.Replace(problemDetail(t, w), "tenant a", "tenant zz", 1) {
						t.Fatalf("answer for another tenant (%s) differs from a missing tenant's (%s)", w.Body, ghost.Body)
					}
				}
			})
		}
	}
}

func expected(rt route, caller string, ok int) int {
	switch caller {
	case "none", "forged":
		if rt.access == public {
			return ok
		}
		return 401
	case "operator":
		return ok
	}
	readOnly := rt.method == "GET"
	switch rt.access {
	case public, authenticated:
		return ok
	case seeAll:
		if caller == "auditor" {
			return ok
		}
		return 403
	case operatorOnly:
		return 403
	case tenantRead, tenantWrite, tenantOperator:
		if caller == "admin-b" {
			return 404
		}
		if readOnly || rt.access == tenantWrite && caller == "admin-a" {
			return ok
		}
		return 403
	}
	return 0
}

func checkProblem(t *testing.T, w *httptest.ResponseRecorder) {
	t.Helper()
	if ct := w.Header().Get("Content-Type"); ct != "application/problem+json" {
		t.Fatalf("error with Content-Type %q", ct)
	}
	var p Problem
	if err := json.Unmarshal(w.Body.Bytes(), &p); err != nil || p.Status != w.Code || !strings.HasPrefix(p.Type, problemPrefix) || p.Title == "" {
		t.Fatalf("not a problem document: %s (%v)", w.Body, err)
	}
}

func problemDetail(t *testing.T, w *httptest.ResponseRecorder) string {
	var p Problem
	json.Unmarshal(w.Body.Bytes(), &p)
	return p.Detail
}

func TestTenantAdminSeesOnlyItsTenant(t *testing.T) {
	e := newEnv(t)
	w := e.do("GET", "/v1/tenants", e.tokens["admin-a"], "")
	var l List[state.Tenant]
	json.Unmarshal(w.Body.Bytes(), &l)
	if w.Code != 200 || len(l.Items) != 1 || l.Items[0].Name != "a" {
		t.Fatalf("tenant admin's tenant list: %d %s", w.Code, w.Body)
	}
	w = e.do("GET", "/v1/tenants", e.tokens["auditor"], "")
	json.Unmarshal(w.Body.Bytes(), &l)
	if len(l.Items) != 2 {
		t.Fatalf("auditor's tenant list: %s", w.Body)
	}
	// Creating a token for another tenant's admin is an operator's business.
	if w := e.do("POST", "/v1/tokens", e.tokens["admin-a"], `{"name":"x","role":"operator"}`); w.Code != 403 {
		t.Fatalf("tenant admin made a token: %d", w.Code)
	}
	// A body naming another tenant is refused, not silently moved.
	if w := e.do("POST", "/v1/tenants/a/services", e.tokens["admin-a"], `{"tenant":"b","name":"x","vip":"10.100.0.5","port":1,"protocol":"tcp","min_trust":"none"}`); w.Code != 400 {
		t.Fatalf("cross-tenant body: %d %s", w.Code, w.Body)
	}
}

func TestUpdatesNeedIfMatch(t *testing.T) {
	e := newEnv(t)
	op := e.tokens["operator"]
	path := "/v1/tenants/a/rules/lan"
	body := `{"sources":["10.0.0.0/16"],"services":["web"]}`
	if w := e.do("PUT", path, op, body); w.Code != 428 {
		t.Fatalf("PUT without If-Match: %d", w.Code)
	}
	if w := e.do("PUT", path, op, body, "If-Match", `"7"`); w.Code != 412 {
		t.Fatalf("PUT with a stale ETag: %d", w.Code)
	}
	if w := e.do("PUT", path, op, body, "If-Match", `v1`); w.Code != 400 {
		t.Fatalf("PUT with a malformed If-Match: %d", w.Code)
	}
	get := e.do("GET", path, op, "")
	tag := get.Header().Get("ETag")
	w := e.do("PUT", path, op, body, "If-Match", tag)
	if w.Code != 200 || w.Header().Get("ETag") != `"2"` {
		t.Fatalf("PUT with the ETag: %d %s", w.Code, w.Header().Get("ETag"))
	}
	// The second writer, who read version 1 too, is refused instead of overwriting.
	if w := e.do("PUT", path, op, `{"sources":["10.0.0.0/8"],"services":["web"]}`, "If-Match", tag); w.Code != 412 {
		t.Fatalf("lost update not prevented: %d", w.Code)
	}
	if w := e.do("PUT", path, op, body, "If-Match", "*"); w.Code != 200 {
		t.Fatalf("If-Match *: %d", w.Code)
	}
}

func TestBadBodies(t *testing.T) {
	e := newEnv(t)
	op := e.tokens["operator"]
	path := "/v1/tenants/a/services"
	for name, c := range map[string]struct {
		body, ctype string
		want        int
	}{
		"not json":       {`{"name":`, "application/json", 400},
		"unknown field":  {`{"name":"x","vip":"10.100.0.9","port":1,"protocol":"tcp","min_trust":"none","colour":"red"}`, "application/json", 400},
		"wrong type":     {`{"name":"x","vip":"10.100.0.9","port":"eighty","protocol":"tcp"}`, "application/json", 400},
		"bad address":    {`{"name":"x","vip":"10.100.0","port":1,"protocol":"tcp"}`, "application/json", 400},
		"bad protocol":   {`{"name":"x","vip":"10.100.0.9","port":1,"protocol":"sctp"}`, "application/json", 400},
		"two values":     {`{"name":"x"}{"name":"y"}`, "application/json", 400},
		"array":          {`[]`, "application/json", 400},
		"form":           {`name=x`, "application/x-www-form-urlencoded", 415},
		"too big":        {`{"name":"` + strings.Repeat("x", 2<<20) + `"}`, "application/json", 413},
		"invalid config": {`{"name":"x","vip":"10.100.0.1","port":80,"protocol":"tcp","min_trust":"none"}`, "application/json", 422},
		"port too big":   {`{"name":"x","vip":"10.100.0.9","port":70000,"protocol":"tcp"}`, "application/json", 400},
	} {
		req := httptest.NewRequest("POST", path, strings.NewReader(c.body))
		req.Header.Set("Authorization", "Bearer "+op)
		req.Header.Set("Content-Type", c.ctype)
		w := httptest.NewRecorder()
		e.h.ServeHTTP(w, req)
		if w.Code != c.want {
			t.Errorf("%s: %d, want %d: %s", name, w.Code, c.want, w.Body)
			continue
		}
		checkProblem(t, w)
	}
	if w := e.do("GET", "/v1/tenants?limit=0", op, ""); w.Code != 400 {
		t.Errorf("limit 0: %d", w.Code)
	}
	if w := e.do("GET", "/v1/tenants?page_token=!!!", op, ""); w.Code != 400 {
		t.Errorf("bad page token: %d", w.Code)
	}
	if w := e.do("GET", "/v1/nothing", op, ""); w.Code != 404 {
		t.Errorf("unknown path: %d", w.Code)
	}
}

func TestCreateAndPaginate(t *testing.T) {
	e := newEnv(t)
	op := e.tokens["operator"]
	for i := range 5 {
		body := fmt.Sprintf(`{"name":"r%d","sources":["10.%d.0.0/16"],"services":["web"]}`, i, i)
		w := e.do("POST", "/v1/tenants/b/rules", op, body)
		if w.Code != 201 || w.Header().Get("Location") != fmt.Sprintf("/v1/tenants/b/rules/r%d", i) || w.Header().Get("ETag") != `"1"` {
			t.Fatalf("create: %d %v", w.Code, w.Header())
		}
	}
	var names []string
	url := "/v1/tenants/b/rules?limit=2"
	for range 10 {
		w := e.do("GET", url, op, "")
		var l List[state.Rule]
		if err := json.Unmarshal(w.Body.Bytes(), &l); err != nil {
			t.Fatal(err)
		}
		for _, r := range l.Items {
			if r.Tenant != "b" {
				t.Fatalf("tenant b's list has %s's rule", r.Tenant)
			}
			names = append(names, r.Name)
		}
		if l.NextPageToken == "" {
			break
		}
		url = "/v1/tenants/b/rules?limit=2&page_token=" + l.NextPageToken
	}
	if strings.Join(names, ",") != "lan,r0,r1,r2,r3,r4" {
		t.Fatalf("paged list: %v", names)
	}
}

func TestBackendViewAndDrain(t *testing.T) {
	e := newEnv(t)
	w := e.do("POST", "/v1/tenants/a/services/web/backends/w1/drain", e.tokens["admin-a"], "")
	var v BackendView
	json.Unmarshal(w.Body.Bytes(), &v)
	if w.Code != 200 || !v.Drain || v.Subject != "a/h1" || v.Status.State != state.StateAdmitted || v.Version != 2 {
		t.Fatalf("drain: %d %s", w.Code, w.Body)
	}
	w = e.do("DELETE", "/v1/tenants/a/services/web/backends/w1/drain", e.tokens["admin-a"], "")
	v = BackendView{}
	json.Unmarshal(w.Body.Bytes(), &v)
	if v.Drain || v.Version != 3 {
		t.Fatalf("undrain: %s", w.Body)
	}
}

func TestOpenAPICoversRoutes(t *testing.T) {
	e := newEnv(t)
	w := e.do("GET", "/v1/openapi.json", "", "")
	var doc struct {
		OpenAPI string                    `json:"openapi"`
		Paths   map[string]map[string]any `json:"paths"`
	}
	if err := json.Unmarshal(w.Body.Bytes(), &doc); err != nil || doc.OpenAPI != "3.0.3" {
		t.Fatalf("document: %v", err)
	}
	n := 0
	for _, rt := range e.srv.routes() {
		if _, ok := doc.Paths[rt.path][strings.ToLower(rt.method)]; !ok {
			t.Errorf("%s %s missing from the OpenAPI document", rt.method, rt.path)
		}
		n++
	}
	total := 0
	for _, ops := range doc.Paths {
		total += len(ops)
	}
	if total != n {
		t.Errorf("document has %d operations, the server %d", total, n)
	}
	// Every $ref resolves.
	refs := regexp.MustCompile(`"\$ref":"#/components/schemas/([A-Za-z]+)"`).FindAllStringSubmatch(w.Body.String(), -1)
	var full struct {
		Components struct {
			Schemas map[string]any `json:"schemas"`
		} `json:"components"`
	}
	json.Unmarshal(w.Body.Bytes(), &full)
	for _, r := range refs {
		if _, ok := full.Components.Schemas[r[1]]; !ok {
			t.Errorf("dangling $ref %s", r[1])
		}
	}
	if !bytes.Contains(w.Body.Bytes(), []byte(`"Backend"`)) {
		t.Error("no Backend schema")
	}
}

// FuzzAPI: any request, from any role, is answered with a status below 500 and, for
// errors, a problem document.
func FuzzAPI(f *testing.F) {
	e := newEnv(f)
	for key, c := range calls(e) {
		method, _, _ := strings.Cut(key, " ")
		f.Add(method, c.path, c.body, uint8(0), `"1"`)
	}
	f.Add("PUT", "/v1/tenants/a/services/web", `{"vip":null}`, uint8(1), "*")
	callers := []string{"operator", "admin-a", "admin-b", "auditor"}
	f.Fuzz(func(t *testing.T, method, path, body string, who uint8, match string) {
		if !strings.HasPrefix(path, "/") || strings.ContainsAny(path, " \r\n\t#?%") || strings.ContainsAny(method, " \r\n\t") || method == "" {
			return
		}
		req, err := http.NewRequest(method, "http://moat"+path, strings.NewReader(body))
		if err != nil {
			return
		}
		req.Header.Set("Authorization", "Bearer "+e.tokens[callers[int(who)%len(callers)]])
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("If-Match", match)
		w := httptest.NewRecorder()
		e.h.ServeHTTP(w, req)
		if w.Code >= 500 {
			t.Fatalf("%s %s %q: %d %s", method, path, body, w.Code, w.Body)
		}
		if w.Code >= 400 && w.Header().Get("Content-Type") != "application/problem+json" {
			t.Fatalf("%s %s: error %d without a problem document", method, path, w.Code)
		}
	})
}

func TestReviewFindings(t *testing.T) {
	e := newEnv(t)
	op := e.tokens["operator"]
	// Lists under a tenant that does not exist are 404, not empty.
	for _, p := range []string{"/v1/tenants/ghost/services", "/v1/tenants/ghost/rules", "/v1/tenants/ghost/policies",
		"/v1/tenants/ghost/services/web/backends", "/v1/tenants/ghost/transitions"} {
		if w := e.do("GET", p, op, ""); w.Code != 404 {
			t.Errorf("GET %s: %d", p, w.Code)
		}
	}
	// Token lists page.
	var l List[auth.Token]
	w := e.do("GET", "/v1/tokens?limit=1", op, "")
	json.Unmarshal(w.Body.Bytes(), &l)
	if len(l.Items) != 1 || l.NextPageToken == "" {
		t.Fatalf("first token page: %s", w.Body)
	}
	seen := map[string]bool{l.Items[0].ID: true}
	for l.NextPageToken != "" {
		w = e.do("GET", "/v1/tokens?limit=1&page_token="+l.NextPageToken, op, "")
		l = List[auth.Token]{}
		json.Unmarshal(w.Body.Bytes(), &l)
		for _, tk := range l.Items {
			if seen[tk.ID] {
				t.Fatalf("token %s on two pages", tk.ID)
			}
			seen[tk.ID] = true
		}
	}
	if len(seen) != 4 {
		t.Fatalf("paged through %d tokens, want 4", len(seen))
	}
	if w := e.do("GET", "/v1/tokens?page_token=!!", op, ""); w.Code != 400 {
		t.Errorf("bad token page: %d", w.Code)
	}
	// A backend as read can be written back.
	get := e.do("GET", "/v1/tenants/a/services/web/backends/w1", op, "")
	body := strings.Replace(get.Body.String(), `"weight":1`, `"weight":4`, 1)
	if w := e.do("PUT", "/v1/tenants/a/services/web/backends/w1", op, body, "If-Match", get.Header().Get("ETag")); w.Code != 200 {
		t.Fatalf("PUT of a GET body: %d %s", w.Code, w.Body)
	}
	// A weak ETag never matches If-Match.
	if w := e.do("PUT", "/v1/tenants/a/rules/lan", op, `{"sources":["10.0.0.0/24"],"services":["web"]}`, "If-Match", `W/"1"`); w.Code != 412 {
		t.Fatalf("weak If-Match: %d", w.Code)
	}
}
