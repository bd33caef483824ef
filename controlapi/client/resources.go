package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/seed4c/moat/controlapi/api"
	"github.com/seed4c/moat/controlapi/auth"
	"github.com/seed4c/moat/controlapi/state"
)

// BackendView is a backend as the API shows it: with its subject and admission status.
type BackendView = api.BackendView

// OverlayPeerView is an overlay peer as the API shows it: with its link's status.
type OverlayPeerView = api.OverlayPeerView

// TokenRequest asks for a new token.
type TokenRequest = api.TokenRequest

// NewToken is a created token with its secret, which the server shows this once.
type NewToken = api.NewToken

// ErrNoVersion: an update was given no version to send in If-Match.
var ErrNoVersion = errors.New("an update needs the version (ETag) it is based on: get the object first")

// The generic verbs. meta points at the object's Meta, whose Version is set from the
// answer's ETag.

func get[T any](ctx context.Context, c *Client, p string, meta func(*T) *state.Meta) (T, error) {
	var v T
	version, err := c.do(ctx, "GET", p, 0, nil, &v)
	return withVersion(v, version, err, meta)
}

func create[T any](ctx context.Context, c *Client, p string, body any, meta func(*T) *state.Meta) (T, error) {
	var v T
	version, err := c.do(ctx, "POST", p, 0, body, &v)
	return withVersion(v, version, err, meta)
}

// update PUTs body with If-Match: version. A version of 0 is refused here: it would
// be an update based on nothing read.
func update[T any](ctx context.Context, c *Client, p string, body any, version uint64, meta func(*T) *state.Meta) (T, error) {
	var v T
	if version == 0 {
		return v, fmt.Errorf("PUT %s: %w", p, ErrNoVersion)
	}
	version, err := c.do(ctx, "PUT", p, version, body, &v)
	return withVersion(v, version, err, meta)
}

func withVersion[T any](v T, version uint64, err error, meta func(*T) *state.Meta) (T, error) {
	if err != nil {
		return *new(T), err
	}
	if version != 0 {
		meta(&v).Version = version
	}
	return v, nil
}

// remove deletes p; version 0 deletes whatever version exists.
func (c *Client) remove(ctx context.Context, p string, version uint64) error {
	_, err := c.do(ctx, "DELETE", p, version, nil, nil)
	return err
}

func tenantMeta(v *state.Tenant) *state.Meta   { return &v.Meta }
func serviceMeta(v *state.Service) *state.Meta { return &v.Meta }
func backendMeta(v *BackendView) *state.Meta   { return &v.Meta }
func ruleMeta(v *state.Rule) *state.Meta       { return &v.Meta }
func policyMeta(v *state.Policy) *state.Meta   { return &v.Meta }
func peerMeta(v *OverlayPeerView) *state.Meta  { return &v.Meta }

// Tenants (operators create, change and delete them; a tenant admin sees its own).

// Tenants is the collection of tenants the token may see.
func (c *Client) Tenants() *List[state.Tenant] { return newList[state.Tenant](c, path("tenants")) }

// ListTenants returns every tenant the token may see.
func (c *Client) ListTenants(ctx context.Context) ([]state.Tenant, error) {
	return c.Tenants().Collect(ctx)
}

// GetTenant returns a tenant.
func (c *Client) GetTenant(ctx context.Context, name string) (state.Tenant, error) {
	return get(ctx, c, path("tenants", name), tenantMeta)
}

// CreateTenant creates a tenant.
func (c *Client) CreateTenant(ctx context.Context, t state.Tenant) (state.Tenant, error) {
	return create(ctx, c, path("tenants"), t, tenantMeta)
}

// UpdateTenant replaces tenant t.Name, if it is still at version.
func (c *Client) UpdateTenant(ctx context.Context, t state.Tenant, version uint64) (state.Tenant, error) {
	return update(ctx, c, path("tenants", t.Name), t, version, tenantMeta)
}

// DeleteTenant deletes a tenant (which must have no services, rules or policies left),
// if it is at version (0: whatever its version).
func (c *Client) DeleteTenant(ctx context.Context, name string, version uint64) error {
	return c.remove(ctx, path("tenants", name), version)
}

// Services.

// Services is a tenant's collection of services.
func (c *Client) Services(tenant string) *List[state.Service] {
	return newList[state.Service](c, path("tenants", tenant, "services"))
}

// ListServices returns every service of a tenant.
func (c *Client) ListServices(ctx context.Context, tenant string) ([]state.Service, error) {
	return c.Services(tenant).Collect(ctx)
}

// GetService returns a service.
func (c *Client) GetService(ctx context.Context, tenant, name string) (state.Service, error) {
	return get(ctx, c, path("tenants", tenant, "services", name), serviceMeta)
}

// CreateService creates service s in tenant s.Tenant.
func (c *Client) CreateService(ctx context.Context, s state.Service) (state.Service, error) {
	return create(ctx, c, path("tenants", s.Tenant, "services"), s, serviceMeta)
}

