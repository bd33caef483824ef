package main

import (
	"context"
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/spf13/pflag"

	"github.com/seed4c/moat/controlapi/client"
	"github.com/seed4c/moat/controlapi/state"
)

// Overlay peers: the backend hosts and gateways the gateway links with over WireGuard.

func overlayPeerKind() kind[state.OverlayPeer, client.OverlayPeerView] {
	return kind[state.OverlayPeer, client.OverlayPeerView]{
		name: "overlay-peer", plural: "overlay-peers", createVerb: "create", scope: inGateway,
		header: "NAME\tSUBJECT\tADDRESS\tENDPOINT\tTENANTS\tCONFIGURED\tLAST HANDSHAKE\tAPPRAISES US\tVERSION",
		row: func(p client.OverlayPeerView) string {
			configured := "no"
			if p.Status.Configured {
				configured = "since " + ts(p.Status.Since)
			}
			endpoint := p.Status.Endpoint
			if endpoint == "" && p.Endpoint.IsValid() {
				endpoint = p.Endpoint.String()
			}
			appraisal := string(p.Status.Appraisal)
			if p.Status.AppraisalError != "" {
				appraisal = "error: " + p.Status.AppraisalError
			}
			return strings.Join([]string{p.Name, p.Subject, p.Address.String(), dash(endpoint), dash(strings.Join(p.Tenants, ",")),
				configured, ts(p.Status.LastHandshake), dash(appraisal), strconv.FormatUint(p.Version, 10)}, "\t")
		},
		object:  func(p client.OverlayPeerView) state.OverlayPeer { return p.OverlayPeer },
		version: func(p client.OverlayPeerView) uint64 { return p.Version },
		meta:    func(p *state.OverlayPeer) *state.Meta { return &p.Meta },
		// A peer as get shows it has its status too, which is not written.
		read: func(name string, p *state.OverlayPeer) error {
			v := client.OverlayPeerView{OverlayPeer: *p}
			err := decodeFile(name, &v)
			*p = v.OverlayPeer
			return err
		},
		nameOf: func(p *state.OverlayPeer) string { return p.Name },
		place:  func(p *state.OverlayPeer, _ where, name string) error { return same(&p.Name, "name", name) },
		flags: func(fs *pflag.FlagSet) *fields[state.OverlayPeer] {
			var (
				subject, policy, ek, addr, endpoint, verifier string
				tenants, routes                               []string
			)
			fs.StringVar(&subject, "subject", "", "the peer's attestation subject, TENANT/IDENTITY (its agent's identity)")
			fs.StringVar(&policy, "policy", "", "the attestation policy of the subject's tenant it is appraised against")
			fs.StringVar(&ek, "ek-sha256", "", "pin the peer's TPM: SHA-256 (hex) of its EK public key (\"\" unpins)")
			fs.StringVar(&addr, "address", "", "the peer's overlay address")
			fs.StringVar(&endpoint, "endpoint", "", "where to reach it first on the underlay, ADDRESS:PORT (\"\": it connects first)")
			fs.StringVar(&verifier, "verifier", "", "the https URL of the peer's verifier, to which the gateway attests")
			fs.StringSliceVar(&tenants, "tenants", nil, "tenants whose segments the peer carries (comma-separated; replaces the list)")
			fs.StringArrayVar(&routes, "route", nil, "a tenant's prefix behind the peer, TENANT:PREFIX:VIA (repeat; replaces the list)")
			ff := &fields[state.OverlayPeer]{fs: fs}
			ff.on("subject", func(p *state.OverlayPeer) error { p.Subject = subject; return nil })
			ff.on("policy", func(p *state.OverlayPeer) error { p.Policy = policy; return nil })
			ff.on("ek-sha256", func(p *state.OverlayPeer) error { p.EKSHA256 = strings.ToLower(ek); return nil })
			ff.on("address", func(p *state.OverlayPeer) (err error) { p.Address, err = netip.ParseAddr(addr); return err })
			ff.on("endpoint", func(p *state.OverlayPeer) (err error) {
				p.Endpoint = netip.AddrPort{}
				if endpoint != "" {
					p.Endpoint, err = netip.ParseAddrPort(endpoint)
				}
				return err
			})
			ff.on("verifier", func(p *state.OverlayPeer) error { p.Verifier = verifier; return nil })
			ff.on("tenants", func(p *state.OverlayPeer) error { p.Tenants = tenants; return nil })
			ff.on("route", func(p *state.OverlayPeer) error {
				p.Routes = nil
				for _, r := range routes {
					rt, err := parseOverlayRoute(r)
					if err != nil {
						return err
					}
					p.Routes = append(p.Routes, rt)
				}
				return nil
			})
			return ff
		},
		list: func(ctx context.Context, c *client.Client, _ where) ([]client.OverlayPeerView, error) {
			return c.ListOverlayPeers(ctx)
		},
		get: func(ctx context.Context, c *client.Client, _ where, name string) (client.OverlayPeerView, error) {
			return c.GetOverlayPeer(ctx, name)
		},
		add: (*client.Client).CreateOverlayPeer,
		put: (*client.Client).UpdateOverlayPeer,
		del: func(ctx context.Context, c *client.Client, _ where, name string, v uint64) error {
			return c.DeleteOverlayPeer(ctx, name, v)
		},
	}
}

// parseOverlayRoute reads TENANT:PREFIX:VIA.
func parseOverlayRoute(s string) (state.OverlayRoute, error) {
	parts := strings.Split(s, ":")
	if len(parts) != 3 {
		return state.OverlayRoute{}, fmt.Errorf("%q: want TENANT:PREFIX:VIA, such as a:10.100.2.1/32:10.9.0.2", s)
	}
	dst, err := netip.ParsePrefix(parts[1])
	if err != nil {
		return state.OverlayRoute{}, fmt.Errorf("%q: %w", s, err)
	}
	via, err := netip.ParseAddr(parts[2])
	if err != nil {
		return state.OverlayRoute{}, fmt.Errorf("%q: %w", s, err)
	}
	return state.OverlayRoute{Tenant: parts[0], Dst: dst, Via: via}, nil
}

// tenantOverlayFlags adds a tenant's overlay segment flags to its field flags.
func tenantOverlayFlags(fs *pflag.FlagSet, ff *fields[state.Tenant]) {
	var (
		vni  uint32
		addr string
	)
	fs.Uint32Var(&vni, "overlay-vni", 0, "the tenant's VNI on the overlay (0 removes its segment)")
	fs.StringVar(&addr, "overlay-address", "", "the gateway's address on the tenant's overlay segment, with its prefix")
	ff.on("overlay-vni", func(t *state.Tenant) error {
		if vni == 0 {
			t.Overlay = nil
			return nil
		}
		if t.Overlay == nil {
			t.Overlay = &state.TenantOverlay{}
		}
		t.Overlay.VNI = vni
		return nil
	})
	ff.on("overlay-address", func(t *state.Tenant) (err error) {
		if t.Overlay == nil {
			return fmt.Errorf("give the tenant an overlay VNI too (--overlay-vni)")
		}
		t.Overlay.Address, err = netip.ParsePrefix(addr)
		return err
	})
}
