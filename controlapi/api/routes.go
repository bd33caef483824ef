package api

import (
	"net/http"
	"sort"
	"strconv"

	"github.com/seed4c/moat/controlapi/auth"
	"github.com/seed4c/moat/controlapi/state"
)

// BackendView is a backend with its admission status.
type BackendView struct {
	state.Backend
	Subject string              `json:"subject"`
	Status  state.BackendStatus `json:"status"`
}

// OverlayPeerView is an overlay peer with its link's status.
type OverlayPeerView struct {
	state.OverlayPeer
	Status state.OverlayPeerStatus `json:"status"`
}

// TokenRequest creates a token.
type TokenRequest struct {
	Name   string    `json:"name"`
	Role   auth.Role `json:"role"`
	Tenant string    `json:"tenant,omitempty"`
}

// NewToken is a created token with its secret, shown this once.
type NewToken struct {
	auth.Token
	Secret string `json:"secret"`
}

func (s *Server) routes() []route {
	tenants := resource[state.Tenant]{
		kind: "tenant", collection: "/v1/tenants", item: "tenant", read: tenantRead, write: tenantOperator,
		bind: func(r *http.Request, v *state.Tenant, item bool) error {
			if item {
				return same(&v.Name, "name", r.PathValue("tenant"))
			}
			return nil
		},
		meta: func(v *state.Tenant) *state.Meta { return &v.Meta },
		name: func(v *state.Tenant) string { return v.Name },
		get:  func(r *http.Request) (state.Tenant, error) { return s.State.GetTenant(r.PathValue("tenant")) },
		list: func(r *http.Request, p auth.Principal, after string, limit int) ([]state.Tenant, string, error) {
			if !p.SeesAll() {
				t, err := s.State.GetTenant(p.Tenant)
				if err != nil || after != "" {
					return nil, "", nil
				}
				return []state.Tenant{t}, "", nil
			}
			return s.State.ListTenants(after, limit)
		},
		create: s.State.CreateTenant,
		update: s.State.UpdateTenant,
		del:    func(r *http.Request, v uint64) error { return s.State.DeleteTenant(r.PathValue("tenant"), v) },
	}

	services := tenantScoped(s, "service", "services",
		func(v *state.Service) (*string, *string, *state.Meta) { return &v.Tenant, &v.Name, &v.Meta },
		s.State.GetService, s.State.ListServices, s.State.CreateService, s.State.UpdateService, s.State.DeleteService)
	rules := tenantScoped(s, "rule", "rules",
		func(v *state.Rule) (*string, *string, *state.Meta) { return &v.Tenant, &v.Name, &v.Meta },
		s.State.GetRule, s.State.ListRules, s.State.CreateRule, s.State.UpdateRule, s.State.DeleteRule)
	policies := tenantScoped(s, "policy", "policies",
		func(v *state.Policy) (*string, *string, *state.Meta) { return &v.Tenant, &v.Name, &v.Meta },
		s.State.GetPolicy, s.State.ListPolicies, s.State.CreatePolicy, s.State.UpdatePolicy, s.State.DeletePolicy)

	backends := resource[state.Backend]{
		kind: "backend", collection: "/v1/tenants/{tenant}/services/{service}/backends", item: "backend", read: tenantRead, write: tenantWrite,
		readOnly: []string{"subject", "status"}, // what GET adds: a GET body can be PUT back
		bind: func(r *http.Request, v *state.Backend, item bool) error {
			if err := same(&v.Tenant, "tenant", r.PathValue("tenant")); err != nil {
				return err
			}
			if err := same(&v.Service, "service", r.PathValue("service")); err != nil || !item {
				return err
			}
			return same(&v.Name, "name", r.PathValue("backend"))
		},
		meta: func(v *state.Backend) *state.Meta { return &v.Meta },
		name: func(v *state.Backend) string { return v.Name },
		get: func(r *http.Request) (state.Backend, error) {
			return s.State.GetBackend(r.PathValue("tenant"), r.PathValue("service"), r.PathValue("backend"))
		},
		list: func(r *http.Request, _ auth.Principal, after string, limit int) ([]state.Backend, string, error) {
			t, sv := r.PathValue("tenant"), r.PathValue("service")
			if _, err := s.State.GetService(t, sv); err != nil {
				return nil, "", err
			}
			return s.State.ListBackends(t, sv, after, limit)
		},
		create: s.State.CreateBackend,
		update: s.State.UpdateBackend,
		del: func(r *http.Request, v uint64) error {
			return s.State.DeleteBackend(r.PathValue("tenant"), r.PathValue("service"), r.PathValue("backend"), v)
		},
		view: func(r *http.Request, v state.Backend) any {
			out := BackendView{Backend: v, Subject: s.State.SubjectOf(v)}
			if r != nil && s.Live != nil {
				out.Status = s.Live.BackendStatus(v.Tenant, v.Service, v.Name)
			}
			return out
		},
	}

	peers := resource[state.OverlayPeer]{
		kind: "overlay peer", collection: "/v1/overlay/peers", item: "peer", read: seeAll, write: operatorOnly,
		readOnly: []string{"status"},
		bind: func(r *http.Request, v *state.OverlayPeer, item bool) error {
			if item {
				return same(&v.Name, "name", r.PathValue("peer"))
			}
			return nil
		},
		meta: func(v *state.OverlayPeer) *state.Meta { return &v.Meta },
		name: func(v *state.OverlayPeer) string { return v.Name },
		get:  func(r *http.Request) (state.OverlayPeer, error) { return s.State.GetOverlayPeer(r.PathValue("peer")) },
		list: func(_ *http.Request, _ auth.Principal, after string, limit int) ([]state.OverlayPeer, string, error) {
			return s.State.ListOverlayPeers(after, limit)
		},
		create: s.State.CreateOverlayPeer,
		update: s.State.UpdateOverlayPeer,
		del:    func(r *http.Request, v uint64) error { return s.State.DeleteOverlayPeer(r.PathValue("peer"), v) },
		view: func(r *http.Request, v state.OverlayPeer) any {
			out := OverlayPeerView{OverlayPeer: v}
			if r != nil && s.Live != nil {
				out.Status = s.Live.OverlayPeerStatus(v.Name)
			}
			return out
		},
	}

	var out []route
	out = append(out, route{method: "GET", path: "/v1/openapi.json", access: public, summary: "This API's OpenAPI 3 document", status: 200,
		handle: func(w http.ResponseWriter, r *http.Request, _ auth.Principal) {
			writeJSON(w, http.StatusOK, 0, s.OpenAPI())
		}})
	out = append(out, route{method: "GET", path: "/v1/status", access: authenticated, summary: "The gateway's status (a tenant admin sees its tenant only)", status: 200,
		response: map[string]any{},
		handle: func(w http.ResponseWriter, r *http.Request, p auth.Principal) {
			var st any = map[string]any{}
			if s.Live != nil {
				st = s.Live.GatewayStatus(p)
			}
			writeJSON(w, http.StatusOK, 0, st)
		}})
	for _, rt := range tenants.routes(s) {
		// Creating a tenant is for operators; listing is for anyone, filtered by role.
		if rt.method == "POST" {
			rt.access = operatorOnly
		}
		if rt.method == "GET" && rt.path == "/v1/tenants" {
			rt.access = authenticated
		}
		out = append(out, rt)
	}
	out = append(out, services.routes(s)...)
	out = append(out, backends.routes(s)...)
	item := backends.collection + "/{backend}"
	for _, drain := range []bool{true, false} {
		method, summary := "POST", "Drain a backend: existing flows continue, new flows avoid it"
		if !drain {
			method, summary = "DELETE", "Stop draining a backend"
		}
		out = append(out, route{method: method, path: item + "/drain", access: tenantWrite, summary: summary, response: BackendView{}, status: 200,
			handle: func(w http.ResponseWriter, r *http.Request, _ auth.Principal) {
				b, err := backends.get(r)
				if err != nil {
					s.fail(w, r, err)
					return
				}
				if b.Drain != drain {
					b.Drain = drain
					if b, err = s.State.UpdateBackend(b, b.Version); err != nil {
						s.fail(w, r, err)
						return
					}
				}
				writeJSON(w, http.StatusOK, b.Version, backends.view(r, b))
			}})
	}
	out = append(out, route{method: "GET", path: item + "/attestations", access: tenantRead, summary: "A backend's attestation results, oldest first", list: true,
		response: state.ResultRecord{}, status: 200,
		handle: func(w http.ResponseWriter, r *http.Request, _ auth.Principal) {
			b, err := backends.get(r)
			if err != nil {
				s.fail(w, r, err)
				return
			}
			after, limit, err := seqPage(r)
			if err != nil {
				writeProblem(w, r, http.StatusBadRequest, err.Error())
				return
			}
			items, next, err := s.State.ListResults(s.State.SubjectOf(b), after, limit)
			if err != nil {
				s.fail(w, r, err)
				return
			}
			writeList(w, items, seqToken(next))
		}})
	out = append(out, rules.routes(s)...)
	out = append(out, policies.routes(s)...)
	out = append(out, peers.routes(s)...)
	transitions := func(all bool) func(w http.ResponseWriter, r *http.Request, _ auth.Principal) {
		return func(w http.ResponseWriter, r *http.Request, _ auth.Principal) {
			t := r.PathValue("tenant")
			if !all {
				if _, err := s.State.GetTenant(t); err != nil {
					s.fail(w, r, err)
					return
				}
			}
			after, limit, err := seqPage(r)
			if err != nil {
				writeProblem(w, r, http.StatusBadRequest, err.Error())
				return
			}
			items, next, err := s.State.ListTransitions(t, after, limit)
			if err != nil {
				s.fail(w, r, err)
				return
			}
			writeList(w, items, seqToken(next))
		}
	}
	out = append(out,
		route{method: "GET", path: "/v1/tenants/{tenant}/transitions", access: tenantRead, summary: "The tenant's backend state transitions, oldest first",
			list: true, response: state.Transition{}, status: 200, handle: transitions(false)},
		route{method: "GET", path: "/v1/transitions", access: seeAll, summary: "Every backend state transition, oldest first",
			list: true, response: state.Transition{}, status: 200, handle: transitions(true)},
		route{method: "GET", path: "/v1/tokens", access: operatorOnly, summary: "List tokens (never their secrets)", list: true, response: auth.Token{}, status: 200,
			handle: func(w http.ResponseWriter, r *http.Request, _ auth.Principal) {
				after, limit, err := page(r)
				if err != nil {
					writeProblem(w, r, http.StatusBadRequest, err.Error())
					return
				}
				toks, err := s.Tokens.List() // sorted by id
				if err != nil {
					s.fail(w, r, err)
					return
				}
				i := sort.Search(len(toks), func(i int) bool { return toks[i].ID > after })
				toks = toks[i:]
				next := ""
				if len(toks) > limit {
					toks, next = toks[:limit], toks[limit-1].ID
				}
				writeList(w, toks, next)
			}},
		route{method: "POST", path: "/v1/tokens", access: operatorOnly, summary: "Create a token; its secret is in this response only",
			request: TokenRequest{}, response: NewToken{}, status: 201,
			handle: func(w http.ResponseWriter, r *http.Request, _ auth.Principal) {
				var req TokenRequest
				if !s.decode(w, r, &req) {
					return
				}
				if req.Tenant != "" {
					if _, err := s.State.GetTenant(req.Tenant); err != nil {
						writeProblem(w, r, http.StatusUnprocessableEntity, "tenant "+req.Tenant+" does not exist")
						return
					}
				}
				secret, tok, err := s.Tokens.Create(req.Name, req.Role, req.Tenant)
				if err != nil {
					writeProblem(w, r, http.StatusUnprocessableEntity, err.Error())
					return
				}
				w.Header().Set("Location", "/v1/tokens/"+tok.ID)
				writeJSON(w, http.StatusCreated, 0, NewToken{Token: tok, Secret: secret})
			}},
		route{method: "DELETE", path: "/v1/tokens/{id}", access: operatorOnly, summary: "Revoke a token", status: 204,
			handle: func(w http.ResponseWriter, r *http.Request, _ auth.Principal) {
				if err := s.Tokens.Delete(r.PathValue("id")); err != nil {
					s.fail(w, r, err)
					return
				}
				w.WriteHeader(http.StatusNoContent)
			}},
	)
	return out
}

