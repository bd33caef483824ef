package dataplane

import (
	"strings"
	"testing"

	"github.com/cilium/ebpf/btf"

	"github.com/seed4c/moat/lb"
	"github.com/seed4c/moat/tenant"
)

// The Go side restates a few facts of the C side; these tests keep them equal.

func TestDefaultConfigMatchesObject(t *testing.T) {
	spec, err := loadGateway()
	if err != nil {
		t.Fatal(err)
	}
	var s gatewaySpecs
	if err := spec.Assign(&s); err != nil {
		t.Fatal(err)
	}
	c := DefaultConfig()
	for _, v := range []struct {
		name string
		got  func() (uint64, error)
		want uint64
	}{
		// The object's defaults are in jiffies at HZ=250 (bpf/lib/config.h).
		{"tcp timeout", get64(s.CfgCtTcpTimeoutJiffies.Get), toJiffies(c.CTTCPTimeout, 250)},
		{"tcp closing timeout", get64(s.CfgCtTcpClosingTimeoutJiffies.Get), toJiffies(c.CTTCPClosingTimeout, 250)},
		{"udp timeout", get64(s.CfgCtUdpTimeoutJiffies.Get), toJiffies(c.CTUDPTimeout, 250)},
		{"refresh", get64(s.CfgCtRefreshJiffies.Get), toJiffies(c.CTRefresh, 250)},
		{"route ttl", get64(s.CfgRouteTtlJiffies.Get), toJiffies(c.RouteTTL, 250)},
		{"hz", get64(s.CfgHz.Get), 250},
		{"hash seed", get32(s.CfgHashSeed.Get), uint64(c.HashSeed)},
		{"event mask", get32(s.CfgEventMask.Get), uint64(c.EventMask)},
		{"event rate", get32(s.CfgEventRate.Get), uint64(c.EventRate)},
		{"event burst", get32(s.CfgEventBurst.Get), uint64(c.EventBurst)},
	} {
		got, err := v.got()
		if err != nil {
			t.Fatalf("%s: %v", v.name, err)
		}
		if got != v.want {
			t.Errorf("%s: object has %d, DefaultConfig %d", v.name, got, v.want)
		}
	}
	if err := c.Validate(); err != nil {
		t.Errorf("default config invalid: %v", err)
	}
}

func get64(f func(any) error) func() (uint64, error) {
	return func() (uint64, error) { var v uint64; err := f(&v); return v, err }
}

func get32(f func(any) error) func() (uint64, error) {
	return func() (uint64, error) { var v uint32; err := f(&v); return uint64(v), err }
}

func TestMapSizesMatchDefaultLimits(t *testing.T) {
	spec, err := loadGateway()
	if err != nil {
		t.Fatal(err)
	}
	var s gatewaySpecs
	if err := spec.Assign(&s); err != nil {
		t.Fatal(err)
	}
	l := tenant.DefaultLimits()
	o := DefaultOptions("x")
	for _, v := range []struct {
		name      string
		got, want uint32
	}{
		{"attachments", s.Attachments.MaxEntries, l.MaxAttachments},
		{"port_attachments", s.PortAttachments.MaxEntries, maxPortIfindex},
		{"service_filter", s.ServiceFilter.MaxEntries, filterWords},
		{"backend_filter", s.BackendFilter.MaxEntries, filterWords},
		{"host_filter", s.HostFilter.MaxEntries, filterWords},
		{"services", s.Services.MaxEntries, l.MaxServices},
		{"backends", s.Backends.MaxEntries, l.MaxBackends},
		{"tenant_stats", s.TenantStats.MaxEntries, l.MaxTenants},
		{"policy", s.Policy.MaxEntries, l.MaxPolicy},
		{"conntrack", s.Conntrack.MaxEntries, o.MaxFlows},
	} {
		if v.got != v.want {
			t.Errorf("%s: compiled with %d entries, Go default %d", v.name, v.got, v.want)
		}
	}
}

func TestBackendStateMatchesLB(t *testing.T) {
	spec, err := loadGateway()
	if err != nil {
		t.Fatal(err)
	}
	var enum *btf.Enum
	if err := spec.Types.TypeByName("backend_state", &enum); err != nil {
		t.Fatal(err)
	}
	want := map[string]lb.State{
		"BACKEND_EVICTED": lb.StateEvicted, "BACKEND_ADMITTED": lb.StateAdmitted, "BACKEND_DRAINING": lb.StateDraining,
	}
	if len(enum.Values) != len(want) {
		t.Fatalf("enum backend_state has %d values, lb.State %d", len(enum.Values), len(want))
	}
	for _, v := range enum.Values {
		if s, ok := want[v.Name]; !ok || uint64(s) != v.Value {
			t.Errorf("%s = %d in C, lb.State %v (%d)", v.Name, v.Value, s, s)
		}
	}
}

func TestReasonNames(t *testing.T) {
	seen := map[string]bool{}
	for r := range NumReasons {
		reason := Reason(r)
		name := reason.String()
		if strings.HasPrefix(name, "reason(") {
			t.Errorf("reason %d has no name in the object's BTF", r)
		}
		if seen[name] {
			t.Errorf("reason name %q twice", name)
		}
		seen[name] = true
		if reason.IsDrop() != strings.HasPrefix(name, "drop_") || reason.IsPass() != strings.HasPrefix(name, "pass_") {
			t.Errorf("%s: IsDrop %v, IsPass %v", name, reason.IsDrop(), reason.IsPass())
		}
	}
	if DropNoTenant.String() != "drop_no_tenant" || Reason(999).String() != "reason(999)" {
		t.Errorf("names: %s, %s", DropNoTenant, Reason(999))
	}
}

func TestConfigValidate(t *testing.T) {
	for name, mut := range map[string]func(*Config){
		"zero timeout":         func(c *Config) { c.CTUDPTimeout = 0 },
		"refresh too long":     func(c *Config) { c.CTRefresh = c.CTTCPClosingTimeout },
		"unknown event bit":    func(c *Config) { c.EventMask = 1 << 7 },
		"burst above rate":     func(c *Config) { c.EventBurst = c.EventRate + 1 },
		"negative tcp timeout": func(c *Config) { c.CTTCPTimeout = -1 },
	} {
		c := DefaultConfig()
		mut(&c)
		if err := c.Validate(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
