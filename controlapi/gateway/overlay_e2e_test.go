package gateway_test

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/seed4c/moat/controlapi/state"
	"github.com/seed4c/moat/dataplane/overlay"
	"github.com/seed4c/moat/internal/demo"
	"github.com/seed4c/moat/internal/netns"
	"github.com/seed4c/moat/internal/topology"
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
	cleanupScene(t, dir, s.Close)
	a, r := s.Topo.Tenants[0], s.Remote()
	local := a.Backends[0]
	built := time.Since(start)
	// The gateway is first given a wrong URL for the remote host's verifier: the host
	// is attested (the gateway admits it as a WireGuard peer) but cannot appraise the
	// gateway, so the link stays down, as it does for up to one agent interval in
	// every normal start, here long enough to be seen.
	r.VerifierURL = "https://" + demo.RemoteMgmt + ":9446" + overlay.VerifierPrefix
	registering := time.Now()
	// From the moment of registration, tenant a's client connects to the VIP again and
	// again: once any backend is admitted, every connection must be answered, also
	// while the remote host is attested and its link is not up.
	probe := startProbe(s, a)
	if err := s.Register(); err != nil {
		probe.stop()
		t.Fatal(err)
	}

	t.Run("admission waits for the link", func(t *testing.T) {
		defer probe.stop()
		if _, err := s.WaitState(a.Name, local.Name, 30*time.Second, state.StateAdmitted); err != nil {
			t.Fatal(err)
		}
		const why = "waiting for overlay link r: its verifier has not appraised this gateway yet"
		// The reconciler hears the host's result just before the overlay node does: the
		// first reason may still be that the peer is not configured.
		var st state.BackendStatus
		for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			st, err = s.BackendState(a.Name, r.Name)
			if err == nil && st.State == state.StateWaiting && strings.Contains(st.Reason, why) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("the attested remote backend without its link: %+v %v", st, err)
			}
		}
		if st.LastResult == nil || st.LastResult.Status != "affirming" {
			t.Fatalf("the attested remote backend without its link: %+v", st)
		}
		time.Sleep(2 * time.Second) // connections keep coming
		if st, err = s.BackendState(a.Name, r.Name); err != nil || st.State != state.StateWaiting {
			t.Fatalf("the remote backend without its link: %+v %v", st, err)
		}
		_, ps, err := s.OverlayPeer(r.Name)
		if err != nil || !ps.Configured || ps.LinkUp || ps.AppraisalError == "" {
			t.Fatalf("the peer without its link: %+v %v", ps, err)
		}
		t.Logf("attested, not admitted: %q; the peer: configured, link %q, the gateway's agent: %s", st.Reason, ps.Link, ps.AppraisalError)

		if err := s.UpdateOverlayPeer(r.Name, func(p *state.OverlayPeer) { p.Verifier = demo.RemoteVerifierURL }); err != nil {
			t.Fatal(err)
		}
		fixed := time.Now()
		if st, err = s.WaitState(a.Name, r.Name, 30*time.Second, state.StateAdmitted); err != nil {
			t.Fatal(err)
		}
		admitted := time.Since(fixed)
		ps, err = s.WaitLink(r.Name, true, 30*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("scene built in %v; the remote backend admitted %v after the gateway could attest to the host (%v after registration began): %s; link: %+v",
			built.Round(time.Millisecond), admitted.Round(time.Millisecond), time.Since(registering).Round(time.Millisecond), st.Reason, ps)
		if ps.Endpoint != demo.RemoteUnderlay+":51820" {
			t.Fatalf("the gateway reaches the remote host at %q", ps.Endpoint)
		}
		// Keep probing until the remote backend has answered a few connections.
		deadline := time.Now().Add(10 * time.Second)
		for probe.served(r.Name) < 5 && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		probe.stop()
		all, err := s.Transitions(a.Name, "")
		if err != nil {
			t.Fatal(err)
		}
		i := slices.IndexFunc(all, func(tr state.Transition) bool { return tr.To == state.StateAdmitted })
		if i < 0 {
			t.Fatal("no admission recorded")
		}
		if err := probe.verdict(t, all[i].Time, local.Name, r.Name); err != nil {
			t.Fatal(err)
		}
		var path []string
		for _, tr := range all {
			if tr.Backend == r.Name {
				path = append(path, string(tr.To)+" ("+tr.Reason+")")
			}
		}
		t.Logf("the remote backend's transitions: %s", strings.Join(path, " → "))
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

// probe starts a connection from a tenant's client to the VIP every probeEvery, each
// on its own (a black-holed one does not delay the next), and records each attempt.
type probe struct {
	halt chan struct{}
	done chan struct{}
	wg   sync.WaitGroup

	mu       sync.Mutex
	attempts []probeAttempt
}

type probeAttempt struct {
	start   time.Time
	backend string
	err     error
}

const (
	probeEvery = 20 * time.Millisecond
	// probeDial is below TCP's first SYN retransmission (1 s): a SYN the gateway
	// balanced into a black hole fails its attempt rather than being rescued by the
	// retransmission once the link is up.
	probeDial = 900 * time.Millisecond
)

func startProbe(s *demo.AttestedScene, tn *topology.Tenant) *probe {
	p := &probe{halt: make(chan struct{}), done: make(chan struct{})}
	vip := fmt.Sprintf("%s:%d", s.Topo.Opts.VIP, s.Topo.Opts.Port)
	go func() {
		defer close(p.done)
		defer p.wg.Wait()
		tick := time.NewTicker(probeEvery)
		defer tick.Stop()
		for {
			select {
			case <-p.halt:
				return
			case <-tick.C:
			}
			p.wg.Add(1)
			go func() {
				defer p.wg.Done()
				at := probeAttempt{start: time.Now()}
				c, err := topology.Dial(tn.Client, vip, probeDial)
				if err == nil {
					at.backend, err = c.Ask("probe", 2*time.Second)
					c.Close()
				}
				at.err = err
				p.mu.Lock()
				p.attempts = append(p.attempts, at)
				p.mu.Unlock()
			}()
		}
	}()
	return p
}

func (p *probe) stop() {
	select {
	case <-p.halt:
	default:
		close(p.halt)
	}
	<-p.done
}

// served counts the connections a backend answered.
func (p *probe) served(backend string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, a := range p.attempts {
		if a.err == nil && a.backend == backend {
			n++
		}
	}
	return n
}

// verdict: every attempt started after the first admission of a backend of the
// service (admitted at, as the gateway recorded it once the maps were written) was
// answered, and each of the backends answered some.
func (p *probe) verdict(t *testing.T, admitted time.Time, backends ...string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	slices.SortFunc(p.attempts, func(a, b probeAttempt) int { return a.start.Compare(b.start) })
	if len(p.attempts) == 0 {
		return errors.New("no connection attempted")
	}
	t0 := p.attempts[0].start
	spread := map[string]int{}
	firstBy := map[string]time.Duration{}
	var failed []string
	before := 0
	for _, a := range p.attempts {
		if a.start.Before(admitted) {
			before++
			continue
		}
		if a.err != nil {
			failed = append(failed, fmt.Sprintf("%v: %v", a.start.Sub(t0).Round(time.Millisecond), a.err))
			continue
		}
		if spread[a.backend] == 0 {
			firstBy[a.backend] = a.start.Sub(t0).Round(time.Millisecond)
		}
		spread[a.backend]++
	}
	t.Logf("connections from registration on: %d before the first admission (%v), then %d: %v, %d failed; first answered by each, since registration: %v",
		before, admitted.Sub(t0).Round(time.Millisecond), len(p.attempts)-before, spread, len(failed), firstBy)
	if len(failed) > 0 {
		return fmt.Errorf("%d connections failed once a backend was admitted (time since registration: error): %v", len(failed), failed)
	}
	for _, b := range backends {
		if spread[b] == 0 {
			return fmt.Errorf("no connection reached %s: %v", b, spread)
		}
	}
	return nil
}

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
