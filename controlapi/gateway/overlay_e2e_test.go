package gateway_test

import (
	"errors"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/seed4c/moat/controlapi/state"
	"github.com/seed4c/moat/dataplane/overlay"
	"github.com/seed4c/moat/internal/demo"
	"github.com/seed4c/moat/internal/netns"
	"github.com/seed4c/moat/internal/underlay"
)

// TestPrivilegedGatewayOverlay runs `moat gateway` with its own (simulated) SE and the
// overlay enabled, a local backend host of tenant a, and a remote one reachable only
// through the overlay, each running `moat agent` with a simulated TPM; the remote
// host's agent joins the overlay (--overlay) and appraises the gateway with its own
// verifier. Tenant a's connections to the VIP are balanced over both; the underlay
// carries only WireGuard; a tampered remote host is evicted, its WireGuard peer
// removed, and it receives nothing afterwards.
func TestPrivilegedGatewayOverlay(t *testing.T) {
	netns.RequireRoot(t)
	bin := buildMoat(t)
	dir := t.TempDir()
	start := time.Now()
	s, err := demo.NewAttestedScene(demo.AttestedOptions{Binary: bin, Dir: dir, Instance: netns.UniqueName("gwov"), Backends: 1, Overlay: true})
	if err != nil {
		dumpLogs(t, dir)
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			dumpLogs(t, dir)
		}
		if err := s.Close(); err != nil {
			t.Errorf("close scene: %v", err)
		}
	})
	a, r := s.Topo.Tenants[0], s.Remote()
	local := a.Backends[0]
	built := time.Since(start)
	registering := time.Now()
	if err := s.Register(); err != nil {
		t.Fatal(err)
	}

	t.Run("admission and the link", func(t *testing.T) {
		for _, b := range []string{local.Name, r.Name} {
			if _, err := s.WaitState(a.Name, b, 30*time.Second, state.StateAdmitted); err != nil {
				t.Fatal(err)
			}
		}
		st, err := s.WaitLink(r.Name, true, 30*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("scene built in %v; backends admitted and the link up %v after registration began: %+v",
			built.Round(time.Millisecond), time.Since(registering).Round(time.Millisecond), st)
		if st.Endpoint != demo.RemoteUnderlay+":51820" {
			t.Fatalf("the gateway reaches the remote host at %q", st.Endpoint)
		}
	})

	t.Run("balanced over the local and the remote backend, only WireGuard on the underlay", func(t *testing.T) {
		capture, err := underlay.Start(r.Host, "wan")
		if err != nil {
			t.Fatal(err)
		}
		conns, err := s.Connect(a, 40)
		if err != nil {
			capture.Stop()
			t.Fatal(err)
		}
		defer demo.CloseAll(conns)
		// Full-size segments both ways over the overlay: the MSS is clamped.
		big := strings.Repeat(marker, 2000)
		for _, c := range conns {
			if got, err := c.Ask(big, 5*time.Second); err != nil || got != c.Backend {
				capture.Stop()
				t.Fatalf("a 64 kB exchange with %s: %q %v", c.Backend, got, err)
			}
		}
		frames := capture.Stop()
		sp := demo.Spread(conns)
		t.Logf("tenant a's connections: %v", sp)
		if len(sp) != 2 || sp[local.Name] == 0 || sp[r.Name] == 0 {
			t.Fatalf("spread %v: want both %s (local) and %s (through the overlay)", sp, local.Name, r.Name)
		}
		kinds, err := underlay.Verdict(frames, overlay.DefaultListenPort, []byte(marker))
		if err != nil {
			t.Fatalf("underlay capture (%d frames): %v", len(frames), err)
		}
		if kinds["transport-data"] == 0 {
			t.Fatalf("no WireGuard data on the underlay: %v", kinds)
		}
		t.Logf("underlay capture at the remote host: %d frames, only WireGuard and ARP: %v", len(frames), kinds)
	})

	t.Run("a tampered remote host is evicted and its peer removed", func(t *testing.T) {
		conns, err := s.Connect(a, 20)
		if err != nil {
			t.Fatal(err)
		}
		defer demo.CloseAll(conns)
		if err := os.WriteFile(s.AppFile(r.Name), []byte("application of tenant a, release 1, with a backdoor\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		changed := time.Now()
		st, err := s.WaitState(a.Name, r.Name, 10*time.Second, state.StateEvicted)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.WaitLink(r.Name, false, 5*time.Second); err != nil {
			t.Fatal(err)
		}
		var gs struct {
			Overlay struct {
				Stats overlay.Stats `json:"stats"`
			} `json:"overlay"`
		}
		if _, err := s.Call("GET", "/v1/status", nil, &gs); err != nil {
			t.Fatal(err)
		}
		t.Logf("evicted and its WireGuard peer removed %v after its file changed (agent interval 500 ms), %v after the result arrived: %s",
			time.Since(changed).Round(time.Millisecond), gs.Overlay.Stats.LastRemoval, st.Reason)
		rx0, err := demo.TUNPackets(r.Host)
		if err != nil {
			t.Fatal(err)
		}
		askAfterEviction(t, conns, r.Name)
		fresh, err := s.Connect(a, 20)
		if err != nil {
			t.Fatal(err)
		}
		defer demo.CloseAll(fresh)
		if sp := demo.Spread(fresh); sp[r.Name] != 0 {
			t.Fatalf("new connections still reach the evicted host: %v", sp)
		}
		// The gateway's kernel sends straight at the host's segment address: WireGuard
		// has no peer for it any more.
		if err := sendUDP(s.Topo.GW, "ov11", netip.MustParseAddrPort(demo.RemoteSegmentAddr+":9"), 20); err != nil {
			t.Fatal(err)
		}
		time.Sleep(300 * time.Millisecond)
		rx1, err := demo.TUNPackets(r.Host)
		if err != nil {
			t.Fatal(err)
		}
		if rx1 != rx0 {
			t.Fatalf("the evicted host's overlay device received %d packets after its eviction", rx1-rx0)
		}
	})
}

const marker = "MOAT-OVERLAY-PLAINTEXT-MARKER-42"

// askAfterEviction checks that the connections of an evicted backend get no answer
// and the others are undisturbed.
func askAfterEviction(t *testing.T, conns []*demo.Conn, evicted string) {
	t.Helper()
	for _, c := range conns {
		got, err := c.Ask("after-eviction", 2*time.Second)
		if c.Backend == evicted {
			if err == nil {
				t.Fatalf("a connection of the evicted host was answered by %s", got)
			}
		} else if err != nil || got != c.Backend {
			t.Fatalf("connection on %s disturbed by another host's eviction: %q %v", c.Backend, got, err)
		}
	}
}

// sendUDP sends n datagrams from h out of device dev (the kernel's own path, not the
// fast path's).
func sendUDP(h *netns.Host, dev string, dst netip.AddrPort, n int) error {
	return h.Do(func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		if err := unix.SetsockoptString(fd, unix.SOL_SOCKET, unix.SO_BINDTODEVICE, dev); err != nil {
			return err
		}
		sa := &unix.SockaddrInet4{Port: int(dst.Port()), Addr: dst.Addr().As4()}
		for range n {
			if err := unix.Sendto(fd, []byte(marker), 0, sa); err != nil && !errors.Is(err, unix.EHOSTUNREACH) && !errors.Is(err, unix.ENOKEY) {
				return err
			}
			time.Sleep(5 * time.Millisecond)
		}
		return nil
	})
}
