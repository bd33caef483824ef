package demo

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"

	"github.com/seed4c/moat/controlapi/state"
	"github.com/seed4c/moat/dataplane/overlay"
	"github.com/seed4c/moat/internal/netns"
	"github.com/seed4c/moat/internal/topology"
)

// Two sites linked by their gateways (TwoSites): two `moat gateway` processes, each
// with its own simulated SE and the overlay on, each an AttestedScene of its own (its
// tenants, one attested backend host per tenant, management network).
//
//	site 1 (gw1): tenants a and b, identical addresses (clients 10.0.0.0/24, VIP
//	              10.100.0.1:80, backends 10.1.1.2:8080); overlay 100.64.0.1
//	site 2 (gw2): tenants x and y, identical addresses (VIP 10.100.2.1:80, backends
//	              10.1.1.2:8080, the same as site 1's); overlay 100.64.0.2
//	gw1 wan 192.0.2.1/24 ══ underlay ══ wan 192.0.2.2/24 gw2       (WireGuard only)
//	gw1 sites 10.254.0.1/24 ─────────── sites 10.254.0.2/24 gw2    (each attests to the other)
//	segments: VNI 11 = a at site 1 = x at site 2; VNI 12 = b = y; 10.9.0.0/24 in both
//	          (gw1 10.9.0.1, gw2 10.9.0.2)
//
// Site 1's service web of a balances over its local backend and site 2 (backend "site2":
// gw2's VIP, overlay_peer gw2, route 10.100.2.1/32 via 10.9.0.2); the same for b.
// Site 2 routes site 1's clients (10.0.0.0/24) back via 10.9.0.1 on each segment. The
// tenant's name differs across sites; its VNI is its identity on the overlay.
type TwoSites struct {
	Scenes [2]*AttestedScene
	Sites  [2]*Site
}

// Site is one gateway of a two-site overlay.
type Site struct {
	Name     string            // its overlay identity is SitesTenant/Name
	Overlay  netip.Prefix      // its overlay address with the overlay's prefix
	Underlay netip.Prefix      // on its "wan" interface
	Mgmt     netip.Prefix      // on its "sites" interface: the other gateway attests here
	Segment  netip.Prefix      // its address on each of its tenants' segments
	VNIs     map[string]uint32 // its tenants' VNIs
	Measured string            // the file its SE measures (set by NewTwoSites)
}

// SitesTenant is the operators' tenant at each gateway that holds the other gateway's
// attestation policy and subject ("sites/gw2"): no tenant admin of a tenant the peer
// carries controls the policy that admits it.
const SitesTenant = "sites"

// Identity is the gateway's attestation identity at its peer.
func (st *Site) Identity() string { return SitesTenant + "/" + st.Name }

// VerifierURL is where the gateway's peer-facing verifier is reached from the other.
func (st *Site) VerifierURL() string {
	return fmt.Sprintf("https://%s:9445%s", st.Mgmt.Addr(), overlay.VerifierPrefix)
}

func (st *Site) gatewayConfig(string) string {
	return fmt.Sprintf(`se:
  kind: simulator
  measure: [%q]
overlay:
  enabled: true
  address: %s
  identity: %s
  attest_interval: 500ms
  verifier_listen: ":9445"
`, st.Measured, st.Overlay, st.Identity())
}

// measuredContent is what a site's measured file holds, untampered.
func (st *Site) measuredContent() []byte {
	return []byte("moat gateway " + st.Name + " configuration, release 1\n")
}

// NewTwoSites builds both sites, starts their gateways and agents, and links them.
// Nothing is registered yet (Register).
func NewTwoSites(bin, dir string) (ts *TwoSites, err error) {
	ts = &TwoSites{Sites: [2]*Site{
		{Name: "gw1", Overlay: netip.MustParsePrefix("100.64.0.1/24"), Underlay: netip.MustParsePrefix("192.0.2.1/24"),
			Mgmt: netip.MustParsePrefix("10.254.0.1/24"), Segment: netip.MustParsePrefix("10.9.0.1/24"), VNIs: map[string]uint32{"a": 11, "b": 12}},
		{Name: "gw2", Overlay: netip.MustParsePrefix("100.64.0.2/24"), Underlay: netip.MustParsePrefix("192.0.2.2/24"),
			Mgmt: netip.MustParsePrefix("10.254.0.2/24"), Segment: netip.MustParsePrefix("10.9.0.2/24"), VNIs: map[string]uint32{"x": 11, "y": 12}},
	}}
	defer func() {
		if err != nil {
			ts.Close()
			ts = nil
		}
	}()
	tenants := [2][]string{{"a", "b"}, {"x", "y"}}
	vips := [2]netip.Addr{netip.MustParseAddr("10.100.0.1"), netip.MustParseAddr("10.100.2.1")}
	for i, st := range ts.Sites {
		d := filepath.Join(dir, st.Name)
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, err
		}
		st.Measured = filepath.Join(d, "site.conf")
		if err := os.WriteFile(st.Measured, st.measuredContent(), 0o644); err != nil {
			return nil, err
		}
		if ts.Scenes[i], err = NewAttestedScene(AttestedOptions{Binary: bin, Dir: d, Instance: netns.UniqueName("site"), Backends: 1,
			Tenants: tenants[i], VIP: vips[i], Site: st}); err != nil {
			return nil, fmt.Errorf("site %s: %w", st.Name, err)
		}
	}
	return ts, ts.link()
}

