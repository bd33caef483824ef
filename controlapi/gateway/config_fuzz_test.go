package gateway

import (
	"reflect"
	"testing"

	"go.yaml.in/yaml/v3"
)

// FuzzParseConfig feeds the daemon's configuration parser arbitrary YAML. A
// configuration it accepts is valid, already has its defaults, and its own YAML reads
// back as a configuration with the same YAML (the comparison is of the YAML, where an
// empty list and no list are the same).
func FuzzParseConfig(f *testing.F) {
	f.Add([]byte(Example))
	f.Add([]byte("interfaces: [eth1]\n"))
	f.Add([]byte("interfaces: [eth1]\nverifier:\n  result_ttl: 1h\noverlay:\n  address: 100.64.0.1/24\n"))
	f.Add([]byte("interfaces: [e]\ntls:\n  mode: acme\n  names: [gw.example]\n  acme:\n    directory: https://x\n    email: a@b\n"))
	f.Add([]byte("interfaces: &a [e]\nse:\n  measure: *a\n"))
	f.Fuzz(func(t *testing.T, raw []byte) {
		c, err := ParseConfig(raw)
		if err != nil {
			return
		}
		if err := c.Validate(); err != nil {
			t.Fatalf("accepted, then invalid: %v", err)
		}
		d := c
		d.Defaults()
		if !reflect.DeepEqual(c, d) {
			t.Fatalf("defaults changed an accepted configuration:\n%+v\n%+v", c, d)
		}
		out, err := yaml.Marshal(&c)
		if err != nil {
			t.Fatalf("marshal %+v: %v", c, err)
		}
		back, err := ParseConfig(out)
		if err != nil {
			t.Fatalf("its own YAML refused:\n%s\n%v", out, err)
		}
		again, err := yaml.Marshal(&back)
		if err != nil || string(again) != string(out) {
			t.Fatalf("read back from\n%s\nas\n%s%v", out, again, err)
		}
	})
}
