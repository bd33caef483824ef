package bench

import (
	"context"
	"fmt"
	"os/exec"
	"runtime"
	"strings"
	"time"

	"github.com/seed4c/moat/dataplane/overlay"
	"github.com/seed4c/moat/internal/netns"
)

// overlayMTU is the underlay veth's MTU: an ordinary 1500-byte link, the TUN 1420.
const overlayMTU = 1500

// overlayWait bounds the wait for the overlay's first TCP crossing (BenchPair's
// WaitOverlay says why it can take 15 s and more).
const overlayWait = 30 * time.Second

// overlaySystems are the systems the overlay phase measures, in measurement order:
// moat is the overlay, plain the veth under it.
func (b *bencher) overlaySystems() []string {
	if !b.opts.wantsScenario(ScOverlay) {
		return nil
	}
	// Without iperf3 the phase is skipped (overlayPhase says so), and makes no steps.
	if _, err := exec.LookPath("iperf3"); err != nil {
		return nil
	}
	var out []string
	for _, s := range systemsOf(b.opts) {
		if s == SysMoat || s == SysPlain {
			out = append(out, s)
		}
	}
	return out
}

// overlaySteps is the number of progress steps of overlayPhase: one per run.
func (b *bencher) overlaySteps() int { return b.profile.OverlayReps * len(b.overlaySystems()) }

// overlayPhase measures single-stream TCP throughput (iperf3) between two namespaces
// of their own over the moat overlay (wireguard-go on kernel TUNs, keys in fake SEs)
// and over the plain veth that carries it, interleaved (ScOverlay). It runs after the
// TCP phase has let the bench process run on every core again: wireguard-go runs in
// this process, and the overlay's cost includes competing for the machine's cores
// like the product would.
func (b *bencher) overlayPhase(ctx context.Context) error {
	if !b.opts.wantsScenario(ScOverlay) {
		return nil
	}
	if _, err := exec.LookPath("iperf3"); err != nil {
		b.fail(fmt.Errorf("%s skipped: iperf3 is not installed (.ci/deps installs it): %w", ScOverlay, err))
		return nil
	}
	systems := b.overlaySystems()
	if len(systems) == 0 {
		return nil
	}
	// Listed before they exist, so that a namespace a failed setup left behind is
	// still one the report names (and the smoke test looks for).
	names := [2]string{netns.UniqueName("moatov"), netns.UniqueName("moatov")}
	b.rep.Namespaces = append(b.rep.Namespaces, names[:]...)
	b.prog.note(fmt.Sprintf("%s: building the overlay pair (%s, %s)", ScOverlay, names[0], names[1]))
	pair, err := overlay.NewBenchPair(names, overlayMTU)
	if err != nil {
		b.fail(fmt.Errorf("%s: set up: %w", ScOverlay, err))
		return nil
	}
	defer func() {
		if err := pair.Close(); err != nil {
			b.fail(fmt.Errorf("%s: tear down: %w", ScOverlay, err))
		}
	}()

	var waited time.Duration
	var waitErr error
	if b.opts.wants(SysMoat) {
		// Outside the measured runs: the first handshake may take one or two of
		// wireguard-go's retries.
		b.prog.note(fmt.Sprintf("%s: waiting for the overlay to carry TCP", ScOverlay))
		waited, waitErr = pair.WaitOverlay(ctx, overlayWait)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if waitErr != nil {
			b.fail(fmt.Errorf("%s %s: %w", SysMoat, ScOverlay, waitErr))
		}
	}

	var off overlay.OffloadCounters
	runs := map[string][]overlay.IPerfRun{}
	reps := b.profile.OverlayReps
	for rep := 0; rep < reps; rep++ {
		for _, system := range systems {
			b.prog.step(fmt.Sprintf("%-8s %-25s run %d/%d", system, ScOverlay, rep+1, reps))
			if system == SysMoat && waitErr != nil {
				continue // reported once above: every run would only time out
			}
			r, err := b.measureOverlay(ctx, pair, system, &off)
			if err != nil {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				b.fail(fmt.Errorf("%s %s: %w", system, ScOverlay, err))
				continue
			}
			runs[system] = append(runs[system], r)
			cpu := r.BusyCores()
			b.record(ScOverlay, system, KindThroughput, 0, Sample{Seconds: r.Seconds, Gbps: r.Gbits(), CPU: cpu, GbpsPerCore: r.Gbits() / cpu})
		}
	}

	for _, system := range systems {
		rec := b.rep.Find(ScOverlay, system, 0)
		if rec == nil {
			continue
		}
		rec.Notes = append(rec.Notes, b.overlayNotes(system, runs[system], waited)...)
		if system == SysMoat {
			ev := "offloads over the overlay runs: " + off.String()
			if err := off.Check(overlayMTU); err != nil {
				ev += "; NOT IN EFFECT: " + strings.ReplaceAll(err.Error(), "\n", "; ")
			}
			rec.Notes = append(rec.Notes, ev)
		}
	}
	return nil
}

