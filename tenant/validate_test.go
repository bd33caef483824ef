package tenant

import (
	"errors"
	"fmt"
	"net/netip"
	"runtime"
	"strings"
	"testing"

	"github.com/seed4c/moat/lb"
)

// TestCompileRefuses checks that each kind of invalid configuration is refused with
// exactly one problem, whose message names the path to what is wrong and says what is
// wrong with it, and that nothing is returned with the error.
func TestCompileRefuses(t *testing.T) {
	a := func(c *Config) *Tenant { return &c.Tenants[0] }
	b := func(c *Config) *Tenant { return &c.Tenants[1] }
	web := func(c *Config) *Service { return &c.Tenants[0].Services[0] }
	w1 := func(c *Config) *Backend { return &c.Tenants[0].Services[0].Backends[0] }
	long := strings.Repeat("x", 65)

	cases := []struct {
		name   string
		mutate func(*Config)
		want   []string // substrings of the one problem reported
	}{
		// attachments
		{"unknown interface", func(c *Config) { a(c).Attachments[0].Interface = "nope0" },
			[]string{`tenant "a": attachment nope0.0: `, `no interface "nope0"`}},
		{"VLAN 4095", func(c *Config) { a(c).Attachments[1].VLAN = 4095 },
			[]string{`tenant "a": attachment eth1.4095: VLAN id 4095 out of range 0-4094`}},
		{"VLAN 65535", func(c *Config) { a(c).Attachments[1].VLAN = 65535 },
			[]string{`tenant "a": attachment eth1.65535: VLAN id 65535 out of range`}},
		{"interface and VLAN of another tenant", func(c *Config) {
			b(c).Attachments = append(b(c).Attachments, Attachment{Interface: "eth1", VLAN: 100})
		}, []string{`tenant "b": attachment eth1.100: already attached to tenant "a"`}},
		{"untagged interface of another tenant", func(c *Config) {
			b(c).Attachments = append(b(c).Attachments, Attachment{Interface: "eth0"})
		}, []string{`tenant "b": attachment eth0.0: already attached to tenant "a"`}},
		{"tenant on one interface twice", func(c *Config) {
			a(c).Attachments = append(a(c).Attachments, Attachment{Interface: "eth0", VLAN: 5})
		}, []string{`tenant "a": attachment eth0.5: tenant is already attached to eth0 on another VLAN`}},
		{"same attachment listed twice", func(c *Config) {
			a(c).Attachments = append(a(c).Attachments, Attachment{Interface: "eth1", VLAN: 100})
		}, []string{`tenant "a": attachment eth1.100: listed twice`}},

		// names
		{"duplicate tenant", func(c *Config) { b(c).Name = "a" }, []string{`tenant "a": defined twice`}},
		{"upper-case tenant name", func(c *Config) { b(c).Name = "B" }, []string{`tenant #2: name "B": want 1-64 characters`}},
		{"empty tenant name", func(c *Config) { a(c).Name = "" }, []string{`tenant #1: name "": want`}},
		{"tenant name with a slash", func(c *Config) { a(c).Name = "a/b" }, []string{`tenant #1: name "a/b"`}},
		{"tenant name starting with a dash", func(c *Config) { a(c).Name = "-a" }, []string{`tenant #1: name "-a"`}},
		{"tenant name ending with a dot", func(c *Config) { a(c).Name = "a." }, []string{`tenant #1: name "a."`}},
		{"tenant name of 65 characters", func(c *Config) { a(c).Name = long }, []string{`tenant #1: name "` + long + `"`}},
		{"duplicate service", func(c *Config) {
			a(c).Services = append(a(c).Services, Service{Name: "web", VIP: addr("10.100.0.2"), Port: 80, Protocol: TCP})
		}, []string{`tenant "a": service "web": defined twice`}},
		{"bad service name", func(c *Config) {
			a(c).Services = append(a(c).Services, Service{Name: "Web", VIP: addr("10.100.0.2"), Port: 80, Protocol: TCP})
		}, []string{`tenant "a": service #3: name "Web": want`}},
		{"duplicate backend", func(c *Config) { web(c).Backends[1].Name = "w1" },
			[]string{`tenant "a": service "web": backend "w1": defined twice`}},
		{"bad backend name", func(c *Config) { w1(c).Name = "w_1!" },
			[]string{`tenant "a": service "web": backend #1: name "w_1!": want`}},
		{"bad rule name", func(c *Config) { a(c).Rules[0].Name = "LAN" }, []string{`tenant "a": rule #1: name "LAN": want`}},
		{"duplicate rule name", func(c *Config) { a(c).Rules[1].Name = "lan" }, []string{`tenant "a": rule "lan": defined twice`}},

		// service keys
		{"IPv6 VIP", func(c *Config) { web(c).VIP = addr("2001:db8::1") },
			[]string{`tenant "a": service "web": VIP 2001:db8::1: only IPv4 is supported`}},
		{"missing VIP", func(c *Config) { web(c).VIP = netip.Addr{} }, []string{`tenant "a": service "web": VIP is missing`}},
		{"unspecified VIP", func(c *Config) { web(c).VIP = addr("0.0.0.0") },
			[]string{`tenant "a": service "web": VIP 0.0.0.0 is not a unicast address`}},
		{"multicast VIP", func(c *Config) { web(c).VIP = addr("239.1.2.3") },
			[]string{`tenant "a": service "web": VIP 239.1.2.3 is not a unicast address`}},
		{"broadcast VIP", func(c *Config) { web(c).VIP = addr("255.255.255.255") },
			[]string{`tenant "a": service "web": VIP 255.255.255.255 is not a unicast address`}},
		{"IPv4-mapped multicast VIP", func(c *Config) { web(c).VIP = addr("::ffff:224.0.0.1") },
			[]string{`tenant "a": service "web": VIP ::ffff:224.0.0.1 is not a unicast address`}},
		{"port 0", func(c *Config) { web(c).Port = 0 }, []string{`tenant "a": service "web": port 0`}},
		{"unknown protocol", func(c *Config) { web(c).Protocol = 1 },
			[]string{`tenant "a": service "web": protocol proto(1) is not balanced (want tcp or udp)`}},
		{"missing protocol", func(c *Config) { web(c).Protocol = 0 }, []string{`tenant "a": service "web": protocol proto(0)`}},
		{"duplicate VIP:port/proto in a tenant", func(c *Config) {
			a(c).Services[1].Port, a(c).Services[1].Protocol = 80, TCP
		}, []string{`tenant "a": service "dns": 10.100.0.1:80/tcp is already service "web" of the same tenant`}},
		{"duplicate VIP spelt IPv4-mapped", func(c *Config) {
			a(c).Services[1].VIP, a(c).Services[1].Port, a(c).Services[1].Protocol = addr("::ffff:10.100.0.1"), 80, TCP
		}, []string{`tenant "a": service "dns": 10.100.0.1:80/tcp is already service "web"`}},

		// backends
		{"IPv6 backend", func(c *Config) { w1(c).Addr = addr("2001:db8::2") },
			[]string{`tenant "a": service "web": backend "w1": address 2001:db8::2: only IPv4`}},
		{"missing backend address", func(c *Config) { w1(c).Addr = netip.Addr{} },
			[]string{`tenant "a": service "web": backend "w1": address is missing`}},
		{"multicast backend", func(c *Config) { w1(c).Addr = addr("224.0.0.5") },
			[]string{`tenant "a": service "web": backend "w1": address 224.0.0.5 is not a unicast address`}},
		{"broadcast backend", func(c *Config) { w1(c).Addr = addr("255.255.255.255") },
			[]string{`backend "w1": address 255.255.255.255 is not a unicast address`}},
		{"zero weight", func(c *Config) { w1(c).Weight = 0 },
			[]string{`tenant "a": service "web": backend "w1": weight 0 (remove the backend, or set it draining, instead)`}},
		{"zero weight of a draining backend", func(c *Config) { web(c).Backends[2].Weight = 0 },
			[]string{`tenant "a": service "web": backend "w3": weight 0`}},
		{"invalid state", func(c *Config) { w1(c).State = 3 },
			[]string{`tenant "a": service "web": backend "w1": invalid backend state 3`}},
		{"duplicate backend address:port", func(c *Config) { web(c).Backends[1].Addr, web(c).Backends[1].Port = addr("10.1.0.1"), 80 },
			[]string{`tenant "a": service "web": backend "w2": 10.1.0.1:80 is already backend "w1" of the service`}},
		{"duplicate backend address through the default port", func(c *Config) { web(c).Backends[2].Addr = addr("10.1.0.1") },
			[]string{`tenant "a": service "web": backend "w3": 10.1.0.1:80 is already backend "w1"`}},

		// Maglev sizes
		{"non-prime maglev size", func(c *Config) { web(c).MaglevSize = 520 },
			[]string{`tenant "a": service "web": maglev_size 520 is not a prime (try 521)`}},
		{"maglev size above the largest table", func(c *Config) { web(c).MaglevSize = 1048583 }, // prime
			[]string{`tenant "a": service "web": maglev_size 1048583 is above the largest table, 1048573`}},
		{"maglev size at the top of uint32", func(c *Config) { web(c).MaglevSize = 1<<32 - 1 },
			[]string{`maglev_size 4294967295 is above the largest table`}},
		{"table too small for the backends", func(c *Config) { web(c).MaglevSize = 131 }, // room for 2
			[]string{`tenant "a": service "web": maglev_size 131 is too small for 4 backends (at least 64 slots per backend: try 257)`}},
		{"more backends than any table holds", func(c *Config) {
			bs := make([]Backend, lb.MaxTableSize/lb.MinSlotsPerBackend+1)
			for i := range bs {
				bs[i] = Backend{Name: fmt.Sprintf("b%d", i), Addr: netip.AddrFrom4([4]byte{10, 2, byte(i >> 8), byte(i)}), Weight: 1}
			}
			web(c).Backends = bs
		}, []string{`tenant "a": service "web": 16384 backends: a service has at most 16383`}},

		// rules
		{"rule without sources", func(c *Config) { a(c).Rules[0].Sources = nil }, []string{`tenant "a": rule "lan": no sources`}},
		{"rule without services", func(c *Config) { a(c).Rules[0].Services = nil },
			[]string{`tenant "a": rule "lan": no services (name them, or "*" for all)`}},
		{"rule naming an unknown service", func(c *Config) { a(c).Rules[0].Services[1] = "ftp" },
			[]string{`tenant "a": rule "lan": unknown service "ftp"`}},
		{"rule naming another tenant's service", func(c *Config) {
			b(c).Services[0].Name = "mail"
			b(c).Rules[0].Services = []string{"dns"}
		}, []string{`tenant "b": rule #1: unknown service "dns"`}},
		{"unnamed rule without sources", func(c *Config) { b(c).Rules[0].Sources = nil }, []string{`tenant "b": rule #1: no sources`}},
		{"source with host bits", func(c *Config) { a(c).Rules[0].Sources[0] = pfx("10.0.0.1/24") },
			[]string{`tenant "a": rule "lan": source 10.0.0.1/24 has host bits set (did you mean 10.0.0.0/24?)`}},
		{"IPv6 source", func(c *Config) { a(c).Rules[0].Sources[0] = pfx("2001:db8::/32") },
			[]string{`tenant "a": rule "lan": source 2001:db8::/32: want an IPv4 prefix`}},
		{"IPv4-mapped source", func(c *Config) { a(c).Rules[0].Sources[0] = pfx("::ffff:10.0.0.0/120") },
			[]string{`tenant "a": rule "lan": source ::ffff:10.0.0.0/120: want an IPv4 prefix`}},
		{"missing source", func(c *Config) { a(c).Rules[0].Sources[0] = netip.Prefix{} },
			[]string{`tenant "a": rule "lan": source invalid Prefix: want an IPv4 prefix`}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg := baseConfig()
			tc.mutate(&cfg)
			c, err := Compile(cfg, testIfaces, IDs{}, DefaultLimits())
			if err == nil {
				t.Fatalf("Compile accepted the configuration")
			}
			if c != nil {
				t.Errorf("Compile returned a compiled configuration along with its error; want nil")
			}
			ps := problems(err)
			if len(ps) != 1 {
				t.Fatalf("got %d problems, want exactly 1:\n%s", len(ps), err)
			}
			for _, w := range tc.want {
				if !strings.Contains(ps[0], w) {
					t.Errorf("problem\n\t%s\ndoes not say\n\t%s", ps[0], w)
				}
			}
		})
	}
}

