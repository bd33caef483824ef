// Package clienttest runs the real control API (controlapi/api over an in-memory
// store) behind an httptest TLS server, for tests of the client and of `moat ctl`.
package clienttest

import (
	"encoding/pem"
	"fmt"
	"io"
	"log"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/seed4c/moat/attest"
	"github.com/seed4c/moat/controlapi/api"
	"github.com/seed4c/moat/controlapi/auth"
	"github.com/seed4c/moat/controlapi/kv"
	"github.com/seed4c/moat/controlapi/state"
	"github.com/seed4c/moat/tenant"
)

// Digest is a valid SHA-256 reference value (of "hello").
const Digest = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"

// Since is the time every backend status reports by default.
var Since = time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)

// Env is a running API with tenants a and b (each: service web at 10.100.0.1:80/tcp,
// policy app, backend w1 of host h1 at 10.1.0.1, rule lan) and one token per caller:
// "operator", "admin-a", "admin-b" (tenant admins) and "auditor".
type Env struct {
	Server *httptest.Server
	URL    string
	CAFile string            // PEM of the server's certificate
	Tokens map[string]string // caller -> secret
	IDs    map[string]string // caller -> token id
	State  *state.Store
	Live   *Live
}

// Interfaces are the gateway's interfaces in the test: eth0 to eth5, and the fast-path
// ends of overlay segments VNI 11 and 12.
var Interfaces = tenant.StaticInterfaces{"eth0": 2, "eth1": 3, "eth2": 4, "eth3": 5, "eth4": 6, "eth5": 7, "ov11": 8, "ov12": 9}

// New starts the API; it is closed when the test ends.
func New(t testing.TB) *Env {
	t.Helper()
	kvs := kv.NewMem()
	st := state.New(kvs, func(c tenant.Config) error {
		return tenant.Validate(c, Interfaces, tenant.IDs{}, tenant.DefaultLimits())
	}, nil)
	for i, tn := range []string{"a", "b"} {
		steps := []error{
			second(st.CreateTenant(state.Tenant{Name: tn, Attachments: []tenant.Attachment{{Interface: fmt.Sprintf("eth%d", i)}}})),
			second(st.CreateService(state.Service{Tenant: tn, Name: "web", VIP: netip.MustParseAddr("10.100.0.1"), Port: 80, Protocol: tenant.TCP})),
			second(st.CreatePolicy(state.Policy{Tenant: tn, Name: "app", References: map[string][]string{"/srv/app": {Digest}}})),
			second(st.CreateBackend(state.Backend{Tenant: tn, Service: "web", Name: "w1", Identity: "h1",
				Addr: netip.MustParseAddr("10.1.0.1"), Weight: 1, Policy: "app"})),
			second(st.CreateRule(state.Rule{Tenant: tn, Name: "lan", Sources: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/24")}, Services: []string{"web"}})),
		}
		for _, err := range steps {
			if err != nil {
				t.Fatal(err)
			}
		}
	}
	toks := auth.New(kvs, nil)
	e := &Env{Tokens: map[string]string{}, IDs: map[string]string{}, State: st, Live: &Live{}}
	for _, c := range []struct {
		name   string
		role   auth.Role
		tenant string
	}{{"operator", auth.RoleOperator, ""}, {"admin-a", auth.RoleTenantAdmin, "a"}, {"admin-b", auth.RoleTenantAdmin, "b"}, {"auditor", auth.RoleAuditor, ""}} {
		sec, tok, err := toks.Create(c.name, c.role, c.tenant)
		if err != nil {
			t.Fatal(err)
		}
		e.Tokens[c.name], e.IDs[c.name] = sec, tok.ID
	}
	srv := &api.Server{State: st, Tokens: toks, Live: e.Live}
	e.Server = httptest.NewUnstartedServer(srv.Handler())
	e.Server.Config.ErrorLog = log.New(io.Discard, "", 0) // TLS handshakes the tests make fail
	e.Server.StartTLS()
	t.Cleanup(e.Server.Close)
	e.URL = e.Server.URL
	e.CAFile = filepath.Join(t.TempDir(), "ca.crt")
	ca := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: e.Server.Certificate().Raw})
	if err := os.WriteFile(e.CAFile, ca, 0o644); err != nil {
		t.Fatal(err)
	}
	return e
}

func second[T any](_ T, err error) error { return err }

// Live is the gateway's live view in the test: backend statuses set by the test
// (default: registered since Since).
type Live struct {
	mu       sync.Mutex
	statuses map[string]state.BackendStatus
}

// Set sets the status of a backend.
func (l *Live) Set(tenantName, service, backend string, st state.BackendStatus) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.statuses == nil {
		l.statuses = map[string]state.BackendStatus{}
	}
	l.statuses[tenantName+"/"+service+"/"+backend] = st
}

// BackendStatus implements api.Live.
func (l *Live) BackendStatus(tenantName, service, backend string) state.BackendStatus {
	l.mu.Lock()
	defer l.mu.Unlock()
	if st, ok := l.statuses[tenantName+"/"+service+"/"+backend]; ok {
		return st
	}
	return state.BackendStatus{State: state.StateRegistered, Reason: "no attestation yet", Since: Since}
}

// GatewayStatus implements api.Live.
func (l *Live) GatewayStatus(p auth.Principal) any {
	st := map[string]any{"role": p.Role, "backends": map[string]int{"admitted": 0, "registered": 2}}
	if p.Tenant != "" {
		st["tenant"] = p.Tenant
		st["backends"] = map[string]int{"registered": 1}
	}
	return st
}

// OverlayPeerStatus implements api.Live: every peer is configured, affirming the
// gateway, since Since.
func (l *Live) OverlayPeerStatus(string) state.OverlayPeerStatus {
	return state.OverlayPeerStatus{Configured: true, Since: Since, Appraisal: attest.StatusAffirming}
}
