package reconcile

import (
	"context"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/seed4c/moat/attest"
	"github.com/seed4c/moat/controlapi/kv"
	"github.com/seed4c/moat/controlapi/state"
	"github.com/seed4c/moat/lb"
	"github.com/seed4c/moat/tenant"
)

var overlayIfaces = tenant.StaticInterfaces{"eth0": 2, "ov11": 3}

// overlaySetup: tenant a with segment VNI 11 (10.9.0.1/24); service web with a local
// backend w1 (host h1), a backend wr on host r (10.9.0.3, reached through overlay peer
// r, subject a/r) and site2, the VIP of another site behind overlay peer gw2 (route
// 10.100.2.1/32 via gw2's segment address 10.9.0.2).
func overlaySetup(t *testing.T, c *clock, links *FakeLinks) (*state.Store, *Reconciler, *fakeApplier) {
	t.Helper()
	st := state.New(kv.NewMem(), func(cfg tenant.Config) error {
		return tenant.Validate(cfg, overlayIfaces, tenant.IDs{}, tenant.DefaultLimits())
	}, c.now)
	peer := func(name string, addr string, routes ...state.OverlayRoute) state.OverlayPeer {
		return state.OverlayPeer{Name: name, Subject: "a/" + name, Policy: "app", Address: netip.MustParseAddr(addr),
			Verifier: "https://192.0.2.9:9445/attest", Tenants: []string{"a"}, Routes: routes}
	}
	for _, err := range []error{
		second(st.CreateTenant(state.Tenant{Name: "a", Attachments: []tenant.Attachment{{Interface: "eth0"}},
			Overlay: &state.TenantOverlay{VNI: 11, Address: netip.MustParsePrefix("10.9.0.1/24")}})),
		second(st.CreateService(state.Service{Tenant: "a", Name: "web", VIP: netip.MustParseAddr("10.100.0.1"), Port: 80,
			Protocol: tenant.TCP, MaglevSize: 251, MinTrust: attest.TrustAllowListed})),
		second(st.CreatePolicy(state.Policy{Tenant: "a", Name: "app", References: map[string][]string{"/srv/app": {digest}}})),
		second(st.CreateOverlayPeer(peer("r", "100.64.0.3"))),
		second(st.CreateOverlayPeer(peer("gw2", "100.64.0.2", state.OverlayRoute{Tenant: "a",
			Dst: netip.MustParsePrefix("10.100.2.1/32"), Via: netip.MustParseAddr("10.9.0.2")}))),
		second(st.CreateBackend(state.Backend{Tenant: "a", Service: "web", Name: "w1", Identity: "h1",
			Addr: netip.MustParseAddr("10.1.0.1"), Weight: 1, Policy: "app"})),
		second(st.CreateBackend(state.Backend{Tenant: "a", Service: "web", Name: "wr", Identity: "r",
			Addr: netip.MustParseAddr("10.9.0.3"), Weight: 1, Policy: "app"})),
		second(st.CreateBackend(state.Backend{Tenant: "a", Service: "web", Name: "site2", OverlayPeer: "gw2",
			Addr: netip.MustParseAddr("10.100.2.1"), Port: 80, Weight: 1})),
	} {
		if err != nil {
			t.Fatal(err)
		}
	}
	app := &fakeApplier{}
	r, err := New(Config{State: st, Compiler: tenant.NewCompiler(overlayIfaces, tenant.DefaultLimits(), tenant.IDs{}), Applier: app,
		Clock: c.now, Links: links})
	if err != nil {
		t.Fatal(err)
	}
	links.Changed = r.LinksChanged
	return st, r, app
}

func wantBackend(t *testing.T, r *Reconciler, app *fakeApplier, name string, s lb.State, st state.BackendState, reason string) {
	t.Helper()
	got, _ := app.state(name)
	bs := r.BackendStatus("a", "web", name)
	if got != s || bs.State != st || !strings.Contains(bs.Reason, reason) {
		t.Fatalf("%s: fast path %s, status %s (%s); want %s, %s (…%s…)", name, got, bs.State, bs.Reason, s, st, reason)
	}
}

