package overlay

import (
	"strings"
	"testing"
)

// FuzzHostConfig feeds a host's overlay configuration arbitrary YAML. Whatever decodes
// either is refused with a reason or makes a node configuration the node itself
// accepts, with a keepalive WireGuard can be given.
func FuzzHostConfig(f *testing.F) {
	filled := filledHostExample()
	f.Add([]byte(filled))
	f.Add([]byte(strings.Replace(filled, "keepalive: 25s", "keepalive: -3s", 1)))
	f.Add([]byte(strings.Replace(filled, "keepalive: 25s", "keepalive: 1500ms", 1)))
	f.Add([]byte("address: 100.64.0.3/24\nverifier: {listen: ':1'}\n"))
	f.Fuzz(func(t *testing.T, raw []byte) {
		var hc HostConfig
		if decodeStrictBytes(raw, "fuzz", &hc) != nil {
			return
		}
		cfg, m, pols, err := hc.parts("/var/lib/moat/agent")
		if err != nil {
			return
		}
		if err := CheckKeepalive(cfg.Keepalive); err != nil {
			t.Fatalf("accepted with keepalive %v", err)
		}
		if err := cfg.setDefaults(); err != nil {
			t.Fatalf("accepted a node configuration the node refuses: %v", err)
		}
		if _, err := m.validate(cfg); err != nil {
			t.Fatalf("accepted a machine the node refuses: %v", err)
		}
		for _, p := range cfg.Peers {
			if pols[p.Subject] == nil || !pols[p.Subject].PinEKs {
				t.Fatalf("peer %s has no policy pinning its EK: %+v", p.Subject, pols)
			}
		}
	})
}
