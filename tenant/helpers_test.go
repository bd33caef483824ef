package tenant

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/seed4c/moat/lb"
)

// testIfaces are eth0..eth3 with ifindexes 2..5.
var testIfaces = StaticInterfaces{"eth0": 2, "eth1": 3, "eth2": 4, "eth3": 5}

func addr(s string) netip.Addr  { return netip.MustParseAddr(s) }
func pfx(s string) netip.Prefix { return netip.MustParsePrefix(s) }
func pfxs(s ...string) []netip.Prefix {
	out := make([]netip.Prefix, len(s))
	for i, p := range s {
		out[i] = pfx(p)
	}
	return out
}

func backend(name, a string, port uint16, weight uint32, st lb.State) Backend {
	return Backend{Name: name, Addr: addr(a), Port: port, Weight: weight, State: st}
}

// baseConfig is a valid configuration with two tenants that share a VIP:port and a
// client prefix; every test gets a fresh copy to mutate.
//
//	a: eth0 untagged, eth1 VLAN 100
//	   web 10.100.0.1:80/tcp (521 slots): w1 admitted w1, w2 :8080 admitted w2,
//	       w3 draining, w4 evicted
//	   dns 10.100.0.1:53/udp (131 slots): d1 admitted
//	   rules: lan 10.0.0.0/24 → web, dns; all 10.9.0.0/16 and 10.0.0.0/24 → *
//	b: eth1 VLAN 200, eth2 untagged, FIB table 7
//	   web 10.100.0.1:80/tcp (default size): v1 admitted
//	   rule #1: 10.0.0.0/24 → web
func baseConfig() Config {
	return Config{Tenants: []Tenant{
		{
			Name:        "a",
			Attachments: []Attachment{{Interface: "eth0"}, {Interface: "eth1", VLAN: 100}},
			Services: []Service{
				{Name: "web", VIP: addr("10.100.0.1"), Port: 80, Protocol: TCP, MaglevSize: 521, Backends: []Backend{
					backend("w1", "10.1.0.1", 0, 1, lb.StateAdmitted),
					backend("w2", "10.1.0.2", 8080, 2, lb.StateAdmitted),
					backend("w3", "10.1.0.3", 0, 1, lb.StateDraining),
					backend("w4", "10.1.0.4", 0, 1, lb.StateEvicted),
				}},
				{Name: "dns", VIP: addr("10.100.0.1"), Port: 53, Protocol: UDP, MaglevSize: 131, Backends: []Backend{
					backend("d1", "10.1.0.9", 0, 1, lb.StateAdmitted),
				}},
			},
			Rules: []Rule{
				{Name: "lan", Sources: pfxs("10.0.0.0/24"), Services: []string{"web", "dns"}},
				{Name: "all", Sources: pfxs("10.9.0.0/16", "10.0.0.0/24"), Services: []string{AllServices}},
			},
		},
		{
			Name:        "b",
			FIBTable:    7,
			Attachments: []Attachment{{Interface: "eth1", VLAN: 200}, {Interface: "eth2"}},
			Services: []Service{
				{Name: "web", VIP: addr("10.100.0.1"), Port: 80, Protocol: TCP, Backends: []Backend{
					backend("v1", "10.1.0.1", 0, 1, lb.StateAdmitted),
				}},
			},
			Rules: []Rule{{Sources: pfxs("10.0.0.0/24"), Services: []string{"web"}}},
		},
	}}
}

func mustCompile(t testing.TB, cfg Config, prev IDs, limits Limits) *Compiled {
	t.Helper()
	c, err := Compile(cfg, testIfaces, prev, limits)
	if err != nil {
		t.Fatalf("Compile: %v", err)
	}
	return c
}

// problems splits a Compile error into its joined problems.
func problems(err error) []string {
	if err == nil {
		return nil
	}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		var out []string
		for _, e := range j.Unwrap() {
			out = append(out, e.Error())
		}
		return out
	}
	return []string{err.Error()}
}

