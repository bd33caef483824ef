package state

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/seed4c/moat/tenant"
)

// overlayStore is populate's store with tenant a on overlay segment VNI 11 and peer r,
// its validator knowing ov11.
func overlayStore(t *testing.T) *Store {
	t.Helper()
	validate := func(c tenant.Config) error {
		return tenant.Validate(c, tenant.StaticInterfaces{"eth0": 2, "eth1": 3, "ov11": 4, "ov12": 5}, tenant.IDs{}, tenant.DefaultLimits())
	}
	s := New(newStore(t).kv, validate, nil)
	populate(t, s)
	a, err := s.GetTenant("a")
	if err != nil {
		t.Fatal(err)
	}
	a.Overlay = &TenantOverlay{VNI: 11, Address: netip.MustParsePrefix("10.9.0.1/24")}
	if _, err := s.UpdateTenant(a, a.Version); err != nil {
		t.Fatal(err)
	}
	if _, err := s.CreateOverlayPeer(peerR()); err != nil {
		t.Fatal(err)
	}
	return s
}

func peerR() OverlayPeer {
	return OverlayPeer{Name: "r", Subject: "a/host-1", Policy: "app", Address: netip.MustParseAddr("100.64.0.3"),
		Endpoint: netip.MustParseAddrPort("192.0.2.3:51820"), Verifier: "https://10.255.0.20:9445/attest", Tenants: []string{"a"}}
}