// TestCompileInvalidStateWraps lets callers recognise an invalid state with errors.Is.
func TestCompileInvalidStateWraps(t *testing.T) {
	cfg := baseConfig()
	cfg.Tenants[1].Services[0].Backends[0].State = 9
	_, err := Compile(cfg, testIfaces, IDs{}, DefaultLimits())
	if !errors.Is(err, lb.ErrInvalidState) {
		t.Fatalf("error %v does not wrap lb.ErrInvalidState", err)
	}
}

// TestCompileAcceptsSharedAddresses: tenants are isolated, so two of them may use the
// same VIP:port/proto, the same client prefixes and the same backend addresses; and one
// tenant may use one VIP for several ports and protocols.
func TestCompileAcceptsSharedAddresses(t *testing.T) {
	cfg := baseConfig() // a/web and b/web are both 10.100.0.1:80/tcp; a/dns is 10.100.0.1:53/udp
	cfg.Tenants[0].Services = append(cfg.Tenants[0].Services, Service{
		Name: "dns-tcp", VIP: addr("10.100.0.1"), Port: 53, Protocol: TCP, MaglevSize: 131,
		Backends: []Backend{backend("d1", "10.1.0.9", 0, 1, lb.StateAdmitted)},
	})
	// The same backend address on two ports of one service is two backends.
	cfg.Tenants[1].Services[0].Backends = append(cfg.Tenants[1].Services[0].Backends, backend("v2", "10.1.0.1", 8080, 1, lb.StateAdmitted))
	c := mustCompile(t, cfg, IDs{}, DefaultLimits())
	if err := checkCompiled(c, DefaultLimits()); err != nil {
		t.Fatal(err)
	}
	var webs []ServiceEntry
	for _, s := range c.Services {
		if s.Name == "web" {
			webs = append(webs, s)
		}
	}
	if len(webs) != 2 || webs[0].VIP != webs[1].VIP || webs[0].Port != webs[1].Port || webs[0].TenantID == webs[1].TenantID || webs[0].ID == webs[1].ID {
		t.Fatalf("want two web services on one VIP:port with distinct tenant and service ids, got %+v", webs)
	}
	if len(c.Services) != 4 {
		t.Errorf("%d services compiled, want 4", len(c.Services))
	}
}

