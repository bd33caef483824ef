package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/seed4c/moat/dataplane"
	"github.com/seed4c/moat/internal/netns"
)

// TestPrivilegedSmoke runs the smoke profile end to end: every topology built and
// removed, every scenario on every system measured once (HAProxy when installed: the
// harness installs it itself outside tests; the bounds in their scenarios only), each
// measurement non-zero and sane, no isolation leak, the targets' bounds filled in, and
// nothing left behind. It asserts no speed.
func TestPrivilegedSmoke(t *testing.T) {
	netns.RequireRoot(t)
	systems := []string{SysMoat, SysPlain, SysXDPDrop, SysPlainCT, SysNft}
	if _, err := exec.LookPath("haproxy"); err == nil {
		systems = append(systems, SysHAProxy)
	} else {
		t.Log("haproxy not installed: HAProxy baseline not exercised")
	}
	instance := netns.UniqueName("bsmoke")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var progress bytes.Buffer
	rep, err := Run(ctx, Options{Profile: Profiles["smoke"], Systems: systems, Instance: instance, Command: t.Name(), Progress: &progress})
	if err != nil {
		t.Fatal(err)
	}
	// The progress bar counts exactly the steps it announced.
	steps := regexp.MustCompile(`\] +(\d+)/(\d+) `).FindAllStringSubmatch(progress.String(), -1)
	if len(steps) == 0 {
		t.Errorf("no progress drawn: %q", progress.String())
	} else if last := steps[len(steps)-1]; last[1] != last[2] {
		t.Errorf("progress ended at %s/%s steps", last[1], last[2])
	}
	for _, e := range rep.Errors {
		t.Errorf("run error: %s", e)
	}
	want := map[string]bool{}
	for _, s := range systems {
		for _, sc := range Profiles["smoke"].packetScenarios() {
			if measures(s, sc) {
				want[s+" "+sc.name] = true
			}
		}
		if s != SysHAProxy && s != SysXDPDrop { // plain_ct bounds the sweep too
			want[s+" "+ScEstablishedSweep] = true
		}
		for _, sc := range tcpScenarios(s) {
			want[s+" "+sc] = true
		}
	}
	for _, s := range []string{SysMoat, SysNft} {
		want[s+" "+ScAdmission], want[s+" "+ScEviction] = true, true
	}
	for _, s := range []string{SysMoat, SysPlain} {
		want[s+" "+ScVerifications] = true
		if _, err := exec.LookPath("iperf3"); err == nil {
			want[s+" "+ScOverlay] = true
		}
	}
	for i := range rep.Records {
		r := &rep.Records[i]
		if !want[r.System+" "+r.Scenario] {
			t.Errorf("unexpected record %s %s", r.System, r.Scenario)
		}
		delete(want, r.System+" "+r.Scenario)
		if r.Primary() <= 0 || r.Absolute() <= 0 || (r.CPU <= 0) != (r.Kind == KindLatency) {
			t.Errorf("%s %s: no measurement: %+v", r.System, r.Scenario, r.Sample)
		}
		// The overlay's two ends share the machine's cores; everything else has one.
		if cores := map[bool]float64{true: float64(runtime.NumCPU()), false: 1}[r.Kind == KindThroughput]; r.CPU > cores*1.05 {
			t.Errorf("%s %s: system under test used %.2f cores of its %.0f", r.System, r.Scenario, r.CPU, cores)
		}
		if r.Leaked > 0 {
			t.Errorf("%s %s: %d frames crossed an isolation boundary", r.System, r.Scenario, r.Leaked)
		}
		if r.Kind == KindPackets && r.PPS > r.OfferedPPS*1.01 {
			t.Errorf("%s %s: handled %.0f/s of %.0f/s offered", r.System, r.Scenario, r.PPS, r.OfferedPPS)
		}
		// Every frame sent is accounted for, on every system: what the ledger does
		// not place is only the namespaces' own chatter.
		if r.Kind == KindPackets {
			l := r.Frames
			if l == nil {
				t.Errorf("%s %s: no frame ledger", r.System, r.Scenario)
				continue
			}
			if chatter := int64(l.Sent/100) + 256; l.Rest() < -chatter || l.Rest() > chatter {
				t.Errorf("%s %s: %d frames unaccounted for: %+v", r.System, r.Scenario, l.Rest(), *l)
			}
		}
		// moat refuses each isolation probe by the rule meant for it: another tenant's
		// address is no service of the sender's tenant, an interface attached to no
		// tenant has none. (A few frames of the namespaces' own chatter may mix in.)
		if want := map[string]string{ScIsolationCross: "drop_no_service", ScIsolationUnknown: "drop_no_tenant"}[r.Scenario]; r.System == SysMoat && want != "" {
			var all uint64
			for _, n := range r.DropReasons {
				all += n
			}
			if all == 0 || float64(r.DropReasons[want]) < 0.99*float64(all) {
				t.Errorf("%s %s: drops by reason %v, want nearly all %s", r.System, r.Scenario, r.DropReasons, want)
			}
		}
	}
	for k := range want {
		t.Errorf("no record for %s", k)
	}
	// The XDP systems' programs are timed on every packet scenario; their run time is
	// a real duration (not the clock's resolution) and less than a busy core.
	timed := map[string]int{}
	for _, pt := range rep.ProgramTimes {
		timed[pt.System]++
		if pt.Runs == 0 || pt.NsPerRun < 10 || pt.NsPerRun > 1e6 {
			t.Errorf("%s %s: program time %.0f ns over %d runs", pt.System, pt.Scenario, pt.NsPerRun, pt.Runs)
		}
	}
	for _, s := range []string{SysMoat, SysPlain} {
		if n := len(Profiles["smoke"].packetScenarios()); timed[s] != n {
			t.Errorf("%s: %d program times, want one per packet scenario (%d)", s, timed[s], n)
		}
	}
	if timed[SysXDPDrop] != 2 || timed[SysPlainCT] != 4 {
		t.Errorf("bounds timed %d and %d times, want 2 (the isolation scenarios) and 4 (the forwarding ones)", timed[SysXDPDrop], timed[SysPlainCT])
	}
	if timed[SysNft] != 0 {
		t.Errorf("nftables has %d program times: it is no XDP system", timed[SysNft])
	}
	if len(rep.Namespaces) == 0 {
		t.Error("report lists no namespaces")
	}
	var phases []string
	var phaseTime float64
	for _, ph := range rep.Phases {
		phases = append(phases, ph.Name)
		phaseTime += ph.Seconds
	}
	if fmt.Sprint(phases) != "[packets tcp admission verifications overlay]" || phaseTime <= 0 || phaseTime > rep.Seconds {
		t.Errorf("phases %v take %.1f s of the run's %.1f s", phases, phaseTime, rep.Seconds)
	}
	for _, n := range rep.Namespaces {
		if _, err := os.Stat(filepath.Join("/var/run/netns", n)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("namespace %s left behind", n)
		}
	}
	if _, err := os.Stat(dataplane.DefaultOptions(instance).PinDir()); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("pins %s left behind", dataplane.DefaultOptions(instance).PinDir())
	}
	rep.ComputeRatios()
	if len(rep.Ratios[SysNft]) == 0 || len(rep.Ratios[SysPlain]) == 0 {
		t.Errorf("ratios %v: want nftables and plain", rep.Ratios)
	}
	rep.CheckTargets()
	for _, tg := range rep.Targets {
		want := SysPlainCT
		switch {
		case strings.HasSuffix(tg.Name, ScIsolationCross) || strings.HasSuffix(tg.Name, ScIsolationUnknown):
			want = SysXDPDrop
		case strings.HasPrefix(tg.Name, "overlay"):
			want = ""
		}
		if tg.BoundSystem != want || (want != "") != (tg.Bound > 0) {
			t.Errorf("target %q: bound %v from %q, want one from %q", tg.Name, tg.Bound, tg.BoundSystem, want)
		}
	}
	dir := t.TempDir()
	files, err := WriteFiles(rep, dir)
	if err != nil {
		t.Fatal(err)
	}
	wantFiles := []string{"report.json", "report.md", FlowsSVG, LatencySVG, AdmissionSVG}
	if !slices.Equal(files, wantFiles) {
		t.Errorf("files written %v, want %v", files, wantFiles)
	}
	for _, f := range wantFiles {
		if st, err := os.Stat(filepath.Join(dir, f)); err != nil || st.Size() == 0 {
			t.Errorf("%s not written: %v", f, err)
		}
	}
}

