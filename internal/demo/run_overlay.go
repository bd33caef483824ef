package demo

import (
	"fmt"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/seed4c/moat/controlapi/state"
	"github.com/seed4c/moat/dataplane/overlay"
	"github.com/seed4c/moat/internal/underlay"
)

// overlayMarker is plaintext the demo's clients send to the remote host: the capture
// on the underlay must never contain it.
const overlayMarker = "MOAT-DEMO-TENANT-PLAINTEXT"

// stepOverlay shows the remote backend host: the link the two attestations opened,
// tenant a's connections balanced over local and remote backends with only WireGuard
// on the underlay, and the remote host evicted — its WireGuard peer removed — once its
// measured state changes.
func (s *AttestedScene) stepOverlay(p func(string, ...any), n int) error {
	r := s.Remote()
	if r == nil {
		return fmt.Errorf("the scene has no remote host")
	}
	ps, err := s.WaitLink(r.Name, true, 10*time.Second)
	if err != nil {
		return err
	}
	p("  peer %s at %s: configured by the gateway from its own appraisal of %s, the gateway appraised by %s's verifier (%s), handshake %v ago",
		r.Name, ps.Endpoint, r.Name, r.Name, ps.Appraisal, time.Since(ps.LastHandshake).Round(time.Millisecond))
	p("  keys: WireGuard's private key sealed by each TPM to its measured state, public key bound into every quote; PSK from an ECDH inside both TPMs")

	capture, err := underlay.Start(r.Host, "wan")
	if err != nil {
		return err
	}
	conns, err := s.Connect(r.Tenant, n)
	if err != nil {
		capture.Stop()
		return err
	}
	defer CloseAll(conns)
	payload := strings.Repeat(overlayMarker, 600) // ~16 kB: full-size segments both ways
	for _, c := range conns {
		if got, err := c.Ask(payload, AskTimeout); err != nil || got != c.Backend {
			capture.Stop()
			return fmt.Errorf("a 16 kB exchange with %s: %q %v", c.Backend, got, err)
		}
	}
	frames := capture.Stop()
	p("  %d connections of tenant %s, 16 kB each way: %s", n, r.Tenant.Name, formatSpread(Spread(conns)))
	kinds, err := underlay.Verdict(frames, overlay.DefaultListenPort, []byte(overlayMarker))
	if err != nil {
		return fmt.Errorf("underlay capture at %s (%d frames): %w", r.Name, len(frames), err)
	}
	p("  capture on %s's underlay link: %d frames, %s; no tenant plaintext", r.Name, len(frames), formatKinds(kinds))

	if err := os.WriteFile(s.AppFile(r.Name), []byte("application of tenant a, release 1, with a backdoor\n"), 0o644); err != nil {
		return err
	}
	changed := time.Now()
	st, err := s.WaitState(r.Tenant.Name, r.Name, 10*time.Second, state.StateEvicted)
	if err != nil {
		return err
	}
	evicted := time.Since(changed)
	if _, err := s.WaitLink(r.Name, false, 5*time.Second); err != nil {
		return err
	}
	p("  %s's application file changed: evicted %v later, its WireGuard peer removed %v later",
		r.Name, evicted.Round(time.Millisecond), time.Since(changed).Round(time.Millisecond))
	p("    reason: %s", shorten(st.Reason, 110))
	cut := 0
	for _, c := range conns {
		if c.Backend != r.Name {
			continue
		}
		if got, err := c.Ask("after", time.Second); err == nil {
			return fmt.Errorf("a connection of the evicted remote host was answered by %s", got)
		}
		cut++
	}
	fresh, err := s.Connect(r.Tenant, n)
	if err != nil {
		return err
	}
	CloseAll(fresh)
	p("  its %d connections get no answer; new connections: %s", cut, formatSpread(Spread(fresh)))
	if Spread(fresh)[r.Name] != 0 {
		return fmt.Errorf("new connections still reach the evicted remote host")
	}
	return nil
}

func formatKinds(kinds map[string]int) string {
	var parts []string
	for k, v := range kinds {
		parts = append(parts, fmt.Sprintf("%d %s", v, k))
	}
	sort.Strings(parts)
	return "only WireGuard and ARP (" + strings.Join(parts, ", ") + ")"
}
