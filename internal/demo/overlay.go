package demo

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/seed4c/moat/controlapi/state"
	"github.com/seed4c/moat/dataplane/overlay"
	"github.com/seed4c/moat/internal/netns"
	"github.com/seed4c/moat/internal/topology"
)

// The overlay part of the attested scene (AttestedOptions.Overlay): a remote backend
// host of the first tenant, reachable only through the WireGuard overlay.
//
//	gateway ── wan 192.0.2.1/24 ══ underlay ══ wan 192.0.2.3/24 ── remote host "r"
//	gateway ── mgmt bridge 10.255.0.1 ─────────── mgmt 10.255.0.99 (attestation, both ways)
//	overlay:  gateway 100.64.0.1, r 100.64.0.3; tenant segment VNI 11, 10.9.0.0/24
//	          (gateway 10.9.0.1 on ov11, r's backend at 10.9.0.3:8080)
//
// The gateway runs with a simulated SE and the overlay enabled; r runs `moat agent
// --overlay`. Attestation traffic stays on the management network, so the underlay
// carries only WireGuard.
const (
	RemoteName        = "r"
	RemoteUnderlay    = "192.0.2.3"
	GatewayUnderlay   = "192.0.2.1"
	RemoteMgmt        = "10.255.0.99"
	RemoteOverlay     = "100.64.0.3"
	GatewayOverlay    = "100.64.0.1"
	RemoteSegmentAddr = "10.9.0.3"
	SegmentVNI        = 11
	// GatewayIdentity is the gateway's identity at the remote host's verifier.
	GatewayIdentity = "gw"
)

// RemoteHost is the scene's remote backend host.
type RemoteHost struct {
	*topology.Backend // Name, Host, Addr (on the segment), MgmtAddr, Server
	Tenant            *topology.Tenant
	// VerifierURL is the URL its overlay peer gives for the host's verifier (the
	// gateway attests there); RemoteVerifierURL unless a test changes it before
	// Register.
	VerifierURL string
}

// RemoteVerifierURL is where the remote host's verifier listens.
const RemoteVerifierURL = "https://" + RemoteMgmt + ":9445" + overlay.VerifierPrefix

// Remote returns the remote backend host (nil without the overlay).
func (s *AttestedScene) Remote() *RemoteHost { return s.remote }

// buildRemote creates the remote host, its underlay link to the gateway and its place
// on the management network.
func (s *AttestedScene) buildRemote() error {
	h, err := netns.NewHost(netns.UniqueName("mremote"))
	if err != nil {
		return err
	}
	r := &RemoteHost{Backend: &topology.Backend{Name: RemoteName, Host: h, Addr: netip.MustParseAddr(RemoteSegmentAddr),
		MgmtAddr: netip.MustParseAddr(RemoteMgmt)}, Tenant: s.Topo.Tenants[0], VerifierURL: RemoteVerifierURL}
	s.remote = r
	// The underlay carries WireGuard and ARP only: no IPv6 chatter.
	for _, kv := range [][2]string{{"net/ipv6/conf/all/disable_ipv6", "1"}, {"net/ipv6/conf/default/disable_ipv6", "1"}, {"net/ipv4/conf/all/rp_filter", "0"}} {
		if err := h.Sysctl(kv[0], kv[1]); err != nil {
			return err
		}
	}
	gw := s.Topo.GW
	if err := gw.Sysctl("net/ipv6/conf/default/disable_ipv6", "1"); err != nil {
		return err
	}
	if _, _, err := netns.Veth(gw, "wan", h, "wan"); err != nil {
		return err
	}
	if err := gw.Sysctl("net/ipv6/conf/wan/disable_ipv6", "1"); err != nil {
		return err
	}
	if err := gw.AddAddr("wan", GatewayUnderlay+"/24"); err != nil {
		return err
	}
	if err := h.AddAddr("wan", RemoteUnderlay+"/24"); err != nil {
		return err
	}
	if _, _, err := netns.Veth(gw, "mr", h, "mgmt"); err != nil {
		return err
	}
	port, err := gw.Link("mr")
	if err != nil {
		return err
	}
	br, err := gw.Link("mgmt")
	if err != nil {
		return err
	}
	if err := gw.Netlink().LinkSetMaster(port, br); err != nil {
		return err
	}
	if err := h.AddAddr("mgmt", RemoteMgmt+"/24"); err != nil {
		return err
	}
	dir := filepath.Join(s.Dir, r.Name)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	return os.WriteFile(s.AppFile(r.Name), appContent(r.Tenant.Name), 0o644)
}

