package overlay

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const testDigest = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"

// filledHostExample is HostExample with its placeholders filled in: a valid host file.
func filledHostExample() string {
	return strings.NewReplacer("<sha256 hex of the gateway's moat binary>", testDigest,
		"<sha256 hex of the gateway's EK, from moat ctl status>", testDigest).Replace(HostExample)
}

// TestHostConfig: the documented example decodes strictly and, its placeholders filled
// in, makes a node, a machine and a verifier policy that pins the gateway's EK;
// what a host cannot run with is refused.
func TestHostConfig(t *testing.T) {
	write := func(yaml string) string {
		p := filepath.Join(t.TempDir(), "overlay.yaml")
		if err := os.WriteFile(p, []byte(yaml), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	filled := filledHostExample()
	hc, err := LoadHostConfig(write(filled))
	if err != nil {
		t.Fatal(err)
	}
	cfg, m, pols, err := hc.parts("/var/lib/moat/agent")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.KeyFile != "/var/lib/moat/agent/overlay.key" || cfg.Keepalive != 25*time.Second || len(cfg.Peers) != 1 || cfg.Peers[0].Subject != "gw-1" ||
		len(m.Segments) != 1 || m.Segments[0].VNI != 11 || m.Segments[0].FastPath {
		t.Fatalf("node %+v, machine %+v", cfg, m)
	}
	if p := pols["gw-1"]; p == nil || !p.PinEKs || len(p.AllowedEKs) != 1 || len(p.References["/usr/local/bin/moat"]) != 1 {
		t.Fatalf("the gateway's policy: %+v", pols)
	}
	if _, err := LoadHostConfig(write(filled + "colour: red\n")); err == nil {
		t.Fatal("an unknown field was accepted")
	}
	for name, c := range map[string]struct{ from, to, want string }{
		"no EK":          {"allowed_eks: [" + testDigest + "]", "allowed_eks: []", "allowed_eks"},
		"no listen":      {`listen: "192.0.2.3:9445"`, `listen: ""`, "verifier.listen"},
		"gateway's end":  {"peers: [gw-1]", "peers: [gw-1]\n    fast_path: true", "fast_path"},
		"bad digest":     {"references: {/usr/local/bin/moat: [" + testDigest + "]}", "references: {/usr/local/bin/moat: [zz]}", "reference for"},
		"no keepalive":   {"keepalive: 25s", "keepalive: -1s", ""},
		"keepalive ms":   {"keepalive: 25s", "keepalive: 1500ms", "keepalive 1.5s"},
		"keepalive 1d":   {"keepalive: 25s", "keepalive: 24h", "keepalive 24h0m0s"},
		"explicit key":   {`key_file: ""`, "key_file: /etc/moat/wg.key", ""},
		"unknown peer":   {"peers: [gw-1]", "peers: [gw-9]", "not configured"},
		"no address":     {"address: 100.64.0.3/24", "address: 100.64.0.3", "no '/'"},
		"no references":  {"references: {/usr/local/bin/moat: [" + testDigest + "]}", "references: {}", "no reference values"},
		"policy not map": {"references: {/usr/local/bin/moat: [" + testDigest + "]}", "references: [x]", "cannot unmarshal"},
	} {
		hc, err := LoadHostConfig(write(strings.Replace(filled, c.from, c.to, 1)))
		if err == nil {
			_, _, _, err = hc.parts("/x")
		}
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%s: %v", name, err)
		case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
			t.Errorf("%s: %v, want an error mentioning %q", name, err, c.want)
		}
	}
}
