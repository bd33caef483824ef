package bench

import (
	"encoding/json"
	"fmt"
	"strings"

	"github.com/vishvananda/netlink"

	"github.com/seed4c/moat/internal/topology"
)

// nftTable is the baseline's table in the gateway.
const nftTable = "moatbench"

// nftRuleset writes the scene's isolation and load balancing as a Linux operator would
// without moat, as tight as nftables allows:
//   - raw prerouting (before conntrack): the ingress interface names the tenant through
//     one verdict map and sets its conntrack zone, so that the tenants' identical
//     addresses never share a flow; unknown interfaces are dropped; a client network
//     may only send to its VIP:port from its prefix, a backend only from its service
//     port: anything else (the cross-tenant and direct attempts) is dropped here;
//   - DNAT to the tenant's backends by jhash of the client end (the consistent-hash
//     choice closest to Maglev), once per flow, conntrack doing the rest; the
//     backends are a named map (hash bucket -> address) that admission and eviction
//     edit element by element;
//   - forward: only DNATed flows from a tenant's clients to its own backends, and
//     their replies back; everything else dropped.
//
// Every drop rule counts, so drops are measured from nftables' own counters.
func nftRuleset(t *topology.Topology) string {
	var b strings.Builder
	p := func(f string, a ...any) { fmt.Fprintf(&b, f+"\n", a...) }
	vip, port := t.Opts.VIP, t.Opts.Port
	p("table ip %s {", nftTable)
	var vmap, fwd, rev []string
	for i, tn := range t.Tenants {
		zone := i + 1
		vmap = append(vmap, fmt.Sprintf("%q : jump client_%s", tn.ClientIface, tn.Name))
		var backends []string
		for j, be := range tn.Backends {
			vmap = append(vmap, fmt.Sprintf("%q : jump backend_%s", be.GWIface, tn.Name))
			fwd = append(fwd, fmt.Sprintf("%q . %q", tn.ClientIface, be.GWIface))
			rev = append(rev, fmt.Sprintf("%q . %q", be.GWIface, tn.ClientIface))
			backends = append(backends, fmt.Sprintf("%d : %s", j, be.Addr))
		}
		p("  chain client_%s {", tn.Name)
		p("    ct zone set %d", zone)
		p("    ip saddr 10.0.0.0/24 ip daddr %s tcp dport %d accept", vip, port)
		p("    counter drop")
		p("  }")
		p("  chain backend_%s {", tn.Name)
		p("    ct zone set %d", zone)
		p("    ip saddr 10.1.0.0/16 tcp sport %d accept", t.Opts.BackendPort)
		p("    counter drop")
		p("  }")
		// A named map, so that an operator's script can admit and evict a backend
		// (one element) without reloading the ruleset. nft has no "type integer"
		// for a map key; typeof a hash expression gives the 32-bit integer key.
		p("  map %s {", nftBackendMap(tn.Name))
		p("    typeof numgen inc mod %d : ip daddr", len(tn.Backends))
		p("    elements = { %s }", strings.Join(backends, ", "))
		p("  }")
		p("  chain lb_%s {", tn.Name)
		p("    dnat to jhash ip saddr . tcp sport mod %d map @%s : %d", len(tn.Backends), nftBackendMap(tn.Name), t.Opts.BackendPort)
		p("  }")
	}
	p("  chain pre_raw {")
	p("    type filter hook prerouting priority raw; policy drop;")
	p("    iifname vmap { %s }", strings.Join(vmap, ", "))
	p("    counter drop")
	p("  }")
	p("  chain pre_nat {")
	p("    type nat hook prerouting priority dstnat; policy accept;")
	var lbmap []string
	for _, tn := range t.Tenants {
		lbmap = append(lbmap, fmt.Sprintf("%q : jump lb_%s", tn.ClientIface, tn.Name))
	}
	p("    ip daddr %s tcp dport %d iifname vmap { %s }", vip, port, strings.Join(lbmap, ", "))
	p("  }")
	p("  set forward_pairs { type ifname . ifname; elements = { %s } }", strings.Join(fwd, ", "))
	p("  set reply_pairs { type ifname . ifname; elements = { %s } }", strings.Join(rev, ", "))
	p("  chain filter_fwd {")
	p("    type filter hook forward priority filter; policy drop;")
	p("    iifname . oifname @forward_pairs ct status dnat accept")
	p("    iifname . oifname @reply_pairs ct direction reply accept")
	p("    counter drop")
	p("  }")
	p("}")
	return b.String()
}

// nftBackendMap names a tenant's map of backends.
func nftBackendMap(tenantName string) string { return "backends_" + tenantName }

// LoadNftables installs the baseline's ruleset in the gateway and sets conntrack as an
// operator of a load balancer would: no TCP window tracking (moat has none either) and
// no software checksum verification (a NIC verifies checksums on receive; the CPUMAP
// builds skbs without that flag).
func (s *Scene) LoadNftables() error {
	if _, err := s.nft(nftRuleset(s.Topo), "-f", "-"); err != nil {
		return err
	}
	for _, kv := range [][2]string{
		{"net/netfilter/nf_conntrack_tcp_be_liberal", "1"},
		{"net/netfilter/nf_conntrack_checksum", "0"},
		{"net/netfilter/nf_conntrack_tcp_loose", "1"},
	} {
		if err := s.Topo.GW.Sysctl(kv[0], kv[1]); err != nil {
			return err
		}
	}
	return nil
}

// UnloadNftables deletes the ruleset: conntrack unhooks with its last user.
func (s *Scene) UnloadNftables() error {
	_, err := s.nft("", "delete", "table", "ip", nftTable)
	return err
}

// NftDrops sums the packets of every counter of the baseline's table: its drops.
func (s *Scene) NftDrops() (uint64, error) {
	out, err := s.nft("", "-j", "list", "table", "ip", nftTable)
	if err != nil {
		return 0, err
	}
	return sumNftCounters([]byte(out))
}

func sumNftCounters(js []byte) (uint64, error) {
	var doc struct {
		Nftables []map[string]json.RawMessage `json:"nftables"`
	}
	if err := json.Unmarshal(js, &doc); err != nil {
		return 0, fmt.Errorf("nft json: %w", err)
	}
	var sum uint64
	for _, obj := range doc.Nftables {
		raw, ok := obj["rule"]
		if !ok {
			continue
		}
		var rule struct {
			Expr []map[string]json.RawMessage `json:"expr"`
		}
		if err := json.Unmarshal(raw, &rule); err != nil {
			return 0, fmt.Errorf("nft json rule: %w", err)
		}
		for _, e := range rule.Expr {
			if c, ok := e["counter"]; ok {
				var v struct{ Packets uint64 }
				if err := json.Unmarshal(c, &v); err != nil {
					return 0, fmt.Errorf("nft json counter: %w", err)
				}
				sum += v.Packets
			}
		}
	}
	return sum, nil
}

// FlushConntrack empties the gateway's conntrack table, so that every scenario starts
// from the same state.
func (s *Scene) FlushConntrack() error {
	return s.Topo.GW.Netlink().ConntrackTableFlush(netlink.ConntrackTable)
}
