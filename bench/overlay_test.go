package bench

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/seed4c/moat/internal/netns"
)

// TestPrivilegedOverlayPhase runs the overlay phase alone with the smoke profile: one
// throughput record on each of moat and plain, with CPU, the offload evidence on moat's,
// the ratio and its target, and the pair's namespaces gone afterwards. It asserts no
// speed beyond the ratio being sane.
func TestPrivilegedOverlayPhase(t *testing.T) {
	netns.RequireRoot(t)
	if _, err := exec.LookPath("iperf3"); err != nil {
		t.Skip("iperf3 not installed (.ci/deps installs it)")
	}
	// The first handshake may take up to 30 s (BenchPair.WaitOverlay), the scene some
	// more.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	rep, err := Run(ctx, Options{Profile: Profiles["smoke"], Systems: []string{SysMoat, SysPlain}, Scenarios: []string{ScOverlay},
		Instance: netns.UniqueName("bov"), Command: t.Name()})
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range rep.Errors {
		t.Errorf("run error: %s", e)
	}
	if len(rep.Records) != 2 {
		t.Errorf("%d records, want 2 (moat and plain)", len(rep.Records))
	}
	for _, system := range []string{SysMoat, SysPlain} {
		r := rep.Find(ScOverlay, system, 0)
		if r == nil {
			t.Errorf("no %s record for %s", system, ScOverlay)
			continue
		}
		if r.Kind != KindThroughput || r.Gbps <= 0 || r.CPU <= 0 || r.GbpsPerCore <= 0 {
			t.Errorf("%s: no measurement: kind %s, %+v", system, r.Kind, r.Sample)
		}
		t.Logf("%s: %.2f Gbit/s, %.2f busy cores, %.2f Gbit/s per core; notes: %s", system, r.Gbps, r.CPU, r.GbpsPerCore, strings.Join(r.Notes, " | "))
	}
	if m := rep.Find(ScOverlay, SysMoat, 0); m != nil {
		notes := strings.Join(m.Notes, "\n")
		for _, want := range []string{"kB per TUN read", "kB per TUN write", "kB per UDP packet"} {
			if !strings.Contains(notes, want) {
				t.Errorf("moat notes carry no offload evidence (%q): %q", want, m.Notes)
			}
		}
		if n := strings.Count(notes, "kB per TUN read"); n > 1 {
			t.Errorf("offload evidence appended %d times", n)
		}
	}
	ratio, ok := rep.RatiosAbsolute[SysPlain][ScOverlay]
	if !ok || ratio <= 0 || ratio >= 2 {
		t.Errorf("overlay / plain ratio %v (present %v), want in (0, 2)", ratio, ok)
	}
	t.Logf("overlay / plain veth: %.2f", ratio)
	found := false
	for _, tg := range rep.Targets {
		found = found || tg.Name == "overlay / plain veth TCP throughput"
	}
	if !found {
		t.Errorf("targets %+v: no overlay target", rep.Targets)
	}
	pair := 0
	for _, n := range rep.Namespaces {
		if strings.HasPrefix(n, "moatov") {
			pair++
		}
	}
	if pair != 2 {
		t.Errorf("namespaces %v: want the overlay pair's two among them", rep.Namespaces)
	}
	for _, n := range rep.Namespaces {
		if _, err := os.Stat(filepath.Join("/var/run/netns", n)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("namespace %s left behind", n)
		}
	}
}
