package tenant

import (
	"maps"
	"reflect"
	"slices"
	"testing"

	"github.com/seed4c/moat/lb"
)

// TestCompileAttachments: each attachment classifies (ifindex, VLAN) to its tenant with
// the tenant's FIB table, lets the tenant out through the same interface with the same
// tag, and makes the interface a redirect target.
func TestCompileAttachments(t *testing.T) {
	c := mustCompile(t, baseConfig(), IDs{}, DefaultLimits())
	wantAtt := []AttachmentEntry{
		{Ifindex: 2, VLAN: 0, TenantID: 1, Tenant: "a"},
		{Ifindex: 3, VLAN: 100, TenantID: 1, Tenant: "a"},
		{Ifindex: 3, VLAN: 200, TenantID: 2, FIBTable: 7, Tenant: "b"},
		{Ifindex: 4, VLAN: 0, TenantID: 2, FIBTable: 7, Tenant: "b"},
	}
	if !reflect.DeepEqual(c.Attachments, wantAtt) {
		t.Errorf("attachments\n got %+v\nwant %+v", c.Attachments, wantAtt)
	}
	wantEg := []EgressEntry{
		{TenantID: 1, Ifindex: 2, VLAN: 0},
		{TenantID: 1, Ifindex: 3, VLAN: 100},
		{TenantID: 2, Ifindex: 3, VLAN: 200},
		{TenantID: 2, Ifindex: 4, VLAN: 0},
	}
	if !reflect.DeepEqual(c.Egress, wantEg) {
		t.Errorf("egress\n got %+v\nwant %+v", c.Egress, wantEg)
	}
	// eth1 carries both tenants (VLANs 100 and 200) but is one port; eth3 is unused.
	if want := []uint32{2, 3, 4}; !slices.Equal(c.TxPorts, want) {
		t.Errorf("tx ports %v, want %v", c.TxPorts, want)
	}
	if err := checkCompiled(c, DefaultLimits()); err != nil {
		t.Error(err)
	}
}