// TestCompileReportsEveryProblem: problems in different tenants, services, backends
// and rules are all reported by one Compile, in configuration order.
func TestCompileReportsEveryProblem(t *testing.T) {
	cfg := baseConfig()
	cfg.Tenants[0].Attachments[0].Interface = "nope0"
	cfg.Tenants[0].Services[0].Port = 0
	cfg.Tenants[0].Services[0].MaglevSize = 100
	cfg.Tenants[0].Services[0].Backends[2].Weight = 0 // reported although its service is invalid
	cfg.Tenants[0].Services[1].Backends[0].Weight = 0
	cfg.Tenants[0].Rules[1].Sources[0] = pfx("10.9.0.1/16")
	cfg.Tenants[1].Attachments[0].VLAN = 5000
	cfg.Tenants[1].Services[0].VIP = addr("2001:db8::1")
	cfg.Tenants[1].Rules[0].Services = []string{"nope"}
	cfg.Tenants = append(cfg.Tenants, Tenant{Name: "Bad"})

	c, err := Compile(cfg, testIfaces, IDs{}, DefaultLimits())
	if c != nil || err == nil {
		t.Fatalf("Compile returned (compiled: %t, error: %v); want nil and an error", c != nil, err)
	}
	want := []string{
		`tenant "a": attachment nope0.0: no interface "nope0"`,
		`tenant "a": service "web": port 0`,
		`tenant "a": service "web": maglev_size 100 is not a prime`,
		`tenant "a": service "web": backend "w3": weight 0`,
		`tenant "a": service "dns": backend "d1": weight 0`,
		`tenant "a": rule "all": source 10.9.0.1/16 has host bits set`,
		`tenant "b": attachment eth1.5000: VLAN id 5000 out of range`,
		`tenant "b": service "web": VIP 2001:db8::1: only IPv4`,
		`tenant "b": rule #1: unknown service "nope"`,
		`tenant #3: name "Bad"`,
	}
	ps := problems(err)
	if len(ps) != len(want) {
		t.Fatalf("got %d problems, want %d:\n%s", len(ps), len(want), err)
	}
	for i, w := range want {
		if !strings.Contains(ps[i], w) {
			t.Errorf("problem %d is\n\t%s\nwant it to say\n\t%s", i+1, ps[i], w)
		}
	}
}

