package gateway_test

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/seed4c/moat/controlapi/state"
	"github.com/seed4c/moat/internal/demo"
	"github.com/seed4c/moat/internal/netns"
	"github.com/seed4c/moat/internal/topology"
)

// buildMoat compiles the moat binary the scene runs as gateway and agents.
func buildMoat(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "moat")
	out, err := exec.Command("go", "build", "-o", bin, "github.com/seed4c/moat/cmd/moat").CombinedOutput()
	if err != nil {
		t.Fatalf("build moat: %v\n%s", err, out)
	}
	return bin
}

// dumpLogs shows the daemons' logs of a failed test.
// cleanupScene closes a scene when the test ends, dumping its logs first if the test
// failed.
func cleanupScene(t *testing.T, dir string, close func() error) {
	t.Cleanup(func() {
		if t.Failed() {
			dumpLogs(t, dir)
		}
		if err := close(); err != nil {
			t.Errorf("close scene: %v", err)
		}
	})
}

func dumpLogs(t *testing.T, dir string) {
	filepath.Walk(dir, func(p string, info os.FileInfo, err error) error {
		if err == nil && strings.HasSuffix(p, ".log") {
			raw, _ := os.ReadFile(p)
			if len(raw) > 6000 {
				raw = raw[len(raw)-6000:]
			}
			t.Logf("==== %s\n%s", p, raw)
		}
		return nil
	})
}

func spreadOf(conns []*demo.Conn) map[string]int { return demo.Spread(conns) }

