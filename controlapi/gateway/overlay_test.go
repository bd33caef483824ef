package gateway

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/seed4c/moat/attest/tpm"
	"github.com/seed4c/moat/controlapi/state"
	"github.com/seed4c/moat/dataplane/overlay"
)

func TestOverlayConfig(t *testing.T) {
	c, err := ParseConfig([]byte("interfaces: [eth1]\nstate_dir: /srv/moat\nse:\n  kind: simulator\noverlay:\n  enabled: true\n  address: 100.64.0.1/24\n"))
	if err != nil {
		t.Fatal(err)
	}
	o := c.Overlay
	if c.SE.Kind != tpm.KindSimulator || c.SE.PCR != 15 || o.ListenPort != 51820 || o.Device != "moat-wg" || o.MTU != 1420 ||
		o.Epoch != 10*time.Minute || o.KeyFile != "/srv/moat/overlay/wireguard.key" || o.Identity == "" || o.AttestInterval != 2*time.Second {
		t.Fatalf("overlay defaults: %+v %+v", c.SE, o)
	}
	base := "interfaces: [e]\nse:\n  kind: device\noverlay:\n  enabled: true\n"
	for name, c := range map[string]struct{ yaml, want string }{
		"no SE":        {"interfaces: [e]\noverlay:\n  enabled: true\n  address: 100.64.0.1/24\n", "needs the gateway's SE"},
		"no address":   {base, "overlay.address"},
		"network addr": {base + "  address: 100.64.0.0/24\n", "overlay.address"},
		"tiny mtu":     {base + "  address: 100.64.0.1/24\n  mtu: 600\n", "overlay.mtu"},
		"odd epoch":    {base + "  address: 100.64.0.1/24\n  epoch: 1500ms\n", "overlay.epoch"},
		"se kind":      {"interfaces: [e]\nse:\n  kind: hsm\n", "se.kind"},
		"se pcr":       {"interfaces: [e]\nse:\n  pcr: 3\n", "se.pcr"},
		"fast attest":  {base + "  address: 100.64.0.1/24\n  attest_interval: 10ms\n", "attest_interval"},
	} {
		_, err := ParseConfig([]byte(c.yaml))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v (want an error mentioning %q)", name, err, c.want)
		}
	}
}

// TestOverlayDesired: a tenant with an overlay field is a fast-path segment in its
// routing table, carried by the peers that list it, with their routes.
func TestOverlayDesired(t *testing.T) {
	sn := &state.Snapshot{
		Tenants: []state.Tenant{
			{Name: "a", FIBTable: 100, Overlay: &state.TenantOverlay{VNI: 11, Address: netip.MustParsePrefix("10.9.0.1/24")}},
			{Name: "b", FIBTable: 200},
			{Name: "c", FIBTable: 300, Overlay: &state.TenantOverlay{VNI: 13, Address: netip.MustParsePrefix("10.9.0.1/24")}},
		},
		OverlayPeers: []state.OverlayPeer{
			{Name: "site-2", Subject: "a/gw-2", Address: netip.MustParseAddr("100.64.0.2"), Endpoint: netip.MustParseAddrPort("192.0.2.2:51820"),
				Tenants: []string{"a", "c"}, Routes: []state.OverlayRoute{{Tenant: "c", Dst: netip.MustParsePrefix("10.100.2.1/32"), Via: netip.MustParseAddr("10.9.0.2")}}},
			{Name: "host-r", Subject: "a/r", Address: netip.MustParseAddr("100.64.0.3"), Tenants: []string{"a"}},
		},
	}
	peers, segs := desired(sn)
	if len(peers) != 2 || peers[0] != (overlay.PeerConfig{Subject: "a/gw-2", Endpoint: netip.MustParseAddrPort("192.0.2.2:51820"), Address: netip.MustParseAddr("100.64.0.2")}) ||
		peers[1].Subject != "a/r" || peers[1].Endpoint.IsValid() {
		t.Fatalf("peers %+v", peers)
	}
	if len(segs) != 2 {
		t.Fatalf("segments %+v", segs)
	}
	a, c := segs[0], segs[1]
	if a.Tenant != "a" || a.VNI != 11 || a.Table != 100 || !a.FastPath || strings.Join(a.Peers, ",") != "a/gw-2,a/r" || len(a.Routes) != 0 ||
		a.FastPathInterface() != state.SegmentInterface(11) {
		t.Fatalf("tenant a's segment %+v", a)
	}
	if c.VNI != 13 || c.Table != 300 || strings.Join(c.Peers, ",") != "a/gw-2" || len(c.Routes) != 1 || c.Routes[0].Via != netip.MustParseAddr("10.9.0.2") {
		t.Fatalf("tenant c's segment %+v", c)
	}
}

func TestSegmentResolver(t *testing.T) {
	r := segmentResolver{ifaceResolver: ifaceResolver{"lo": true}}
	if i, err := r.Index("lo"); err != nil || i == 0 {
		t.Fatalf("a configured interface: %d %v", i, err)
	}
	if _, err := r.Index("ov11"); err == nil {
		t.Fatal("a segment end that does not exist resolved")
	}
	planned := segmentResolver{ifaceResolver: r.ifaceResolver, planned: true}
	i11, err := planned.Index("ov11")
	i12, _ := planned.Index("ov12")
	if err != nil || i11 == i12 || i11 < placeholderIndex {
		t.Fatalf("planned segment ends: %d %d %v", i11, i12, err)
	}
	for _, name := range []string{"ov", "ov011", "ovx11", "eth0", "ov99999999"} {
		if _, err := planned.Index(name); err == nil {
			t.Errorf("%s resolved", name)
		}
	}
}
