package tenant

import (
	"reflect"
	"testing"

	"github.com/seed4c/moat/lb"
)

// TestCompilerReusesTables: a Compiler rebuilds only the tables whose input changed,
// and what it returns is exactly what a one-shot Compile returns.
func TestCompilerReusesTables(t *testing.T) {
	cm := NewCompiler(testIfaces, DefaultLimits(), IDs{})
	first, err := cm.Compile(baseConfig())
	if err != nil {
		t.Fatal(err)
	}
	cfg := baseConfig()
	cfg.Tenants[0].Services[0].Backends[1].State = lb.StateEvicted // a/web changes
	second, err := cm.Compile(cfg)
	if err != nil {
		t.Fatal(err)
	}
	oneShot := mustCompile(t, cfg, first.IDs, DefaultLimits())
	for i, s := range second.Services {
		w := oneShot.Services[i]
		if !reflect.DeepEqual(s.Table, w.Table) || s.ID != w.ID || s.TableSize != w.TableSize {
			t.Errorf("service %s/%s differs from a one-shot compilation", s.Tenant, s.Name)
		}
		prev := first.Services[i]
		same := len(s.Table) > 0 && len(prev.Table) > 0 && &s.Table[0] == &prev.Table[0]
		changed := s.Tenant == "a" && s.Name == "web"
		if changed && same {
			t.Errorf("a/web's table was reused although a backend was evicted")
		}
		if !changed && len(s.Table) > 0 && !same {
			t.Errorf("%s/%s's table was rebuilt although nothing it depends on changed", s.Tenant, s.Name)
		}
	}
	if !reflect.DeepEqual(cm.IDs(), second.IDs) {
		t.Errorf("Compiler.IDs() is not the last compilation's")
	}
	// A failed compilation changes nothing the next one starts from.
	bad := baseConfig()
	bad.Tenants[0].Services[0].Port = 0
	if _, err := cm.Compile(bad); err == nil {
		t.Fatal("invalid configuration compiled")
	}
	if !reflect.DeepEqual(cm.IDs(), second.IDs) {
		t.Errorf("a refused compilation changed the ids")
	}
}

func TestValidateMatchesCompile(t *testing.T) {
	if err := Validate(baseConfig(), testIfaces, IDs{}, DefaultLimits()); err != nil {
		t.Fatalf("valid configuration: %v", err)
	}
	bad := baseConfig()
	bad.Tenants[1].Attachments[0].Interface = "eth9"
	bad.Tenants[0].Services[1].Backends[0].Weight = 0
	verr := Validate(bad, testIfaces, IDs{}, DefaultLimits())
	_, cerr := Compile(bad, testIfaces, IDs{}, DefaultLimits())
	if verr == nil || cerr == nil || verr.Error() != cerr.Error() {
		t.Fatalf("Validate %v\nCompile  %v", verr, cerr)
	}
}
