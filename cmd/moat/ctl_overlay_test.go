package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/seed4c/moat/controlapi/client"
)

// TestCtlOverlayPeer: a tenant gets an overlay segment, a backend host becomes its
// overlay peer, is read back with its link's status, changed, refused when it names a
// tenant without a segment, and deleted; tenant admins cannot see peers at all.
func TestCtlOverlayPeer(t *testing.T) {
	e := newCtlEnv(t)
	e.ok("operator", "tenant", "update", "a", "--overlay-vni", "11", "--overlay-address", "10.9.0.1/24")
	out := e.ok("operator", "overlay-peer", "create", "host-r", "--subject", "a/r", "--policy", "app", "--address", "100.64.0.3",
		"--endpoint", "192.0.2.3:51820", "--verifier", "https://10.255.0.20:9445/attest", "--tenants", "a")
	rows := lines(out)
	if len(rows) != 2 || strings.Join(rows[0], "|") != "NAME|SUBJECT|ADDRESS|ENDPOINT|TENANTS|CONFIGURED|LAST HANDSHAKE|APPRAISES US|VERSION" ||
		strings.Join(rows[1][:5], "|") != "host-r|a/r|100.64.0.3|192.0.2.3:51820|a" || rows[1][len(rows[1])-2] != "affirming" {
		t.Fatalf("created peer:\n%s", out)
	}
	// A file saved by get is written back: the status it shows is not.
	file := filepath.Join(t.TempDir(), "peer.yaml")
	if err := os.WriteFile(file, []byte(e.ok("operator", "overlay-peer", "get", "host-r", "-o", "yaml")), 0o644); err != nil {
		t.Fatal(err)
	}
	e.ok("operator", "overlay-peer", "update", "host-r", "-f", file, "--endpoint", "")
	var v client.OverlayPeerView
	if err := json.Unmarshal([]byte(e.ok("auditor", "overlay-peer", "get", "host-r", "-o", "json")), &v); err != nil ||
		v.Version != 2 || v.Endpoint.IsValid() || v.Tenants[0] != "a" || !v.Status.Configured {
		t.Fatalf("peer: %+v %v", v, err)
	}
	if msg := e.fails("operator", "overlay-peer", "update", "host-r", "--tenants", "a,b"); !strings.Contains(msg, "tenant b has no overlay segment") {
		t.Fatalf("a tenant without a segment: %s", msg)
	}
	if msg := e.fails("admin-a", "overlay-peer", "list"); !strings.HasPrefix(msg, "403 Forbidden") {
		t.Fatalf("tenant admin listed peers: %s", msg)
	}
	if msg := e.fails("operator", "tenant", "update", "a", "--overlay-vni", "0"); !strings.Contains(msg, "tenant a has no overlay segment") {
		t.Fatalf("segment removed under a peer: %s", msg)
	}
	e.ok("operator", "overlay-peer", "delete", "host-r")
	e.ok("operator", "tenant", "update", "a", "--overlay-vni", "0")
	if out := e.ok("operator", "overlay-peer", "list"); len(lines(out)) != 1 {
		t.Fatalf("peers left:\n%s", out)
	}
}