// measureOverlay is one iperf3 run of system over the pair; for moat it adds what
// crossed the TUNs and the underlay meanwhile to off.
func (b *bencher) measureOverlay(ctx context.Context, pair *overlay.BenchPair, system string, off *overlay.OffloadCounters) (overlay.IPerfRun, error) {
	path := overlay.BenchVeth
	if system == SysMoat {
		path = overlay.BenchOverlay
	}
	var before overlay.OffloadCounters
	var err error
	if path == overlay.BenchOverlay {
		if before, err = pair.Offloads(); err != nil {
			return overlay.IPerfRun{}, err
		}
	}
	r, err := pair.IPerf(ctx, path, b.profile.OverlaySeconds)
	if err != nil {
		return r, err
	}
	if r.BusyCores() <= 0 {
		return r, fmt.Errorf("no busy CPU measured over %.1f s (/proc/stat)", r.Seconds)
	}
	if path == overlay.BenchOverlay {
		after, err := pair.Offloads()
		if err != nil {
			return r, err
		}
		off.Add(after, before)
	}
	return r, nil
}

// overlayNotes say what the figures of system are: the path, and whose CPU the busy
// cores are.
func (b *bencher) overlayNotes(system string, runs []overlay.IPerfRun, waited time.Duration) []string {
	med := func(f func(overlay.IPerfRun) float64) float64 {
		var v []float64
		for _, r := range runs {
			v = append(v, f(r))
		}
		return median(v)
	}
	path := fmt.Sprintf("one iperf3 TCP stream between two namespaces over a veth of MTU %d, %d s a run", overlayMTU, b.profile.OverlaySeconds)
	if system == SysMoat {
		path = fmt.Sprintf("one iperf3 TCP stream between two namespaces over the moat overlay (wireguard-go on kernel TUNs of MTU %d with their offloads, PSKs from fake SEs) on a veth of MTU %d, %d s a run; the overlay carried TCP %v after setup, a wait outside the runs",
			overlayMTU-(1500-overlay.DefaultMTU), overlayMTU, b.profile.OverlaySeconds, waited.Round(time.Millisecond))
	}
	cpu := fmt.Sprintf("cores: busy cores of the whole machine (/proc/stat) over each run, not of one system under test: both ends share this machine's %d cores, so Gbit/s per core is for the pair together, sender and receiver; medians: iperf3 client and server %.2f, ",
		runtime.NumCPU(), med(overlay.IPerfRun.IPerfCores))
	if system == SysMoat {
		cpu += fmt.Sprintf("wireguard-go of both ends (the bench process, with the kernel work in its system calls) %.2f, ", med(overlay.IPerfRun.SelfCores))
	}
	cpu += fmt.Sprintf("the rest (kernel work outside those processes, other processes) %.2f", med(overlay.IPerfRun.OtherCores))
	return []string{path, cpu}
}