// TestCompileServicesAndBackends: a service's table is exactly lb.BuildTable over its
// admitted backends (ids and weights), draining and evicted backends are listed but
// never in a table, a backend without a port gets the service's, and a service with no
// admitted backend has no table at all.
func TestCompileServicesAndBackends(t *testing.T) {
	cfg := baseConfig()
	cfg.Tenants[1].Services = append(cfg.Tenants[1].Services,
		Service{Name: "idle", VIP: addr("10.100.0.2"), Port: 443, Protocol: TCP, MaglevSize: 131, Backends: []Backend{
			backend("x1", "10.1.1.1", 0, 1, lb.StateDraining),
			backend("x2", "10.1.1.2", 0, 1, lb.StateEvicted),
		}},
		Service{Name: "empty", VIP: addr("10.100.0.3"), Port: 53, Protocol: UDP},
	)
	c := mustCompile(t, cfg, IDs{}, DefaultLimits())
	if err := checkCompiled(c, DefaultLimits()); err != nil {
		t.Fatal(err)
	}

	wantBackends := []BackendEntry{
		{ID: 1, TenantID: 1, ServiceID: 1, Addr: addr("10.1.0.1"), Port: 80, State: lb.StateAdmitted, Tenant: "a", Service: "web", Name: "w1"},
		{ID: 2, TenantID: 1, ServiceID: 1, Addr: addr("10.1.0.2"), Port: 8080, State: lb.StateAdmitted, Tenant: "a", Service: "web", Name: "w2"},
		{ID: 3, TenantID: 1, ServiceID: 1, Addr: addr("10.1.0.3"), Port: 80, State: lb.StateDraining, Tenant: "a", Service: "web", Name: "w3"},
		{ID: 4, TenantID: 1, ServiceID: 1, Addr: addr("10.1.0.4"), Port: 80, State: lb.StateEvicted, Tenant: "a", Service: "web", Name: "w4"},
		{ID: 5, TenantID: 1, ServiceID: 2, Addr: addr("10.1.0.9"), Port: 53, State: lb.StateAdmitted, Tenant: "a", Service: "dns", Name: "d1"},
		{ID: 6, TenantID: 2, ServiceID: 3, Addr: addr("10.1.0.1"), Port: 80, State: lb.StateAdmitted, Tenant: "b", Service: "web", Name: "v1"},
		{ID: 7, TenantID: 2, ServiceID: 4, Addr: addr("10.1.1.1"), Port: 443, State: lb.StateDraining, Tenant: "b", Service: "idle", Name: "x1"},
		{ID: 8, TenantID: 2, ServiceID: 4, Addr: addr("10.1.1.2"), Port: 443, State: lb.StateEvicted, Tenant: "b", Service: "idle", Name: "x2"},
	}
	if !reflect.DeepEqual(c.Backends, wantBackends) {
		t.Errorf("backends\n got %+v\nwant %+v", c.Backends, wantBackends)
	}

	build := func(size uint32, bs ...lb.Backend) []uint32 {
		table, err := lb.BuildTable(bs, size)
		if err != nil {
			t.Fatalf("reference BuildTable: %v", err)
		}
		return table
	}
	want := []ServiceEntry{
		{TenantID: 1, VIP: addr("10.100.0.1"), Port: 80, Protocol: TCP, ID: 1, TableSize: 521, MaglevSize: 521, Tenant: "a", Name: "web",
			Table: build(521, lb.Backend{ID: 1, Weight: 1}, lb.Backend{ID: 2, Weight: 2})},
		{TenantID: 1, VIP: addr("10.100.0.1"), Port: 53, Protocol: UDP, ID: 2, TableSize: 131, MaglevSize: 131, Tenant: "a", Name: "dns",
			Table: build(131, lb.Backend{ID: 5, Weight: 1})},
		{TenantID: 2, VIP: addr("10.100.0.1"), Port: 80, Protocol: TCP, ID: 3, TableSize: lb.DefaultTableSize, MaglevSize: lb.DefaultTableSize, Tenant: "b", Name: "web",
			Table: build(lb.DefaultTableSize, lb.Backend{ID: 6, Weight: 1})},
		{TenantID: 2, VIP: addr("10.100.0.2"), Port: 443, Protocol: TCP, ID: 4, MaglevSize: 131, Tenant: "b", Name: "idle"},
		{TenantID: 2, VIP: addr("10.100.0.3"), Port: 53, Protocol: UDP, ID: 5, MaglevSize: lb.DefaultTableSize, Tenant: "b", Name: "empty"},
	}
	if len(c.Services) != len(want) {
		t.Fatalf("%d services, want %d", len(c.Services), len(want))
	}
	for i, w := range want {
		g := c.Services[i]
		g.admitted = nil // bookkeeping for Compiler's table reuse
		if !reflect.DeepEqual(g, w) {
			t.Errorf("service %s/%s: got id %d tenant %d %s:%d/%s table %d (%d slots), want id %d tenant %d %s:%d/%s table %d (%d slots); tables equal: %t",
				w.Tenant, w.Name, g.ID, g.TenantID, g.VIP, g.Port, g.Protocol, g.TableSize, len(g.Table),
				w.ID, w.TenantID, w.VIP, w.Port, w.Protocol, w.TableSize, len(w.Table), slices.Equal(g.Table, w.Table))
		}
	}
	// The weights reach the table: w2 (weight 2) holds twice w1's slots, to one slot.
	n := map[uint32]int{}
	for _, id := range c.Services[0].Table {
		n[id]++
	}
	if n[3] != 0 || n[4] != 0 || n[1]+n[2] != 521 || n[2]-2*n[1] > 2 || 2*n[1]-n[2] > 2 {
		t.Errorf("a/web slots per backend %v: want only w1 and w2, in a 1:2 ratio", n)
	}
}