// TestOverlayBackendsWaitForTheirLink: a backend reached through an overlay peer is
// admitted only while its attestation admits it and the link with the peer is up; it
// waits before, is evicted when the link goes down or lapses, and the local backend is
// never affected. Another site's VIP is admitted on the peer gateway's attestation.
func TestOverlayBackendsWaitForTheirLink(t *testing.T) {
	c := newClock()
	links := &FakeLinks{}
	st, r, app := overlaySetup(t, c, links)
	for _, s := range []string{"a/h1", "a/r", "a/gw2"} {
		r.Notify(affirming(s, c, 6*time.Second, attest.TrustAllowListed))
	}
	pass(t, r)
	wantBackend(t, r, app, "w1", lb.StateAdmitted, state.StateAdmitted, "affirming")
	wantBackend(t, r, app, "wr", lb.StateEvicted, state.StateWaiting, "waiting for overlay link r: unknown peer")
	wantBackend(t, r, app, "site2", lb.StateEvicted, state.StateWaiting, "waiting for overlay link gw2")
	if bs := r.BackendStatus("a", "web", "wr"); bs.LastResult == nil || bs.LastResult.Status != attest.StatusAffirming {
		t.Fatalf("a waiting backend shows no attestation result: %+v", bs)
	}

	links.Set("a/r", LinkState{Up: true, Until: c.now().Add(2 * time.Second)})
	due := pass(t, r)
	wantBackend(t, r, app, "wr", lb.StateAdmitted, state.StateAdmitted, "overlay link r up")
	wantBackend(t, r, app, "site2", lb.StateEvicted, state.StateWaiting, "waiting for overlay link gw2")
	if !due.Equal(c.now().Add(2 * time.Second)) {
		t.Fatalf("next pass due %v, want the link's lapse %v", due, c.now().Add(2*time.Second))
	}
	links.Set("a/gw2", LinkState{Up: true})
	pass(t, r)
	wantBackend(t, r, app, "site2", lb.StateAdmitted, state.StateAdmitted, "overlay link gw2 up")

	// The link lapses by itself (the peer's verdict on the gateway expired).
	c.add(2 * time.Second)
	pass(t, r)
	wantBackend(t, r, app, "wr", lb.StateEvicted, state.StateEvicted, "overlay link r down: lapsed")
	wantBackend(t, r, app, "w1", lb.StateAdmitted, state.StateAdmitted, "affirming")
	links.Set("a/r", LinkState{Up: true})
	pass(t, r)
	wantBackend(t, r, app, "wr", lb.StateAdmitted, state.StateAdmitted, "overlay link r up")
	links.Set("a/r", LinkState{Why: "peer removed"})
	pass(t, r)
	wantBackend(t, r, app, "wr", lb.StateEvicted, state.StateEvicted, "overlay link r down: peer removed")
	wantBackend(t, r, app, "site2", lb.StateAdmitted, state.StateAdmitted, "")

	// A link up does not admit what attestation refuses: the site's gateway fails.
	links.Set("a/r", LinkState{Up: true})
	r.Notify(attest.Result{Subject: "a/gw2", Status: attest.StatusContraindicated, Reasons: []string{"reference-value"}, Issued: c.now(), Expires: c.now()})
	pass(t, r)
	wantBackend(t, r, app, "site2", lb.StateEvicted, state.StateEvicted, "reference-value")
	wantBackend(t, r, app, "wr", lb.StateAdmitted, state.StateAdmitted, "")

	// The peer is no longer configured: its host's backend has no link to wait for.
	p, _ := st.GetOverlayPeer("r")
	if err := st.DeleteOverlayPeer("r", p.Version); err != nil {
		t.Fatal(err)
	}
	pass(t, r)
	wantBackend(t, r, app, "wr", lb.StateEvicted, state.StateEvicted, "none of the 1 overlay peers carrying the segment is its host a/r")
	wantBackend(t, r, app, "w1", lb.StateAdmitted, state.StateAdmitted, "")
	if err := st.DeleteOverlayPeer("gw2", 1); err == nil || !strings.Contains(err.Error(), "site of 1 backends") {
		t.Fatalf("deleting the peer another site's backend goes through: %v", err)
	}

	trs, _, _ := st.ListTransitions("a", 0, 0)
	var seq []string
	for _, tr := range trs {
		if tr.Backend == "wr" {
			seq = append(seq, string(tr.To))
		}
	}
	if got := strings.Join(seq, ","); got != "waiting,admitted,evicted,admitted,evicted,admitted,evicted" {
		t.Fatalf("wr's transitions: %s", got)
	}
}

// TestNoOverlayNoRemoteAdmission: without Links (no overlay on this gateway) a backend
// on a segment is never admitted.
func TestNoOverlayNoRemoteAdmission(t *testing.T) {
	c := newClock()
	_, r, app := overlaySetup(t, c, &FakeLinks{})
	r.cfg.Links = nil
	r.Notify(affirming("a/r", c, 6*time.Second, attest.TrustAllowListed))
	pass(t, r)
	wantBackend(t, r, app, "wr", lb.StateEvicted, state.StateWaiting, "runs no overlay")
}

// TestLinkDownEvictsAtOnce: the running reconciler evicts a remote backend as soon as
// its link is reported down, as it does on an evicting result.
func TestLinkDownEvictsAtOnce(t *testing.T) {
	c := newClock()
	links := &FakeLinks{}
	_, r, app := overlaySetup(t, c, links)
	r.Notify(affirming("a/r", c, time.Hour, attest.TrustAllowListed))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- r.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	waitFor := func(want lb.State) time.Duration {
		t.Helper()
		start := time.Now()
		for time.Since(start) < 2*time.Second {
			if s, ok := app.state("wr"); ok && s == want {
				return time.Since(start)
			}
			time.Sleep(100 * time.Microsecond)
		}
		t.Fatalf("wr not %s within 2 s", want)
		return 0
	}
	links.Set("a/r", LinkState{Up: true})
	up := waitFor(lb.StateAdmitted)
	links.Set("a/r", LinkState{Why: "no handshake"})
	down := waitFor(lb.StateEvicted)
	t.Logf("link up → admitted in %v, link down → evicted in %v", up, down)
}