// UpdateService replaces service s.Tenant/s.Name, if it is still at version.
func (c *Client) UpdateService(ctx context.Context, s state.Service, version uint64) (state.Service, error) {
	return update(ctx, c, path("tenants", s.Tenant, "services", s.Name), s, version, serviceMeta)
}

// DeleteService deletes a service (which must have no backends left), if it is at
// version (0: whatever its version).
func (c *Client) DeleteService(ctx context.Context, tenant, name string, version uint64) error {
	return c.remove(ctx, path("tenants", tenant, "services", name), version)
}

// Backends.

func backendPath(tenant, service string, more ...string) string {
	return path(append([]string{"tenants", tenant, "services", service, "backends"}, more...)...)
}

// Backends is a service's collection of backends, with their admission status.
func (c *Client) Backends(tenant, service string) *List[BackendView] {
	return newList[BackendView](c, backendPath(tenant, service))
}

// ListBackends returns every backend of a service.
func (c *Client) ListBackends(ctx context.Context, tenant, service string) ([]BackendView, error) {
	return c.Backends(tenant, service).Collect(ctx)
}

// GetBackend returns a backend with its admission status.
func (c *Client) GetBackend(ctx context.Context, tenant, service, name string) (BackendView, error) {
	return get(ctx, c, backendPath(tenant, service, name), backendMeta)
}

// CreateBackend registers backend b of service b.Tenant/b.Service; it is admitted only
// once its host attests.
func (c *Client) CreateBackend(ctx context.Context, b state.Backend) (BackendView, error) {
	return create(ctx, c, backendPath(b.Tenant, b.Service), b, backendMeta)
}

// UpdateBackend replaces backend b, if it is still at version. (Pass view.Backend to
// update what GetBackend returned.)
func (c *Client) UpdateBackend(ctx context.Context, b state.Backend, version uint64) (BackendView, error) {
	return update(ctx, c, backendPath(b.Tenant, b.Service, b.Name), b, version, backendMeta)
}

// DeleteBackend deletes a backend, if it is at version (0: whatever its version).
func (c *Client) DeleteBackend(ctx context.Context, tenant, service, name string, version uint64) error {
	return c.remove(ctx, backendPath(tenant, service, name), version)
}

// DrainBackend stops new flows to a backend; existing ones continue.
func (c *Client) DrainBackend(ctx context.Context, tenant, service, name string) (BackendView, error) {
	var v BackendView
	version, err := c.do(ctx, "POST", backendPath(tenant, service, name, "drain"), 0, nil, &v)
	return withVersion(v, version, err, backendMeta)
}

// UndrainBackend lets new flows reach a drained backend again.
func (c *Client) UndrainBackend(ctx context.Context, tenant, service, name string) (BackendView, error) {
	var v BackendView
	version, err := c.do(ctx, "DELETE", backendPath(tenant, service, name, "drain"), 0, nil, &v)
	return withVersion(v, version, err, backendMeta)
}

// Attestations is a backend host's attestation history, oldest first.
func (c *Client) Attestations(tenant, service, backend string) *List[state.ResultRecord] {
	return newList[state.ResultRecord](c, backendPath(tenant, service, backend, "attestations"))
}

// ListAttestations returns a backend host's attestation results, oldest first.
func (c *Client) ListAttestations(ctx context.Context, tenant, service, backend string) ([]state.ResultRecord, error) {
	return c.Attestations(tenant, service, backend).Collect(ctx)
}

// Rules.

// Rules is a tenant's collection of allow rules.
func (c *Client) Rules(tenant string) *List[state.Rule] {
	return newList[state.Rule](c, path("tenants", tenant, "rules"))
}

// ListRules returns every allow rule of a tenant.
func (c *Client) ListRules(ctx context.Context, tenant string) ([]state.Rule, error) {
	return c.Rules(tenant).Collect(ctx)
}

// GetRule returns an allow rule.
func (c *Client) GetRule(ctx context.Context, tenant, name string) (state.Rule, error) {
	return get(ctx, c, path("tenants", tenant, "rules", name), ruleMeta)
}

// CreateRule creates allow rule r in tenant r.Tenant.
func (c *Client) CreateRule(ctx context.Context, r state.Rule) (state.Rule, error) {
	return create(ctx, c, path("tenants", r.Tenant, "rules"), r, ruleMeta)
}

// UpdateRule replaces rule r.Tenant/r.Name, if it is still at version.
func (c *Client) UpdateRule(ctx context.Context, r state.Rule, version uint64) (state.Rule, error) {
	return update(ctx, c, path("tenants", r.Tenant, "rules", r.Name), r, version, ruleMeta)
}

// DeleteRule deletes an allow rule, if it is at version (0: whatever its version).
func (c *Client) DeleteRule(ctx context.Context, tenant, name string, version uint64) error {
	return c.remove(ctx, path("tenants", tenant, "rules", name), version)
}

// Policies.

// Policies is a tenant's collection of attestation policies.
func (c *Client) Policies(tenant string) *List[state.Policy] {
	return newList[state.Policy](c, path("tenants", tenant, "policies"))
}