// TestCompileUnmapsAddresses: IPv4-mapped IPv6 spellings of VIPs and backend addresses
// compile to plain IPv4, which is what the fast path's keys hold.
func TestCompileUnmapsAddresses(t *testing.T) {
	cfg := baseConfig()
	cfg.Tenants[1].Services[0].VIP = addr("::ffff:10.100.0.1")
	cfg.Tenants[1].Services[0].Backends[0].Addr = addr("::ffff:10.1.0.1")
	c := mustCompile(t, cfg, IDs{}, DefaultLimits())
	s, b := c.Services[2], c.Backends[5]
	if s.Name != "web" || s.Tenant != "b" || s.VIP != addr("10.100.0.1") {
		t.Errorf("service b/web compiled to %s/%s with VIP %s, want VIP 10.100.0.1", s.Tenant, s.Name, s.VIP)
	}
	if b.Name != "v1" || b.Addr != addr("10.1.0.1") {
		t.Errorf("backend b/web/v1 compiled to %s with address %s, want 10.1.0.1", b.Name, b.Addr)
	}
}

// TestCompilePolicy: rules expand to one entry per (source, service) of the tenant,
// "*" meaning every service of the tenant (and no other tenant's), identical entries
// kept once under the first rule that produced them, and rule ids counting the rules
// of the tenant from 1.
func TestCompilePolicy(t *testing.T) {
	cfg := baseConfig()
	// b gets a second service, and a rule that repeats its first one.
	cfg.Tenants[1].Services = append(cfg.Tenants[1].Services,
		Service{Name: "ssh", VIP: addr("10.100.0.1"), Port: 22, Protocol: TCP, MaglevSize: 131})
	cfg.Tenants[1].Rules = append(cfg.Tenants[1].Rules,
		Rule{Name: "again", Sources: pfxs("10.0.0.0/24", "10.0.0.0/24"), Services: []string{"web", "web"}},
		Rule{Name: "everything", Sources: pfxs("0.0.0.0/0"), Services: []string{"ssh", AllServices}},
		Rule{Name: "host", Sources: pfxs("192.0.2.7/32"), Services: []string{"ssh"}},
	)
	c := mustCompile(t, cfg, IDs{}, DefaultLimits())
	// a: web=1, dns=2; b: web=3, ssh=4.
	want := []PolicyEntry{
		{TenantID: 1, ServiceID: 1, Source: pfx("10.0.0.0/24"), RuleID: 1},
		{TenantID: 1, ServiceID: 2, Source: pfx("10.0.0.0/24"), RuleID: 1},
		{TenantID: 1, ServiceID: 1, Source: pfx("10.9.0.0/16"), RuleID: 2},
		{TenantID: 1, ServiceID: 2, Source: pfx("10.9.0.0/16"), RuleID: 2},
		{TenantID: 2, ServiceID: 3, Source: pfx("10.0.0.0/24"), RuleID: 1},
		{TenantID: 2, ServiceID: 4, Source: pfx("0.0.0.0/0"), RuleID: 3},
		{TenantID: 2, ServiceID: 3, Source: pfx("0.0.0.0/0"), RuleID: 3},
		{TenantID: 2, ServiceID: 4, Source: pfx("192.0.2.7/32"), RuleID: 4},
	}
	if !reflect.DeepEqual(c.Policy, want) {
		t.Errorf("policy\n got %+v\nwant %+v", c.Policy, want)
	}
	if err := checkCompiled(c, DefaultLimits()); err != nil {
		t.Error(err)
	}
}