// checkCompiled checks the invariants every successful compilation satisfies, whatever
// the configuration, and returns the first violation found.
func checkCompiled(c *Compiled, limits Limits) error {
	var errs []string
	bad := func(format string, args ...any) { errs = append(errs, fmt.Sprintf(format, args...)) }

	// Ids: in range and unique per kind.
	for _, k := range []struct {
		kind  string
		ids   map[string]uint32
		limit uint32
	}{{"tenant", c.IDs.Tenants, limits.MaxTenants}, {"service", c.IDs.Services, limits.MaxServices}, {"backend", c.IDs.Backends, limits.MaxBackends}} {
		owner := map[uint32]string{}
		for key, id := range k.ids {
			if id == 0 || id >= k.limit {
				bad("%s %q: id %d outside 1..%d", k.kind, key, id, k.limit-1)
			}
			if o, dup := owner[id]; dup {
				bad("%s id %d given to both %q and %q", k.kind, id, o, key)
			}
			owner[id] = key
		}
	}

	attached := map[attachKey]uint32{}
	tenantIfaces := map[[2]uint32]uint16{} // (tenant, ifindex) -> vlan
	for _, a := range c.Attachments {
		if a.TenantID != c.IDs.Tenants[a.Tenant] {
			bad("attachment %d.%d: tenant id %d, IDs say %q is %d", a.Ifindex, a.VLAN, a.TenantID, a.Tenant, c.IDs.Tenants[a.Tenant])
		}
		if a.VLAN > 4094 {
			bad("attachment %d.%d: VLAN out of range", a.Ifindex, a.VLAN)
		}
		k := attachKey{a.Ifindex, a.VLAN}
		if _, dup := attached[k]; dup {
			bad("attachment %d.%d listed twice", a.Ifindex, a.VLAN)
		}
		attached[k] = a.TenantID
		if _, dup := tenantIfaces[[2]uint32{a.TenantID, a.Ifindex}]; dup {
			bad("tenant %d attached twice to ifindex %d", a.TenantID, a.Ifindex)
		}
		tenantIfaces[[2]uint32{a.TenantID, a.Ifindex}] = a.VLAN
	}
	if len(c.Egress) != len(c.Attachments) {
		bad("%d egress entries for %d attachments", len(c.Egress), len(c.Attachments))
	}
	for _, e := range c.Egress {
		if vlan, ok := tenantIfaces[[2]uint32{e.TenantID, e.Ifindex}]; !ok || vlan != e.VLAN {
			bad("egress of tenant %d through %d.%d: the tenant has no such attachment", e.TenantID, e.Ifindex, e.VLAN)
		}
	}
	var wantTx []uint32
	for k := range attached {
		wantTx = append(wantTx, k.ifindex)
	}
	slices.Sort(wantTx)
	wantTx = slices.Compact(wantTx)
	if !slices.Equal(c.TxPorts, wantTx) {
		bad("tx ports %v, want the attached interfaces %v", c.TxPorts, wantTx)
	}

	type svcKey struct {
		tid   uint32
		vip   netip.Addr
		port  uint16
		proto Protocol
	}
	svcTenant := map[uint32]uint32{} // service id -> tenant id
	svcKeys := map[svcKey]bool{}
	for _, s := range c.Services {
		if s.ID != c.IDs.Services[s.Tenant+"/"+s.Name] || s.TenantID != c.IDs.Tenants[s.Tenant] {
			bad("service %s/%s: ids %d/%d disagree with IDs", s.Tenant, s.Name, s.TenantID, s.ID)
		}
		if s.ID >= limits.MaxServices {
			bad("service %s/%s: id %d >= MaxServices %d", s.Tenant, s.Name, s.ID, limits.MaxServices)
		}
		if _, dup := svcTenant[s.ID]; dup {
			bad("service id %d twice", s.ID)
		}
		svcTenant[s.ID] = s.TenantID
		k := svcKey{s.TenantID, s.VIP, s.Port, s.Protocol}
		if svcKeys[k] {
			bad("service %s/%s: key %v taken twice in its tenant", s.Tenant, s.Name, k)
		}
		svcKeys[k] = true
		if !s.VIP.Is4() || s.Port == 0 || (s.Protocol != TCP && s.Protocol != UDP) {
			bad("service %s/%s: bad key %s:%d/%s", s.Tenant, s.Name, s.VIP, s.Port, s.Protocol)
		}
		if int(s.TableSize) != len(s.Table) {
			bad("service %s/%s: TableSize %d, table of %d", s.Tenant, s.Name, s.TableSize, len(s.Table))
		}
	}
	backends := map[uint32]BackendEntry{}
	for _, b := range c.Backends {
		if _, dup := backends[b.ID]; dup {
			bad("backend id %d twice", b.ID)
		}
		backends[b.ID] = b
		if b.ID != c.IDs.Backends[b.Tenant+"/"+b.Service+"/"+b.Name] {
			bad("backend %s/%s/%s: id %d disagrees with IDs", b.Tenant, b.Service, b.Name, b.ID)
		}
		if tid, ok := svcTenant[b.ServiceID]; !ok || tid != b.TenantID {
			bad("backend %d: service %d is not a service of tenant %d", b.ID, b.ServiceID, b.TenantID)
		}
		if !b.Addr.Is4() || b.Port == 0 || b.State > lb.StateDraining {
			bad("backend %d: bad entry %+v", b.ID, b)
		}
	}
	for _, s := range c.Services {
		var admitted []lb.Backend
		for _, b := range c.Backends {
			if b.ServiceID == s.ID && b.State == lb.StateAdmitted {
				admitted = append(admitted, lb.Backend{ID: b.ID, Weight: 1})
			}
		}
		if (len(admitted) == 0) != (s.TableSize == 0) {
			bad("service %s/%s: %d admitted backends, table size %d", s.Tenant, s.Name, len(admitted), s.TableSize)
		}
		for _, id := range s.Table {
			if b, ok := backends[id]; !ok || b.ServiceID != s.ID || b.State != lb.StateAdmitted {
				bad("service %s/%s: table holds backend %d, not an admitted backend of the service", s.Tenant, s.Name, id)
				break
			}
		}
	}
	type polKey struct {
		tid, sid uint32
		src      netip.Prefix
	}
	pol := map[polKey]bool{}
	for _, p := range c.Policy {
		if tid, ok := svcTenant[p.ServiceID]; !ok || tid != p.TenantID {
			bad("policy entry %+v: tenant %d does not own service %d", p, p.TenantID, p.ServiceID)
		}
		if !p.Source.Addr().Is4() || p.Source.Masked() != p.Source || p.RuleID == 0 {
			bad("policy entry %+v: bad source or rule id", p)
		}
		k := polKey{p.TenantID, p.ServiceID, p.Source}
		if pol[k] {
			bad("policy entry %+v twice", p)
		}
		pol[k] = true
	}
	if n := uint32(len(c.Attachments)); n > limits.MaxAttachments {
		bad("%d attachments above the limit %d", n, limits.MaxAttachments)
	}
	if n := uint32(len(c.Policy)); n > limits.MaxPolicy {
		bad("%d policy entries above the limit %d", n, limits.MaxPolicy)
	}
	if len(c.IDs.Services) != len(c.Services) || len(c.IDs.Backends) != len(c.Backends) {
		bad("IDs hold %d service and %d backend ids for %d services and %d backends",
			len(c.IDs.Services), len(c.IDs.Backends), len(c.Services), len(c.Backends))
	}
	if len(errs) == 0 {
		return nil
	}
	return fmt.Errorf("compiled output breaks invariants:\n%s", strings.Join(errs, "\n"))
}

// sortedIDs lists a map of ids as "key=id" in key order, for readable failures.
func sortedIDs(m map[string]uint32) string {
	var b strings.Builder
	for _, k := range slices.Sorted(maps.Keys(m)) {
		fmt.Fprintf(&b, "%s=%d ", k, m[k])
	}
	return b.String()
}
