package tenant

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"reflect"
	"strings"
	"testing"

	"github.com/seed4c/moat/lb"
)

// fuzzLimits are small enough for fuzzed configurations to reach them.
var fuzzLimits = Limits{MaxTenants: 8, MaxServices: 16, MaxBackends: 64, MaxAttachments: 8, MaxPolicy: 64}

// checkRefusal checks what every refusal satisfies: nothing is returned, and every
// problem is a line that starts with the path to what is wrong.
func checkRefusal(c *Compiled, err error) error {
	if c != nil {
		return fmt.Errorf("Compile returned a configuration with its error %v", err)
	}
	for _, p := range problems(err) {
		if !strings.HasPrefix(p, "tenant ") && !strings.Contains(p, "above the fast path's limit") {
			return fmt.Errorf("problem %q does not start with the path to what is wrong", p)
		}
		if strings.Contains(p, "\n") {
			return fmt.Errorf("problem %q spans lines", p)
		}
	}
	return nil
}

// FuzzParseConfig feeds arbitrary bytes to ParseConfig, and what parses to Compile.
// Neither may panic; a refusal must satisfy checkRefusal; a compiled configuration must
// satisfy checkCompiled, compile again to the same output with its own ids, and survive
// a JSON round trip unchanged.
func FuzzParseConfig(f *testing.F) {
	f.Add([]byte(sampleJSON))
	base, _ := json.Marshal(baseConfig())
	f.Add(base)
	f.Add([]byte(`{"tenants":[{"name":"a","attachments":[{"interface":"eth0","vlan":4094}],"services":[{"name":"s","vip":"10.0.0.1","port":1,"protocol":"udp","maglev_size":131,"backends":[{"name":"b","addr":"10.0.0.2","weight":4294967295,"state":"admitted"},{"name":"c","addr":"10.0.0.2","port":2,"weight":1,"state":"admitted"}]}],"rules":[{"sources":["0.0.0.0/0","10.0.0.0/8"],"services":["*","s"]}]}]}`))
	f.Add([]byte(`{"tenants":[{"name":"a"},{"name":"a"}]}`))
	f.Add([]byte(`{"tenants":[{"name":"a","name":"b"}]}`))
	f.Add([]byte(`{"tenants":[]}}`))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := ParseConfig(data)
		if err != nil {
			if !reflect.DeepEqual(cfg, Config{}) {
				t.Fatalf("ParseConfig returned a configuration with its error %v", err)
			}
			return
		}
		c, err := Compile(cfg, testIfaces, IDs{}, fuzzLimits)
		if err != nil {
			if err := checkRefusal(c, err); err != nil {
				t.Fatal(err)
			}
			return
		}
		if err := checkCompiled(c, fuzzLimits); err != nil {
			t.Fatal(err)
		}
		again, err := Compile(cfg, testIfaces, c.IDs, fuzzLimits)
		if err != nil || !reflect.DeepEqual(again, c) {
			t.Fatalf("recompiling with its own ids: %v, or a different output", err)
		}
		out, err := json.Marshal(cfg)
		if err != nil {
			t.Fatalf("Marshal of a configuration that compiled: %v", err)
		}
		back, err := ParseConfig(out)
		if err != nil || !reflect.DeepEqual(back, cfg) {
			t.Fatalf("round trip through %s: %v, or a different configuration", out, err)
		}
	})
}

// byteSource reads small choices from fuzz input, and zeros once it runs out.
type byteSource []byte

func (b *byteSource) next(n int) int {
	if len(*b) == 0 {
		return 0
	}
	v := int((*b)[0])
	*b = (*b)[1:]
	return v % n
}

// mostly draws one of valid, and one of invalid for one byte value in sixteen, so that
// a fuzzed configuration with many parts still often compiles. The invalid candidates
// include values that collide with what another part of the configuration uses.
func mostly[T any](b *byteSource, valid []T, invalid ...T) T {
	v := b.next(256)
	if v < 240 || len(invalid) == 0 {
		return valid[v%len(valid)]
	}
	return invalid[(v-240)%len(invalid)]
}