// GatewayEK is the SHA-256 (hex) of the gateway's own SE's EK, as its status shows it.
func (s *AttestedScene) GatewayEK() (string, error) {
	var st struct {
		SE struct {
			EK string `json:"ek_sha256"`
		} `json:"se"`
	}
	_, err := s.Call("GET", "/v1/status", nil, &st)
	return st.SE.EK, err
}

// gatewayOverlayConfig is the gateway configuration's SE and overlay sections.
func (s *AttestedScene) gatewayOverlayConfig() string {
	if s.site != nil {
		return s.site.gatewayConfig(s.Dir)
	}
	if s.remote == nil {
		return ""
	}
	return fmt.Sprintf(`se:
  kind: simulator
overlay:
  enabled: true
  address: %s/24
  identity: %s
  attest_interval: 500ms
`, GatewayOverlay, GatewayIdentity)
}

// startRemote writes the remote host's overlay configuration (it appraises the
// gateway against the moat binary's digest and the gateway's EK, read from the API)
// and starts its agent.
func (s *AttestedScene) startRemote(interval time.Duration) error {
	r := s.remote
	ek, err := s.GatewayEK()
	if err != nil {
		return err
	}
	bin, err := filepath.Abs(s.Binary)
	if err == nil {
		bin, err = filepath.EvalSymlinks(bin)
	}
	if err != nil {
		return err
	}
	raw, err := os.ReadFile(bin)
	if err != nil {
		return err
	}
	sum := sha256.Sum256(raw)
	cfg := fmt.Sprintf(`address: %s/24
keepalive: 1s
verifier:
  listen: "%s:9445"
peers:
  - subject: %s
    endpoint: %s:%d
    address: %s
    policy:
      references: {%q: [%s]}
      allowed_eks: [%s]
segments:
  - tenant: %s
    vni: %d
    address: %s/24
    routes: [{dst: 10.0.0.0/24, via: 10.9.0.1}]
    peers: [%s]
`, RemoteOverlay, RemoteMgmt, GatewayIdentity, GatewayUnderlay, overlay.DefaultListenPort, GatewayOverlay, bin, hex.EncodeToString(sum[:]),
		ek, r.Tenant.Name, SegmentVNI, RemoteSegmentAddr, GatewayIdentity)
	file := filepath.Join(s.Dir, r.Name, "overlay.yaml")
	if err := os.WriteFile(file, []byte(cfg), 0o600); err != nil {
		return err
	}
	return s.startAgent(r.Tenant, r.Backend, interval, "--overlay", file)
}