// TestPrivilegedGatewayEndToEnd runs `moat gateway` and one `moat agent` per backend
// host (each with its own simulated TPM) in network namespaces: backends reach the
// data path only once attested; a host whose application was tampered with is never
// admitted and never receives a packet; a host whose application changes mid-run is
// evicted and receives nothing afterwards; the daemon survives kill -9 without
// breaking a connection.
func TestPrivilegedGatewayEndToEnd(t *testing.T) {
	netns.RequireRoot(t)
	bin := buildMoat(t)
	dir := t.TempDir()
	s, err := demo.NewAttestedScene(demo.AttestedOptions{Binary: bin, Dir: dir, Instance: netns.UniqueName("gw"), Backends: 3,
		Tampered: demo.LastOfFirstTenant})
	if err != nil {
		dumpLogs(t, dir)
		t.Fatal(err)
	}
	cleanupScene(t, dir, s.Close)
	a, b := s.Topo.Tenants[0], s.Topo.Tenants[1]
	tampered, changing := demo.LastOfFirstTenant(s.Topo)[0], a.Backends[1]
	start := time.Now()
	if err := s.Register(); err != nil {
		t.Fatal(err)
	}

	t.Run("admission", func(t *testing.T) {
		for _, tn := range s.Topo.Tenants {
			for _, bk := range tn.Backends {
				want := state.StateAdmitted
				if bk == tampered {
					want = state.StateRejected
				}
				st, err := s.WaitState(tn.Name, bk.Name, 30*time.Second, want)
				if err != nil {
					t.Fatal(err)
				}
				if bk == tampered && !strings.Contains(st.Reason, "reference-value") {
					t.Fatalf("tampered host rejected for %q, not its application's digest", st.Reason)
				}
			}
		}
		t.Logf("every host attested and decided %v after registration", time.Since(start).Round(time.Millisecond))
		watch := watchTCP(t, tampered.Host, 8080)
		connsA, err := s.Connect(a, 40)
		if err != nil {
			t.Fatal(err)
		}
		defer demo.CloseAll(connsA)
		connsB, err := s.Connect(b, 30)
		if err != nil {
			t.Fatal(err)
		}
		defer demo.CloseAll(connsB)
		sa, sb := spreadOf(connsA), spreadOf(connsB)
		t.Logf("tenant a: %v, tenant b: %v", sa, sb)
		if len(sa) != 2 || sa[tampered.Name] != 0 || len(sb) != 3 {
			t.Fatalf("spread a %v (want a-1 and a-2 only), b %v (want all three)", sa, sb)
		}
		if n := tampered.Server.Accepted(); n != 0 {
			t.Fatalf("the tampered host accepted %d connections", n)
		}
		if n := watch(); n != 0 {
			t.Fatalf("the tampered host received %d TCP segments to its service", n)
		}
	})

	t.Run("eviction", func(t *testing.T) {
		conns, err := s.Connect(a, 40)
		if err != nil {
			t.Fatal(err)
		}
		defer demo.CloseAll(conns)
		if err := os.WriteFile(s.AppFile(changing.Name), []byte("application of tenant a, release 1, patched in place\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		changed := time.Now()
		st, err := s.WaitState(a.Name, changing.Name, 10*time.Second, state.StateEvicted)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("evicted %v after its file changed (agent interval 500 ms): %s", time.Since(changed).Round(time.Millisecond), st.Reason)
		watch := watchTCP(t, changing.Host, 8080)
		linesBefore := changing.Server.Lines()
		askAfterEviction(t, conns, changing.Name)
		fresh, err := s.Connect(a, 20)
		if err != nil {
			t.Fatal(err)
		}
		defer demo.CloseAll(fresh)
		if sp := spreadOf(fresh); len(sp) != 1 || sp[a.Backends[0].Name] != 20 {
			t.Fatalf("new connections after the eviction: %v", sp)
		}
		if n := watch(); n != 0 {
			t.Fatalf("the evicted host received %d TCP segments to its service after the eviction", n)
		}
		if n := changing.Server.Lines() - linesBefore; n != 0 {
			t.Fatalf("the evicted host answered %d requests after the eviction", n)
		}
		// Putting the original file back does not wash the host: its PCR and log keep
		// the foreign measurement until a reboot, so it stays out.
		if err := os.WriteFile(s.AppFile(changing.Name), []byte("application of tenant a, release 1\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		time.Sleep(1500 * time.Millisecond) // three agent rounds
		if st, err := s.BackendState(a.Name, changing.Name); err != nil || st.State != state.StateEvicted {
			t.Fatalf("host re-admitted after its file was restored, with the foreign measurement still in its log: %+v %v", st, err)
		}
	})

	t.Run("expiry", func(t *testing.T) {
		// An agent that stops attesting (frozen host, cut link) is evicted when its last
		// result expires, and admitted again by its next success.
		victim := b.Backends[0]
		agent := s.Agent(victim.Name)
		if err := agent.Process.Signal(syscall.SIGSTOP); err != nil {
			t.Fatal(err)
		}
		stopped := time.Now()
		st, err := s.WaitState(b.Name, victim.Name, 15*time.Second, state.StateEvicted)
		agent.Process.Signal(syscall.SIGCONT)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(st.Reason, "expired") {
			t.Fatalf("evicted for %q, not expiry", st.Reason)
		}
		t.Logf("agent frozen: evicted %v later (result lifetime 6 s): %s", time.Since(stopped).Round(time.Millisecond), st.Reason)
		if _, err := s.WaitState(b.Name, victim.Name, 10*time.Second, state.StateAdmitted); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("kill9", func(t *testing.T) {
		conns := append(mustConnect(t, s, a, 10), mustConnect(t, s, b, 20)...)
		defer demo.CloseAll(conns)
		if err := s.KillGateway(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		askAll(t, conns, "daemon dead")
		restart := time.Now()
		if err := s.StartGateway(); err != nil {
			t.Fatal(err)
		}
		t.Logf("gateway back in %v", time.Since(restart).Round(time.Millisecond))
		askAll(t, conns, "daemon restarted")
		for _, tn := range []*topology.Tenant{a, b} {
			for _, bk := range tn.Backends {
				if bk == tampered || bk == changing {
					continue
				}
				if st, err := s.BackendState(tn.Name, bk.Name); err != nil || st.State != state.StateAdmitted {
					t.Fatalf("%s after restart: %+v %v", bk.Name, st, err)
				}
			}
		}
		time.Sleep(2 * time.Second) // several agent rounds against the new process
		askAll(t, conns, "after new rounds")
		if sp := spreadOf(mustConnect(t, s, b, 30)); len(sp) != 3 {
			t.Fatalf("new connections after restart: %v", sp)
		}
	})
}

func mustConnect(t *testing.T, s *demo.AttestedScene, tn *topology.Tenant, n int) []*demo.Conn {
	t.Helper()
	c, err := s.Connect(tn, n)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func askAll(t *testing.T, conns []*demo.Conn, msg string) {
	t.Helper()
	for _, c := range conns {
		if got, err := c.Ask(strings.ReplaceAll(msg, " ", "-"), 3*time.Second); err != nil || got != c.Backend {
			t.Fatalf("%s: %s connection on %s: %q %v", msg, c.Tenant, c.Backend, got, err)
		}
	}
}

// watchTCP counts TCP segments to port arriving at a host's eth0 until the returned
// function is called.
func watchTCP(t *testing.T, h *netns.Host, port uint16) func() int {
	t.Helper()
	rs, err := h.OpenRaw("eth0")
	if err != nil {
		t.Fatal(err)
	}
	rs.SetReadTimeout(50 * time.Millisecond)
	var (
		mu   sync.Mutex
		n    int
		stop = make(chan struct{})
		done = make(chan struct{})
	)
	go func() {
		defer close(done)
		buf := make([]byte, 65536)
		p := []byte{byte(port >> 8), byte(port)}
		for {
			select {
			case <-stop:
				return
			default:
			}
			k, err := rs.Recv(buf)
			// IPv4 (ethertype at 12), TCP (protocol at 23), destination port at 36 with a
			// 20-byte IP header.
			if err == nil && k >= 38 && buf[12] == 0x08 && buf[13] == 0 && buf[23] == 6 && bytes.Equal(buf[36:38], p) {
				mu.Lock()
				n++
				mu.Unlock()
			}
		}
	}()
	return func() int {
		close(stop)
		<-done
		rs.Close()
		mu.Lock()
		defer mu.Unlock()
		return n
	}
}