// TestPrivilegedScenarioFilter: a run limited to some scenarios measures those and
// nothing else.
func TestPrivilegedScenarioFilter(t *testing.T) {
	netns.RequireRoot(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	rep, err := Run(ctx, Options{Profile: Profiles["smoke"], Systems: []string{SysMoat}, Scenarios: []string{ScNewFlows, ScTCPRR},
		Instance: netns.UniqueName("bfilter"), Command: t.Name()})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	for _, r := range rep.Records {
		got[r.Scenario] = true
	}
	if len(got) != 2 || !got[ScNewFlows] || !got[ScTCPRR] {
		t.Fatalf("measured %v, want exactly %s and %s", got, ScNewFlows, ScTCPRR)
	}
}

func TestUnknownScenarioRefused(t *testing.T) {
	_, err := Run(context.Background(), Options{Profile: Profiles["smoke"], Scenarios: []string{ScNewFlows, "syn_flood"}})
	if err == nil || !strings.Contains(err.Error(), `unknown scenario "syn_flood"`) {
		t.Fatalf("got %v, want the unknown scenario named", err)
	}
}

func TestUnknownSystemRefused(t *testing.T) {
	_, err := Run(context.Background(), Options{Profile: Profiles["smoke"], Systems: []string{SysMoat, "iptables"}})
	if err == nil || !strings.Contains(err.Error(), `unknown system "iptables"`) || !strings.Contains(err.Error(), SysPlainCT) {
		t.Fatalf("got %v, want the unknown system named and the known ones listed", err)
	}
}