// registerRemote registers the remote host's backend (service web of its tenant, on
// the segment) and makes it an overlay peer carrying its tenant; its echo server
// starts once its overlay (and so its segment address) is up.
func (s *AttestedScene) registerRemote() error {
	r := s.remote
	ek, err := s.AgentEK(r.Backend)
	if err != nil {
		return err
	}
	if r.Server == nil {
		if r.Server, err = topology.StartEchoServer(r.Host, r.Name, fmt.Sprintf("%s:%d", r.Addr, s.Topo.Opts.BackendPort)); err != nil {
			return err
		}
	}
	digest := sha256.Sum256(appContent(r.Tenant.Name))
	t := "/v1/tenants/" + r.Tenant.Name
	steps := []struct {
		path string
		body any
	}{
		{t + "/policies", map[string]any{"name": r.Name, "references": map[string][]string{s.AppFile(r.Name): {hex.EncodeToString(digest[:])}}}},
		{t + "/services/web/backends", map[string]any{"name": r.Name, "identity": r.Name, "addr": r.Addr, "port": s.Topo.Opts.BackendPort,
			"weight": 1, "policy": r.Name, "ek_sha256": ek}},
		{"/v1/overlay/peers", state.OverlayPeer{Name: r.Name, Subject: r.Tenant.Name + "/" + r.Name, Policy: r.Name, EKSHA256: ek,
			Address: netip.MustParseAddr(RemoteOverlay), Endpoint: netip.AddrPortFrom(netip.MustParseAddr(RemoteUnderlay), overlay.DefaultListenPort),
			Verifier: r.VerifierURL, Tenants: []string{r.Tenant.Name}}},
	}
	for _, st := range steps {
		if _, err := s.Call("POST", st.path, st.body, nil); err != nil {
			return err
		}
	}
	return nil
}

// tenantOverlay is the overlay field of a tenant at registration.
func (s *AttestedScene) tenantOverlay(tn *topology.Tenant) *state.TenantOverlay {
	if s.site != nil {
		return &state.TenantOverlay{VNI: s.site.VNIs[tn.Name], Address: s.site.Segment}
	}
	if s.remote == nil || tn != s.remote.Tenant {
		return nil
	}
	return &state.TenantOverlay{VNI: SegmentVNI, Address: netip.MustParsePrefix("10.9.0.1/24")}
}

// OverlayPeer returns an overlay peer with its link's status, as the API shows it.
func (s *AttestedScene) OverlayPeer(name string) (state.OverlayPeer, state.OverlayPeerStatus, error) {
	var v struct {
		state.OverlayPeer
		Status state.OverlayPeerStatus `json:"status"`
	}
	_, err := s.Call("GET", "/v1/overlay/peers/"+name, nil, &v)
	return v.OverlayPeer, v.Status, err
}

// UpdateOverlayPeer changes an overlay peer through the API (read, edit, write with
// its ETag).
func (s *AttestedScene) UpdateOverlayPeer(name string, edit func(*state.OverlayPeer)) error {
	p, _, err := s.OverlayPeer(name)
	if err != nil {
		return err
	}
	edit(&p)
	_, err = s.Call("PUT", "/v1/overlay/peers/"+name, p, nil, "If-Match", fmt.Sprintf("%q", fmt.Sprint(p.Version)))
	return err
}

// WaitLink waits until the gateway's link with an overlay peer is up (as admission
// sees it: configured in WireGuard, the peer affirming the gateway, a handshake
// completed since) or down (not configured).
func (s *AttestedScene) WaitLink(name string, up bool, timeout time.Duration) (state.OverlayPeerStatus, error) {
	deadline := time.Now().Add(timeout)
	for {
		_, st, err := s.OverlayPeer(name)
		if err == nil && (up && st.LinkUp || !up && !st.Configured && !st.LinkUp) {
			return st, nil
		}
		if time.Now().After(deadline) {
			return st, fmt.Errorf("overlay peer %s: link %+v, want up=%v, after %v: %v", name, st, up, timeout, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TUNPackets is how many packets a host's overlay device has received.
func TUNPackets(h *netns.Host) (uint64, error) {
	l, err := h.Link(overlay.DefaultDevice)
	if err != nil {
		return 0, err
	}
	return l.Attrs().Statistics.RxPackets, nil
}

// closeRemote stops the remote host's server and deletes its namespace (its agent was
// stopped with the others).
func (s *AttestedScene) closeRemote() error {
	r := s.remote
	if r.Server != nil {
		r.Server.Close()
	}
	// The gateway end of the underlay and management veths go with the namespace.
	return r.Host.Close()
}