// TestCompileLimits: a configuration larger than the fast path's maps is refused, with
// the limit named, rather than partly written.
func TestCompileLimits(t *testing.T) {
	// Two tenants, three services, six backends (four in a/web), four attachments
	// and 2 + 2 + 1 = 5 policy entries (rule "all" repeats two of rule "lan"'s).
	base := DefaultLimits()
	cases := []struct {
		name   string
		limits func(*Limits)
		want   string
	}{
		{"tenants", func(l *Limits) { l.MaxTenants = 2 }, `tenant "b": no tenant id left: the fast path holds at most 1 tenants`},
		{"services", func(l *Limits) { l.MaxServices = 3 }, `tenant "b": service "web": no service id left: the fast path holds at most 2 services`},
		{"backends", func(l *Limits) { l.MaxBackends = 6 }, `tenant "b": service "web": backend "v1": no backend id left: the fast path holds at most 5 backends`},
		{"attachments", func(l *Limits) { l.MaxAttachments = 3 }, `4 attachments in all, above the fast path's limit of 3`},
		{"policy", func(l *Limits) { l.MaxPolicy = 4 }, `more than 4 compiled allow entries (one per source and service of each rule, identical ones counted once): above the fast path's limit`},
		{"no room at all", func(l *Limits) { *l = Limits{} }, `tenant "a": no tenant id left: the fast path holds at most 0 tenants`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			l := base
			tc.limits(&l)
			c, err := Compile(baseConfig(), testIfaces, IDs{}, l)
			if err == nil || c != nil {
				t.Fatalf("Compile returned (compiled: %t, error: %v); want nil and an error", c != nil, err)
			}
			ps := problems(err)
			if !strings.Contains(ps[0], tc.want) {
				t.Errorf("first problem\n\t%s\nwant\n\t%s", ps[0], tc.want)
			}
		})
	}
	// Exactly at the limits, the same configuration fits.
	exact := Limits{MaxTenants: 3, MaxServices: 4, MaxBackends: 7, MaxAttachments: 4, MaxPolicy: 5}
	c := mustCompile(t, baseConfig(), IDs{}, exact)
	if err := checkCompiled(c, exact); err != nil {
		t.Fatal(err)
	}
}