// ListPolicies returns every attestation policy of a tenant.
func (c *Client) ListPolicies(ctx context.Context, tenant string) ([]state.Policy, error) {
	return c.Policies(tenant).Collect(ctx)
}

// GetPolicy returns an attestation policy.
func (c *Client) GetPolicy(ctx context.Context, tenant, name string) (state.Policy, error) {
	return get(ctx, c, path("tenants", tenant, "policies", name), policyMeta)
}

// CreatePolicy creates attestation policy p in tenant p.Tenant.
func (c *Client) CreatePolicy(ctx context.Context, p state.Policy) (state.Policy, error) {
	return create(ctx, c, path("tenants", p.Tenant, "policies"), p, policyMeta)
}

// UpdatePolicy replaces policy p.Tenant/p.Name, if it is still at version.
func (c *Client) UpdatePolicy(ctx context.Context, p state.Policy, version uint64) (state.Policy, error) {
	return update(ctx, c, path("tenants", p.Tenant, "policies", p.Name), p, version, policyMeta)
}

// DeletePolicy deletes an attestation policy (which no backend may still use), if it
// is at version (0: whatever its version).
func (c *Client) DeletePolicy(ctx context.Context, tenant, name string, version uint64) error {
	return c.remove(ctx, path("tenants", tenant, "policies", name), version)
}

// Overlay peers (operators change them; auditors read them too).

// OverlayPeers is the collection of overlay peers, with their links' status.
func (c *Client) OverlayPeers() *List[OverlayPeerView] {
	return newList[OverlayPeerView](c, path("overlay", "peers"))
}

// ListOverlayPeers returns every overlay peer.
func (c *Client) ListOverlayPeers(ctx context.Context) ([]OverlayPeerView, error) {
	return c.OverlayPeers().Collect(ctx)
}

// GetOverlayPeer returns an overlay peer with its link's status.
func (c *Client) GetOverlayPeer(ctx context.Context, name string) (OverlayPeerView, error) {
	return get(ctx, c, path("overlay", "peers", name), peerMeta)
}

// CreateOverlayPeer creates overlay peer p; it becomes a WireGuard peer once it
// attests.
func (c *Client) CreateOverlayPeer(ctx context.Context, p state.OverlayPeer) (OverlayPeerView, error) {
	return create(ctx, c, path("overlay", "peers"), p, peerMeta)
}

// UpdateOverlayPeer replaces overlay peer p.Name, if it is still at version. (Pass
// view.OverlayPeer to update what GetOverlayPeer returned.)
func (c *Client) UpdateOverlayPeer(ctx context.Context, p state.OverlayPeer, version uint64) (OverlayPeerView, error) {
	return update(ctx, c, path("overlay", "peers", p.Name), p, version, peerMeta)
}

// DeleteOverlayPeer deletes an overlay peer (it stops being a WireGuard peer at once),
// if it is at version (0: whatever its version).
func (c *Client) DeleteOverlayPeer(ctx context.Context, name string, version uint64) error {
	return c.remove(ctx, path("overlay", "peers", name), version)
}

// Transitions.

// Transitions is the collection of backend state transitions, oldest first: one
// tenant's, or every tenant's when tenant is "" (operators and auditors only).
func (c *Client) Transitions(tenant string) *List[state.Transition] {
	if tenant == "" {
		return newList[state.Transition](c, path("transitions"))
	}
	return newList[state.Transition](c, path("tenants", tenant, "transitions"))
}

// ListTransitions returns every transition of a tenant ("": of every tenant).
func (c *Client) ListTransitions(ctx context.Context, tenant string) ([]state.Transition, error) {
	return c.Transitions(tenant).Collect(ctx)
}

// Tokens (operators only).

// Tokens is the collection of API tokens (never their secrets).
func (c *Client) Tokens() *List[auth.Token] { return newList[auth.Token](c, path("tokens")) }

// ListTokens returns every API token, without secrets.
func (c *Client) ListTokens(ctx context.Context) ([]auth.Token, error) {
	return c.Tokens().Collect(ctx)
}

// CreateToken creates a token; the answer holds its secret, which cannot be read again.
func (c *Client) CreateToken(ctx context.Context, req TokenRequest) (NewToken, error) {
	var out NewToken
	_, err := c.do(ctx, "POST", path("tokens"), 0, req, &out)
	return out, err
}

// DeleteToken revokes a token.
func (c *Client) DeleteToken(ctx context.Context, id string) error {
	return c.remove(ctx, path("tokens", id), 0)
}

// Status and the API's description.

// Status returns the gateway's status as the token may see it (a tenant admin: its
// tenant only).
func (c *Client) Status(ctx context.Context) (map[string]any, error) {
	var out map[string]any
	_, err := c.do(ctx, "GET", path("status"), 0, nil, &out)
	return out, err
}

// OpenAPI returns the API's OpenAPI 3 document (no token needed).
func (c *Client) OpenAPI(ctx context.Context) (json.RawMessage, error) {
	var out json.RawMessage
	_, err := c.do(ctx, "GET", path("openapi.json"), 0, nil, &out)
	return out, err
}
