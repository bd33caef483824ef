package tenant_test

import (
	"fmt"
	"net/netip"

	"github.com/seed4c/moat/lb"
	"github.com/seed4c/moat/tenant"
)

// gateway resolves interface names as the dataplane does with netlink.
type gateway map[string]uint32

func (g gateway) Index(name string) (uint32, error) {
	if i, ok := g[name]; ok {
		return i, nil
	}
	return 0, fmt.Errorf("no interface %q", name)
}

// The document of the package comment, compiled twice: the second time with the
// first's ids and a backend added, which gets the next id while the others keep theirs.
func ExampleCompile() {
	doc := `{"tenants": [{
	  "name": "shop",
	  "attachments": [{"interface": "eth1", "vlan": 100}],
	  "services": [{
	    "name": "web", "vip": "10.100.0.1", "port": 443, "protocol": "tcp",
	    "backends": [
	      {"name": "web-1", "addr": "10.1.0.11", "port": 8443, "weight": 1, "state": "admitted"},
	      {"name": "web-2", "addr": "10.1.0.12", "port": 8443, "weight": 2, "state": "draining"}
	    ]
	  }],
	  "rules": [{"name": "customers", "sources": ["0.0.0.0/0"], "services": ["web"]}]
	}]}`
	cfg, err := tenant.ParseConfig([]byte(doc))
	if err != nil {
		fmt.Println(err)
		return
	}
	gw := gateway{"eth1": 3}
	c, err := tenant.Compile(cfg, gw, tenant.IDs{}, tenant.DefaultLimits())
	if err != nil {
		fmt.Println(err)
		return
	}
	for _, s := range c.Services {
		fmt.Printf("service %s/%s id %d: %s:%d/%s, %d slots\n", s.Tenant, s.Name, s.ID, s.VIP, s.Port, s.Protocol, s.TableSize)
	}
	for _, b := range c.Backends {
		fmt.Printf("backend %s id %d: %s:%d %s\n", b.Name, b.ID, b.Addr, b.Port, b.State)
	}

	cfg.Tenants[0].Services[0].Backends = append(cfg.Tenants[0].Services[0].Backends[1:],
		tenant.Backend{Name: "web-3", Addr: netip.MustParseAddr("10.1.0.13"), Port: 8443, Weight: 1, State: lb.StateAdmitted})
	c, err = tenant.Compile(cfg, gw, c.IDs, tenant.DefaultLimits())
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(c.IDs.Backends)
	// Output:
	// service shop/web id 1: 10.100.0.1:443/tcp, 65537 slots
	// backend web-1 id 1: 10.1.0.11:8443 admitted
	// backend web-2 id 2: 10.1.0.12:8443 draining
	// map[shop/web/web-2:2 shop/web/web-3:3]
}

// A refused configuration: every problem, each with its path, and nothing compiled.
func ExampleCompile_refused() {
	cfg, err := tenant.ParseConfig([]byte(`{"tenants": [{
	  "name": "shop",
	  "attachments": [{"interface": "eth9"}],
	  "services": [{"name": "web", "vip": "10.100.0.1", "port": 443, "protocol": "tcp", "maglev_size": 1000,
	    "backends": [{"name": "web-1", "addr": "10.1.0.11", "weight": 0, "state": "admitted"}]}],
	  "rules": [{"sources": ["10.0.0.1/8"], "services": ["api"]}]
	}]}`))
	if err != nil {
		fmt.Println(err)
		return
	}
	c, err := tenant.Compile(cfg, gateway{"eth1": 3}, tenant.IDs{}, tenant.DefaultLimits())
	fmt.Println(c == nil)
	fmt.Println(err)
	// Output:
	// true
	// tenant "shop": attachment eth9.0: no interface "eth9"
	// tenant "shop": service "web": maglev_size 1000 is not a prime (try 1009)
	// tenant "shop": service "web": backend "web-1": weight 0 (remove the backend, or set it draining, instead)
	// tenant "shop": rule #1: unknown service "api"
	// tenant "shop": rule #1: source 10.0.0.1/8 has host bits set (did you mean 10.0.0.0/8?)
}