// TestCompilePolicyExpansionBounded: rules whose expansion (sources × services) is far
// above the limit are refused without materialising the expansion: a short document
// must not make the control plane allocate gigabytes.
func TestCompilePolicyExpansionBounded(t *testing.T) {
	const sources, services = 4000, 1000 // 4,000,000 entries, 61 times the default limit
	tn := Tenant{Name: "big", Rules: []Rule{{Services: []string{AllServices}}}}
	for i := range sources {
		tn.Rules[0].Sources = append(tn.Rules[0].Sources, netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), 0}), 24))
	}
	for i := range services {
		tn.Services = append(tn.Services, Service{Name: fmt.Sprintf("s%d", i), VIP: addr("10.100.0.1"), Port: uint16(i + 1), Protocol: TCP})
	}
	cfg := Config{Tenants: []Tenant{tn}}
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	c, err := Compile(cfg, testIfaces, IDs{}, DefaultLimits())
	runtime.ReadMemStats(&after)
	if c != nil || err == nil || !strings.Contains(err.Error(), "more than 65536 compiled allow entries") {
		t.Fatalf("Compile returned (compiled: %t, error: %v); want the policy limit refused", c != nil, err)
	}
	// The full expansion would take over 160 MB of entries alone.
	if mb := (after.TotalAlloc - before.TotalAlloc) >> 20; mb > 64 {
		t.Errorf("refusing the configuration allocated %d MB", mb)
	}
}