// link joins the two gateways: the underlay (WireGuard only) and the link their
// agents attest over.
func (ts *TwoSites) link() error {
	g1, g2 := ts.Scenes[0].Topo.GW, ts.Scenes[1].Topo.GW
	for _, h := range []*netns.Host{g1, g2} {
		if err := h.Sysctl("net/ipv6/conf/default/disable_ipv6", "1"); err != nil {
			return err
		}
	}
	for _, l := range []struct {
		name string
		a, b netip.Prefix
	}{{"wan", ts.Sites[0].Underlay, ts.Sites[1].Underlay}, {"sites", ts.Sites[0].Mgmt, ts.Sites[1].Mgmt}} {
		if _, _, err := netns.Veth(g1, l.name, g2, l.name); err != nil {
			return err
		}
		if err := g1.AddAddr(l.name, l.a.String()); err != nil {
			return err
		}
		if err := g2.AddAddr(l.name, l.b.String()); err != nil {
			return err
		}
	}
	return nil
}

// Register registers each site's tenants (with their segments), services, rules and
// attested backends, then links the sites: at each, the other gateway is an overlay
// peer (a gateway, appraised against the digest of its measured file with its EK
// pinned, in tenant "sites"), carrying both tenants; at site 1, each tenant's service
// gets site 2 as a backend.
func (ts *TwoSites) Register() error {
	for _, s := range ts.Scenes {
		if err := s.Register(); err != nil {
			return err
		}
	}
	var eks [2]string
	for i, s := range ts.Scenes {
		var err error
		if eks[i], err = s.GatewayEK(); err != nil {
			return err
		}
	}
	for i, s := range ts.Scenes {
		self, peer := ts.Sites[i], ts.Sites[1-i]
		digest := sha256.Sum256(peer.measuredContent())
		p := state.OverlayPeer{Name: peer.Name, Subject: peer.Identity(), Policy: peer.Name, EKSHA256: eks[1-i],
			Address: peer.Overlay.Addr(), Endpoint: netip.AddrPortFrom(peer.Underlay.Addr(), overlay.DefaultListenPort),
			Verifier: peer.VerifierURL(), Gateway: true}
		for _, tn := range s.Topo.Tenants {
			p.Tenants = append(p.Tenants, tn.Name)
			dst := netip.PrefixFrom(ts.Scenes[1].Topo.Opts.VIP, 32) // site 2's VIP, behind gw2
			if i == 1 {
				dst = netip.MustParsePrefix("10.0.0.0/24") // site 1's clients, behind gw1 (replaces site 2's own client route)
			}
			p.Routes = append(p.Routes, state.OverlayRoute{Tenant: tn.Name, Dst: dst, Via: peer.Segment.Addr()})
		}
		steps := []struct {
			path string
			body any
		}{
			{"/v1/tenants", state.Tenant{Name: SitesTenant}},
			{"/v1/tenants/" + SitesTenant + "/policies", map[string]any{"name": peer.Name,
				"references": map[string][]string{peer.Measured: {hex.EncodeToString(digest[:])}}}},
			{"/v1/overlay/peers", p},
		}
		if i == 0 {
			for _, tn := range s.Topo.Tenants {
				steps = append(steps, struct {
					path string
					body any
				}{"/v1/tenants/" + tn.Name + "/services/web/backends", state.Backend{Name: SiteBackend, OverlayPeer: peer.Name,
					Addr: ts.Scenes[1].Topo.Opts.VIP, Port: ts.Scenes[1].Topo.Opts.Port, Weight: 1}})
			}
		}
		for _, st := range steps {
			if _, err := s.Call("POST", st.path, st.body, nil); err != nil {
				return fmt.Errorf("site %s: %w", self.Name, err)
			}
		}
	}
	return nil
}

// SiteBackend is the name of site 2's VIP among the backends of site 1's services.
const SiteBackend = "site2"

// Tamper changes a site's measured file: its next quote shows it.
func (ts *TwoSites) Tamper(i int) error {
	return os.WriteFile(ts.Sites[i].Measured, []byte("moat gateway "+ts.Sites[i].Name+" configuration, with a backdoor\n"), 0o644)
}

// Tenant returns a site's tenant by name.
func (ts *TwoSites) Tenant(i int, name string) *topology.Tenant {
	for _, tn := range ts.Scenes[i].Topo.Tenants {
		if tn.Name == name {
			return tn
		}
	}
	return nil
}

// Close stops both sites and removes everything they created (the links between the
// gateways go with their namespaces).
func (ts *TwoSites) Close() error {
	var errs []error
	for _, s := range ts.Scenes {
		if s != nil {
			errs = append(errs, s.Close())
		}
	}
	return errors.Join(errs...)
}
