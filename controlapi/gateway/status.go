package gateway

import (
	"strings"
	"time"

	"github.com/seed4c/moat/controlapi/auth"
	"github.com/seed4c/moat/controlapi/reconcile"
	"github.com/seed4c/moat/controlapi/state"
	"github.com/seed4c/moat/dataplane"
)

// Status is what GET /v1/status returns to operators and auditors; tenant admins get
// a TenantStatus of their own tenant.
type Status struct {
	Instance   string                       `json:"instance"`
	Uptime     string                       `json:"uptime"`
	Interfaces map[string]string            `json:"interfaces"` // name -> attach mode
	Tenants    []TenantStatus               `json:"tenants"`
	Drops      map[string]uint64            `json:"drops"` // reason -> packets
	Events     dataplane.EventCounters      `json:"flow_events"`
	Reconciler reconcile.Stats              `json:"reconciler"`
	Verifier   map[string]uint64            `json:"attestation_results"`
	SE         *SEStatus                    `json:"se,omitempty"`
	Overlay    *OverlayStatus               `json:"overlay,omitempty"`
	Flows      map[string]dataplane.Traffic `json:"-"`
}

// SEStatus is the gateway's own SE, for operators writing their overlay peers'
// policies for the gateway.
type SEStatus struct {
	Kind     string `json:"kind"`
	EKSHA256 string `json:"ek_sha256"`
}

// TenantStatus is one tenant's summary.
type TenantStatus struct {
	Name     string                     `json:"name"`
	ID       uint32                     `json:"id"`
	Backends map[state.BackendState]int `json:"backends"`
	RX       dataplane.Traffic          `json:"rx"`
	Fwd      dataplane.Traffic          `json:"forwarded"`
	Dropped  dataplane.Traffic          `json:"dropped"`
}

// BackendStatus implements api.Live.
func (g *Gateway) BackendStatus(tenantName, service, backend string) state.BackendStatus {
	return g.Rec.BackendStatus(tenantName, service, backend)
}

// OverlayPeerStatus implements api.Live.
func (g *Gateway) OverlayPeerStatus(peer string) state.OverlayPeerStatus {
	if g.overlay == nil {
		return state.OverlayPeerStatus{}
	}
	return g.overlay.peerStatus(peer)
}

// GatewayStatus implements api.Live.
func (g *Gateway) GatewayStatus(p auth.Principal) any {
	ids, _ := g.State.LoadIDs()
	counters, err := g.DP.Counters()
	if err != nil {
		g.log.Error("read fast path counters", "error", err)
	}
	tenantStatus := func(name string) TenantStatus {
		ts := TenantStatus{Name: name, ID: ids.Tenants[name], Backends: g.Rec.TenantStates(name)}
		if c := counters.Tenants[ts.ID]; c != nil && ts.ID != 0 {
			ts.RX, ts.Fwd, ts.Dropped = c.RX, c.Fwd, c.Dropped
		}
		return ts
	}
	if !p.SeesAll() {
		return tenantStatus(p.Tenant)
	}
	st := Status{
		Instance: g.cfg.Instance, Uptime: time.Since(g.started).Round(time.Second).String(),
		Interfaces: map[string]string{}, Drops: map[string]uint64{}, Events: counters.Events, Reconciler: g.Rec.Stats(),
	}
	for name, mode := range g.modes {
		st.Interfaces[name] = string(mode)
	}
	for name := range ids.Tenants {
		if _, err := g.State.GetTenant(name); err == nil {
			st.Tenants = append(st.Tenants, tenantStatus(name))
		}
	}
	for name, n := range counters.DropsByReason() {
		st.Drops[strings.TrimPrefix(name, "drop_")] = n
	}
	if g.SE != nil {
		st.SE = &SEStatus{Kind: string(g.cfg.SE.Kind), EKSHA256: g.seEK}
	}
	if g.overlay != nil {
		st.Overlay = g.overlay.status()
	}
	vs := g.Verifier.Stats()
	st.Verifier = map[string]uint64{"affirming": vs.Affirming, "contraindicated": vs.Contraindicated, "refused": vs.Refused, "expired": vs.Expired}
	return st
}
