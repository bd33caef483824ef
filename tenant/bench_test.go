package tenant

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/seed4c/moat/lb"
)

// largeConfig has tenants × services × backends, every backend admitted, each tenant
// on its own VLAN of one trunk and with two rules, one of them over every service.
func largeConfig(tenants, services, backends int, maglevSize uint32) (Config, StaticInterfaces) {
	var cfg Config
	for ti := range tenants {
		t := Tenant{
			Name:        fmt.Sprintf("tenant-%d", ti),
			Attachments: []Attachment{{Interface: "trunk", VLAN: uint16(ti + 1)}},
			Rules: []Rule{
				{Name: "all", Sources: pfxs("10.0.0.0/8", "192.168.0.0/16"), Services: []string{AllServices}},
				{Name: "first", Sources: pfxs("172.16.0.0/12"), Services: []string{"svc-0"}},
			},
		}
		for si := range services {
			s := Service{
				Name: fmt.Sprintf("svc-%d", si), VIP: netip.AddrFrom4([4]byte{10, 100, 0, byte(si + 1)}), Port: 443,
				Protocol: TCP, MaglevSize: maglevSize,
			}
			for bi := range backends {
				s.Backends = append(s.Backends, Backend{
					Name: fmt.Sprintf("b-%d", bi), Addr: netip.AddrFrom4([4]byte{10, 1, byte(si), byte(bi + 1)}),
					Weight: uint32(1 + bi%4), State: lb.StateAdmitted,
				})
			}
			t.Services = append(t.Services, s)
		}
		cfg.Tenants = append(cfg.Tenants, t)
	}
	return cfg, StaticInterfaces{"trunk": 2}
}

// BenchmarkCompile compiles 100 tenants × 10 services × 20 backends (20,000 backends,
// 1,000 Maglev tables), again and again with the previous ids, as a reconciler does on
// every change: with the default table size, and with small tables at 50, 100 and 200
// tenants to show that the rest of the work grows linearly. Maglev table builds are
// most of the time (compare lb's BenchmarkBuildTable).
func BenchmarkCompile(b *testing.B) {
	for _, bc := range []struct {
		tenants int
		size    uint32
	}{{100, lb.DefaultTableSize}, {50, 4099}, {100, 4099}, {200, 4099}} {
		cfg, ifaces := largeConfig(bc.tenants, 10, 20, bc.size)
		b.Run(fmt.Sprintf("%dx10x20/m=%d", bc.tenants, bc.size), func(b *testing.B) {
			var prev IDs
			for b.Loop() {
				c, err := Compile(cfg, ifaces, prev, DefaultLimits())
				if err != nil {
					b.Fatal(err)
				}
				prev = c.IDs
			}
		})
	}
}

// TestLargeConfig checks the benchmark's configuration compiles to what it should, so
// that the benchmark measures a successful compilation.
func TestLargeConfig(t *testing.T) {
	cfg, ifaces := largeConfig(100, 10, 20, 4099)
	c, err := Compile(cfg, ifaces, IDs{}, DefaultLimits())
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Services) != 1000 || len(c.Backends) != 20000 || len(c.Attachments) != 100 || len(c.Policy) != 100*(2*10+1) {
		t.Fatalf("compiled %d services, %d backends, %d attachments, %d policy entries",
			len(c.Services), len(c.Backends), len(c.Attachments), len(c.Policy))
	}
	if err := checkCompiled(c, DefaultLimits()); err != nil {
		t.Fatal(err)
	}
}