// fuzzConfig builds a configuration from fuzz input. Names and addresses are distinct
// unless the input picks one of the colliding or invalid candidates, so that both
// configurations that compile and each kind of mistake are frequent.
func fuzzConfig(b *byteSource) Config {
	var cfg Config
	for ti := range b.next(4) {
		t := Tenant{Name: mostly(b, []string{fmt.Sprintf("t%d", ti)}, "t0", "T", ""), FIBTable: uint32(b.next(3))}
		for ai := range b.next(3) {
			t.Attachments = append(t.Attachments, Attachment{
				Interface: mostly(b, []string{fmt.Sprintf("eth%d", ai)}, "eth0", "nope"),
				VLAN:      mostly(b, []uint16{uint16(10*ti + 1), uint16(10*ti + 2)}, 0, 4095),
			})
		}
		for si := range b.next(4) {
			s := Service{
				Name:       mostly(b, []string{fmt.Sprintf("s%d", si)}, "s0", "S"),
				VIP:        mostly(b, []netip.Addr{netip.AddrFrom4([4]byte{10, 0, 0, byte(si + 1)})}, addr("10.0.0.1"), addr("::ffff:10.0.0.1"), addr("0.0.0.0"), addr("::1"), addr("224.0.0.1"), netip.Addr{}),
				Port:       mostly(b, []uint16{80, 443}, 0),
				Protocol:   mostly(b, []Protocol{TCP, UDP}, 1),
				MaglevSize: mostly(b, []uint32{1031, 257}, 131, 130, 0, 1048583),
			}
			for bi := range b.next(6) {
				s.Backends = append(s.Backends, Backend{
					Name:   mostly(b, []string{fmt.Sprintf("b%d", bi)}, "b0", "X"),
					Addr:   mostly(b, []netip.Addr{netip.AddrFrom4([4]byte{10, 1, 0, byte(bi + 1)})}, addr("10.1.0.1"), addr("255.255.255.255"), addr("2001:db8::1")),
					Port:   mostly(b, []uint16{0, 80, 8080}),
					Weight: mostly(b, []uint32{1, 2, 100}, 0),
					State:  mostly(b, []lb.State{lb.StateAdmitted, lb.StateDraining, lb.StateEvicted}, 3),
				})
			}
			t.Services = append(t.Services, s)
		}
		for ri := range b.next(3) {
			r := Rule{Name: mostly(b, []string{"", fmt.Sprintf("r%d", ri)}, "r0", "R")}
			for range mostly(b, []int{1, 2}, 0) {
				r.Sources = append(r.Sources, mostly(b, []netip.Prefix{pfx("10.0.0.0/8"), pfx("0.0.0.0/0"), pfx("192.0.2.0/24")}, pfx("10.0.0.1/8"), pfx("::/0")))
			}
			for range mostly(b, []int{1, 2}, 0) {
				r.Services = append(r.Services, mostly(b, []string{AllServices, AllServices, "s0"}, "s1", "nope"))
			}
			t.Rules = append(t.Rules, r)
		}
		cfg.Tenants = append(cfg.Tenants, t)
	}
	return cfg
}

// obviouslyInvalid finds, independently of Compile, some mistakes that must make it
// refuse the configuration.
func obviouslyInvalid(cfg Config) string {
	for _, t := range cfg.Tenants {
		for _, a := range t.Attachments {
			if a.VLAN > 4094 || a.Interface == "nope" {
				return "bad attachment"
			}
		}
		for _, s := range t.Services {
			if s.Port == 0 || (s.Protocol != TCP && s.Protocol != UDP) || !s.VIP.Unmap().Is4() {
				return "bad service key"
			}
			for _, b := range s.Backends {
				if b.Weight == 0 || b.State > lb.StateDraining || !b.Addr.Is4() {
					return "bad backend"
				}
			}
		}
		for _, r := range t.Rules {
			if len(r.Sources) == 0 || len(r.Services) == 0 {
				return "empty rule"
			}
		}
	}
	return ""
}

// FuzzCompile compiles two fuzz-built configurations in a row, the second with the
// first's ids: each must be refused cleanly or satisfy every invariant; what is in both
// keeps its id; a new thing takes an id the first held only when no other id is free.
func FuzzCompile(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte{2, 0, 0, 1, 0, 0, 1, 0, 0, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 1, 1, 0, 1, 0, 1, 1, 1, 0, 0, 1, 0, 1, 1, 0})
	f.Add([]byte{3, 1, 1, 2, 1, 1, 2, 2, 3, 0, 1, 1, 1, 1, 2, 4, 1, 2, 2, 1, 1, 2, 2, 1, 3, 2, 2, 1, 1, 1, 1, 2, 2, 0, 2, 1, 0})
	f.Fuzz(func(t *testing.T, data []byte) {
		b := byteSource(data)
		first, second := fuzzConfig(&b), fuzzConfig(&b)
		var prev IDs
		for i, cfg := range []Config{first, second} {
			c, err := Compile(cfg, testIfaces, prev, fuzzLimits)
			if err != nil {
				if err := checkRefusal(c, err); err != nil {
					t.Fatal(err)
				}
				continue
			}
			if why := obviouslyInvalid(cfg); why != "" {
				t.Fatalf("Compile accepted configuration %d with a %s", i+1, why)
			}
			if err := checkCompiled(c, fuzzLimits); err != nil {
				t.Fatal(err)
			}
			// The first compilation started from nothing: the ids it holds are all
			// the ids ever used.
			for _, tr := range idTransitions(prev, c.IDs, fuzzLimits) {
				held := map[uint32]bool{}
				for _, id := range tr.before {
					held[id] = true
				}
				if _, _, err := tr.check(held); err != nil {
					t.Fatal(err)
				}
			}
			prev = c.IDs
		}
	})
}