// TestCompileAllServicesCoversLaterServices: "*" is every service of the tenant,
// whatever the order of rules and services in the configuration.
func TestCompileAllServicesCoversLaterServices(t *testing.T) {
	cfg := Config{Tenants: []Tenant{{
		Name:  "t",
		Rules: []Rule{{Sources: pfxs("10.0.0.0/8"), Services: []string{AllServices}}},
		Services: []Service{
			{Name: "s1", VIP: addr("10.100.0.1"), Port: 1, Protocol: TCP},
			{Name: "s2", VIP: addr("10.100.0.1"), Port: 1, Protocol: UDP},
		},
	}}}
	c := mustCompile(t, cfg, IDs{}, DefaultLimits())
	if len(c.Policy) != 2 || c.Policy[0].ServiceID != 1 || c.Policy[1].ServiceID != 2 {
		t.Errorf("policy %+v: want one entry for each of services 1 and 2", c.Policy)
	}
	// A tenant with no services: "*" opens nothing, and that is not an error.
	cfg.Tenants[0].Services = nil
	c = mustCompile(t, cfg, IDs{}, DefaultLimits())
	if len(c.Policy) != 0 {
		t.Errorf("policy %+v for a tenant without services: want none", c.Policy)
	}
}

// TestCompileEmpty: an empty configuration compiles to nothing (the fast path then
// drops everything: no tenant).
func TestCompileEmpty(t *testing.T) {
	c := mustCompile(t, Config{}, IDs{}, DefaultLimits())
	if len(c.Attachments)+len(c.Egress)+len(c.Services)+len(c.Backends)+len(c.Policy)+len(c.TxPorts) != 0 {
		t.Errorf("empty configuration compiled to %+v", c)
	}
}

// TestCompileLeavesInputsAlone: Compile reads the configuration and the previous ids,
// and writes neither (the caller keeps them to roll back to).
func TestCompileLeavesInputsAlone(t *testing.T) {
	cfg := baseConfig()
	first := mustCompile(t, cfg, IDs{}, DefaultLimits())
	prev := first.IDs
	prevCopy := IDs{Tenants: maps.Clone(prev.Tenants), Services: maps.Clone(prev.Services), Backends: maps.Clone(prev.Backends), Next: prev.Next}

	edit := func() Config {
		c := baseConfig()
		c.Tenants[0].Services[0].Backends = c.Tenants[0].Services[0].Backends[1:]
		c.Tenants = append(c.Tenants, Tenant{Name: "c", Services: []Service{{Name: "s", VIP: addr("10.0.0.1"), Port: 1, Protocol: TCP}}})
		return c
	}
	cfg2, snapshot := edit(), edit()

	second := mustCompile(t, cfg2, prev, DefaultLimits())
	if !reflect.DeepEqual(prev, prevCopy) {
		t.Errorf("Compile changed the previous ids:\n got %+v\nwant %+v", prev, prevCopy)
	}
	if !reflect.DeepEqual(cfg2, snapshot) {
		t.Errorf("Compile changed its configuration")
	}
	second.IDs.Tenants["zzz"] = 99 // the result's maps are its own
	if _, ok := prev.Tenants["zzz"]; ok {
		t.Errorf("the compiled ids share a map with the previous ids")
	}
}

// TestProtocolText: protocols travel by name, case-insensitively on input.
func TestProtocolText(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Protocol
	}{{"tcp", TCP}, {"udp", UDP}, {"TCP", TCP}, {"Udp", UDP}} {
		p, err := ParseProtocol(tc.in)
		if err != nil || p != tc.want {
			t.Errorf("ParseProtocol(%q) = %v, %v; want %v", tc.in, p, err, tc.want)
		}
	}
	for _, in := range []string{"", "icmp", "6", "tcp ", "sctp"} {
		if p, err := ParseProtocol(in); err == nil {
			t.Errorf("ParseProtocol(%q) = %v; want an error", in, p)
		}
	}
	for _, p := range []Protocol{0, 1, 58, 255} {
		if b, err := p.MarshalText(); err == nil {
			t.Errorf("Protocol(%d).MarshalText() = %q; want an error", p, b)
		}
	}
	if s := Protocol(1).String(); s != "proto(1)" {
		t.Errorf("Protocol(1).String() = %q", s)
	}
}