// TestOverlayValidatedWhole: overlay segments and peers are checked against the whole
// configuration, and what peers use cannot be deleted from under them.
func TestOverlayValidatedWhole(t *testing.T) {
	s := overlayStore(t)
	sn, err := s.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	// The segment's gateway end is attached to the tenant without being listed.
	if at := sn.Config(nil).Tenants[0].Attachments; len(at) != 2 || at[1].Interface != "ov11" {
		t.Fatalf("tenant a's attachments: %+v", at)
	}
	if len(sn.Tenants[0].Attachments) != 1 {
		t.Fatalf("the stored tenant lists the segment: %+v", sn.Tenants[0].Attachments)
	}
	peer := func(edit func(p *OverlayPeer)) error {
		p := peerR()
		p.Name, p.Subject, p.Address = "x", "a/host-9", netip.MustParseAddr("100.64.0.9")
		edit(&p)
		_, err := s.CreateOverlayPeer(p)
		return err
	}
	// Host 9 serves a backend too: its peer must be appraised the same way.
	if _, err := s.CreatePolicy(Policy{Tenant: "a", Name: "other", References: map[string][]string{"/srv/other": {digest}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.CreateBackend(Backend{Tenant: "a", Service: "web", Name: "w9", Identity: "host-9", Addr: netip.MustParseAddr("10.9.0.9"), Weight: 1, Policy: "app"}); err != nil {
		t.Fatal(err)
	}
	b := Tenant{Name: "b", Attachments: []tenant.Attachment{{Interface: "eth1"}}, Overlay: &TenantOverlay{VNI: 11, Address: netip.MustParsePrefix("10.9.0.1/24")}}
	cases := map[string]error{
		"VNI used twice":       second(s.CreateTenant(b)),
		"VNI zero":             second(s.CreateTenant(Tenant{Name: "c", Overlay: &TenantOverlay{VNI: 0, Address: netip.MustParsePrefix("10.9.0.1/24")}})),
		"segment address /32":  second(s.CreateTenant(Tenant{Name: "c", Overlay: &TenantOverlay{VNI: 12, Address: netip.MustParsePrefix("10.9.0.1/32")}})),
		"segment network addr": second(s.CreateTenant(Tenant{Name: "c", Overlay: &TenantOverlay{VNI: 12, Address: netip.MustParsePrefix("10.9.0.0/24")}})),
		"segment not an iface": second(s.CreateTenant(Tenant{Name: "c", Overlay: &TenantOverlay{VNI: 13, Address: netip.MustParsePrefix("10.9.0.1/24")}})),
		"same subject":         peer(func(p *OverlayPeer) { p.Subject = "a/host-1" }),
		"subject no tenant":    peer(func(p *OverlayPeer) { p.Subject = "host-9" }),
		"unknown tenant":       peer(func(p *OverlayPeer) { p.Subject = "zz/host-9" }),
		"unknown policy":       peer(func(p *OverlayPeer) { p.Subject, p.Policy = "a/host-8", "nope" }),
		"policy differs":       peer(func(p *OverlayPeer) { p.Policy = "other" }),
		"EK differs":           peer(func(p *OverlayPeer) { p.EKSHA256 = digest }),
		"tenant without seg":   peer(func(p *OverlayPeer) { p.Tenants = []string{"a", "zz"} }),
		"no tenants":           peer(func(p *OverlayPeer) { p.Tenants = nil }),
		"plain http verifier":  peer(func(p *OverlayPeer) { p.Verifier = "http://10.255.0.21:9445/attest" }),
		"no address":           peer(func(p *OverlayPeer) { p.Address = netip.Addr{} }),
		"route off the seg": peer(func(p *OverlayPeer) {
			p.Routes = []OverlayRoute{{"a", netip.MustParsePrefix("10.100.2.1/32"), netip.MustParseAddr("10.8.0.2")}}
		}),
		"route via gateway": peer(func(p *OverlayPeer) {
			p.Routes = []OverlayRoute{{"a", netip.MustParsePrefix("10.100.2.1/32"), netip.MustParseAddr("10.9.0.1")}}
		}),
		"route other tenant": peer(func(p *OverlayPeer) {
			p.Routes = []OverlayRoute{{"b", netip.MustParsePrefix("10.100.2.1/32"), netip.MustParseAddr("10.9.0.2")}}
		}),
		"bad ek": peer(func(p *OverlayPeer) { p.EKSHA256 = "12" }),
	}
	// The gateway's own checks (its overlay prefix) run in the same transaction.
	s.CheckOverlay(func(sn *Snapshot) error {
		for _, p := range sn.OverlayPeers {
			if !netip.MustParsePrefix("100.64.0.0/24").Contains(p.Address) {
				return fmt.Errorf("peer %s outside the overlay", p.Name)
			}
		}
		return nil
	})
	cases["outside the gateway's overlay"] = peer(func(p *OverlayPeer) { p.Address = netip.MustParseAddr("100.65.0.9") })
	for name, err := range cases {
		var inv *InvalidError
		if !errors.As(err, &inv) {
			t.Errorf("%s: %v, want an InvalidError", name, err)
		}
	}
	if err := peer(func(p *OverlayPeer) {
		p.Routes = []OverlayRoute{{"a", netip.MustParsePrefix("10.100.2.1/32"), netip.MustParseAddr("10.9.0.2")}}
	}); err != nil {
		t.Fatalf("a peer gateway's route: %v", err)
	}
	// What peers use cannot go: the tenant's segment, its policy, the tenant.
	a, _ := s.GetTenant("a")
	a.Overlay = nil
	var inv *InvalidError
	if _, err := s.UpdateTenant(a, a.Version); !errors.As(err, &inv) || !strings.Contains(err.Error(), "no overlay segment") {
		t.Fatalf("removing a segment peers carry: %v", err)
	}
	for _, n := range []string{"w1", "w9"} {
		if err := s.DeleteBackend("a", "web", n, 0); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.DeletePolicy("a", "app", 0); !errors.Is(err, ErrInUse) {
		t.Fatalf("deleting the peers' policy: %v", err)
	}
	for _, n := range []string{"r", "x"} {
		if err := s.DeleteOverlayPeer(n, 0); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.DeletePolicy("a", "app", 0); err != nil {
		t.Fatal(err)
	}
	if _, err := s.UpdateTenant(a, a.Version); err != nil {
		t.Fatalf("removing a segment no peer carries: %v", err)
	}
}