// tenantScoped is the resource of a kind that lives directly under a tenant
// (/v1/tenants/{tenant}/<plural>/{<kind>}), given where its tenant, name and meta are
// and the store's functions for it.
func tenantScoped[T any](s *Server, kind, plural string, fields func(*T) (tenantName, name *string, meta *state.Meta),
	get func(t, n string) (T, error), list func(t, after string, limit int) ([]T, string, error),
	create func(T) (T, error), update func(T, uint64) (T, error), del func(t, n string, ifMatch uint64) error,
) resource[T] {
	return resource[T]{
		kind: kind, collection: "/v1/tenants/{tenant}/" + plural, item: kind, read: tenantRead, write: tenantWrite,
		bind: func(r *http.Request, v *T, item bool) error {
			t, n, _ := fields(v)
			if err := same(t, "tenant", r.PathValue("tenant")); err != nil || !item {
				return err
			}
			return same(n, "name", r.PathValue(kind))
		},
		meta: func(v *T) *state.Meta { _, _, m := fields(v); return m },
		name: func(v *T) string { _, n, _ := fields(v); return *n },
		get:  func(r *http.Request) (T, error) { return get(r.PathValue("tenant"), r.PathValue(kind)) },
		list: func(r *http.Request, _ auth.Principal, after string, limit int) ([]T, string, error) {
			if _, err := s.State.GetTenant(r.PathValue("tenant")); err != nil {
				return nil, "", err // a missing tenant is 404, not an empty list
			}
			return list(r.PathValue("tenant"), after, limit)
		},
		create: create,
		update: update,
		del:    func(r *http.Request, v uint64) error { return del(r.PathValue("tenant"), r.PathValue(kind), v) },
	}
}

func seqPage(r *http.Request) (uint64, int, error) {
	after, limit, err := page(r)
	if err != nil || after == "" {
		return 0, limit, err
	}
	n, err := strconv.ParseUint(after, 10, 64)
	if err != nil {
		return 0, 0, err
	}
	return n, limit, nil
}

func seqToken(n uint64) string {
	if n == 0 {
		return ""
	}
	return strconv.FormatUint(n, 10)
}
