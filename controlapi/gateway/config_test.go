package gateway

import (
	"strings"
	"testing"
	"time"

	"github.com/seed4c/moat/controlapi/certs"
)

func TestConfigDefaultsAndExample(t *testing.T) {
	c, err := ParseConfig([]byte("interfaces: [eth1]\n"))
	if err != nil {
		t.Fatal(err)
	}
	if c.Instance != "moat" || c.StateDir != "/var/lib/moat" || c.API.Listen != ":9443" || c.Verifier.Listen != ":9444" ||
		c.Verifier.ResultTTL != 6*time.Second || c.TLS.Mode != certs.ModeInternal || len(c.TLS.Names) == 0 ||
		c.Metrics.Listen != "127.0.0.1:9464" || c.Dataplane.MaxFlows != 262144 || c.Log.Level != "info" {
		t.Fatalf("defaults: %+v", c)
	}
	// The documented example is itself a valid configuration.
	if _, err := ParseConfig([]byte(Example)); err != nil {
		t.Fatalf("the example configuration: %v", err)
	}
}

func TestConfigRefused(t *testing.T) {
	for name, c := range map[string]struct{ yaml, want string }{
		"no interfaces":      {"instance: x\n", "interfaces"},
		"unknown field":      {"interfaces: [e]\nlisten: x\n", "field listen not found"},
		"typo in a section":  {"interfaces: [e]\napi:\n  lsten: x\n", "field lsten not found"},
		"bad duration":       {"interfaces: [e]\nverifier:\n  result_ttl: soon\n", "time.Duration"},
		"short ttl":          {"interfaces: [e]\nverifier:\n  result_ttl: 10ms\n", "result_ttl"},
		"tls mode":           {"interfaces: [e]\ntls:\n  mode: selfsigned\n", "tls.mode"},
		"acme without dir":   {"interfaces: [e]\ntls:\n  mode: acme\n", "directory and email"},
		"acme without names": {"interfaces: [e]\ntls:\n  mode: acme\n  acme:\n    directory: https://x\n    email: a@b\n", "tls.names"},
		"log level":          {"interfaces: [e]\nlog:\n  level: loud\n", "log.level"},
		"challenge port":     {"interfaces: [e]\ntls:\n  mode: acme\n  names: [g]\n  acme:\n    directory: https://x\n    email: a@b\n    challenge_port: -443\n", "challenge_port"},
		"keepalive fraction": {"interfaces: [e]\nse:\n  kind: device\noverlay:\n  enabled: true\n  address: 100.64.0.1/24\n  keepalive: 500ms\n", "overlay.keepalive 500ms"},
		"keepalive too long": {"interfaces: [e]\nse:\n  kind: device\noverlay:\n  enabled: true\n  address: 100.64.0.1/24\n  keepalive: 20h\n", "overlay.keepalive 20h"},
		"twice":              {"interfaces: [e, e]\n", "twice"},
		"not yaml":           {"interfaces: [e\n", "decode"},
	} {
		_, err := ParseConfig([]byte(c.yaml))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v (want an error mentioning %q)", name, err, c.want)
		}
	}
}

func TestHostServicesListen(t *testing.T) {
	if _, err := hostServices([]string{"lo"}, "nonsense"); err == nil {
		t.Error("a listen address without a port was accepted")
	}
	hs, err := hostServices([]string{"lo"}, ":9444")
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range hs {
		if h.Port != 9444 || h.Proto != 6 || !h.Addr.Is4() {
			t.Errorf("host service %+v", h)
		}
	}
	if hs, _ := hostServices([]string{"lo"}, "192.0.2.1:9444"); len(hs) != 0 {
		t.Errorf("a listen address on no attached interface opened %v", hs)
	}
}

// TestStartFailsCleanly: a gateway that cannot start says why and releases what it
// took (no panic in the cleanup).
func TestStartFailsCleanly(t *testing.T) {
	cfg, err := ParseConfig([]byte("interfaces: [no-such-interface-x]\nstate_dir: " + t.TempDir() + "\napi:\n  listen: 127.0.0.1:0\nverifier:\n  listen: 127.0.0.1:0\nmetrics:\n  listen: \"off\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	g, err := Start(t.Context(), cfg, nil)
	if err == nil {
		g.Shutdown()
		t.Fatal("started with an interface that does not exist")
	}
	if !strings.Contains(err.Error(), "no-such-interface-x") {
		t.Fatalf("error does not name the interface: %v", err)
	}
}
