package gateway_test

import (
	"strings"
	"testing"
	"time"

	"github.com/seed4c/moat/controlapi/state"
	"github.com/seed4c/moat/dataplane/overlay"
	"github.com/seed4c/moat/internal/demo"
	"github.com/seed4c/moat/internal/netns"
	"github.com/seed4c/moat/internal/underlay"
)

// TestPrivilegedGatewaySites runs two `moat gateway` processes (two sites, each with
// its own simulated SE, its tenants and their attested backend hosts) that link over
// the WireGuard overlay through their daemons, each appraising the other with its own
// verifier (demo.TwoSites). Site 1's tenants a and b and site 2's tenants x and y use
// identical addresses; a and x share VNI 11, b and y VNI 12. Tenant traffic crosses
// between the sites keeping its tenant, the underlay carries only WireGuard, and a
// gateway whose measured state changes is removed by its peer.
func TestPrivilegedGatewaySites(t *testing.T) {
	netns.RequireRoot(t)
	bin := buildMoat(t)
	dir := t.TempDir()
	ts, err := demo.NewTwoSites(bin, dir)
	if err != nil {
		dumpLogs(t, dir)
		t.Fatal(err)
	}
	cleanupScene(t, dir, ts.Close)
	s1, s2 := ts.Scenes[0], ts.Scenes[1]
	registering := time.Now()
	if err := ts.Register(); err != nil {
		t.Fatal(err)
	}

	t.Run("mutual attestation through the daemons, the link up", func(t *testing.T) {
		for _, tn := range []string{"a", "b"} {
			for _, b := range []string{tn + "-1", demo.SiteBackend} {
				if _, err := s1.WaitState(tn, b, 30*time.Second, state.StateAdmitted); err != nil {
					t.Fatal(err)
				}
			}
		}
		for i, s := range ts.Scenes {
			peer := ts.Sites[1-i].Name
			st, err := s.WaitLink(peer, true, 30*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			if st.Endpoint != ts.Sites[1-i].Underlay.Addr().String()+":51820" || st.Appraisal != "affirming" {
				t.Fatalf("%s's link with %s: %+v", ts.Sites[i].Name, peer, st)
			}
		}
		st, _ := s1.BackendState("a", demo.SiteBackend)
		t.Logf("both gateways appraised each other, the link up and site 2 admitted at site 1 %v after registration began: %s",
			time.Since(registering).Round(time.Millisecond), st.Reason)
	})

	t.Run("tenants cross between sites keeping their identity, only WireGuard on the underlay", func(t *testing.T) {
		capture, err := underlay.Start(s2.Topo.GW, "wan")
		if err != nil {
			t.Fatal(err)
		}
		big := strings.Repeat(marker, 2000)
		want := map[string][2]string{"a": {"a-1", "x-1"}, "b": {"b-1", "y-1"}} // local, then site 2's of the same VNI
		for _, name := range []string{"a", "b"} {
			conns, err := s1.Connect(ts.Tenant(0, name), 40)
			if err != nil {
				capture.Stop()
				t.Fatal(err)
			}
			for _, c := range conns {
				if got, err := c.Ask(big, 5*time.Second); err != nil || got != c.Backend {
					demo.CloseAll(conns)
					capture.Stop()
					t.Fatalf("tenant %s: a 64 kB exchange with %s: %q %v", name, c.Backend, got, err)
				}
			}
			sp := demo.Spread(conns)
			demo.CloseAll(conns)
			t.Logf("site 1, tenant %s: %v", name, sp)
			if len(sp) != 2 || sp[want[name][0]] == 0 || sp[want[name][1]] == 0 {
				capture.Stop()
				t.Fatalf("tenant %s's connections %v: want both %v (its local backend, and site 2's backend of the same VNI only)", name, sp, want[name])
			}
		}
		frames := capture.Stop()
		kinds, err := underlay.Verdict(frames, overlay.DefaultListenPort, []byte(marker))
		if err != nil {
			t.Fatalf("underlay capture (%d frames): %v", len(frames), err)
		}
		if kinds["transport-data"] == 0 {
			t.Fatalf("no WireGuard data on the underlay: %v", kinds)
		}
		t.Logf("underlay capture at site 2: %d frames, only WireGuard and ARP: %v", len(frames), kinds)
	})

	t.Run("a gateway whose measured state changes is removed by its peer", func(t *testing.T) {
		conns, err := s1.Connect(ts.Tenant(0, "a"), 20)
		if err != nil {
			t.Fatal(err)
		}
		defer demo.CloseAll(conns)
		if err := ts.Tamper(1); err != nil {
			t.Fatal(err)
		}
		changed := time.Now()
		var reasons []string
		for _, tn := range []string{"a", "b"} {
			st, err := s1.WaitState(tn, demo.SiteBackend, 10*time.Second, state.StateEvicted)
			if err != nil {
				t.Fatal(err)
			}
			reasons = append(reasons, st.Reason)
		}
		evicted := time.Since(changed)
		if _, err := s1.WaitLink(ts.Sites[1].Name, false, 5*time.Second); err != nil {
			t.Fatal(err)
		}
		t.Logf("site 2 evicted at site 1 and its WireGuard peer removed %v after its measured file changed (agent interval 500 ms): %v",
			evicted.Round(time.Millisecond), reasons)
		if !strings.Contains(reasons[0], "reference-value") {
			t.Fatalf("eviction reason: %q", reasons[0])
		}
		for _, c := range conns {
			got, err := c.Ask("after-eviction", 2*time.Second)
			if c.Backend == "x-1" {
				if err == nil {
					t.Fatalf("a connection to the removed site was answered by %s", got)
				}
			} else if err != nil || got != c.Backend {
				t.Fatalf("a connection to the local backend disturbed by the site's removal: %q %v", got, err)
			}
		}
		fresh, err := s1.Connect(ts.Tenant(0, "a"), 20)
		if err != nil {
			t.Fatal(err)
		}
		defer demo.CloseAll(fresh)
		if sp := demo.Spread(fresh); sp["x-1"] != 0 || sp["a-1"] != 20 {
			t.Fatalf("new connections after the site's removal: %v", sp)
		}
	})
}
