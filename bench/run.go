package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/seed4c/moat/dataplane"
	"github.com/seed4c/moat/internal/netns"
)

// Profile sizes a run.
type Profile struct {
	Name        string
	Duration    time.Duration // one packet-rate measurement
	Prime       time.Duration // unmeasured traffic that establishes flows first
	Reps        int           // measurements of each scenario on each system (interleaved)
	Flows       int           // flows of the established, reply and mixed scenarios
	SweepFlows  []int         // established against the number of flows
	TCPDuration time.Duration
	TCPReps     int
	Conns       int // concurrent connecting clients
	// Rounds of admission and of eviction on each system, per repetition (Reps).
	AdmissionRounds int
	// VerifyDuration is one measurement of attestation verifications (VerifyReps of
	// them on each system).
	VerifyDuration time.Duration
	VerifyReps     int
	// OverlaySeconds is one iperf3 run over the overlay and over the plain veth
	// (OverlayReps of each, interleaved).
	OverlaySeconds int
	OverlayReps    int
}

// Profiles: quick is `make bench` (under 5 minutes), full is long, smoke is the tests'.
var Profiles = map[string]Profile{
	"quick": {Name: "quick", Duration: 1500 * time.Millisecond, Prime: 200 * time.Millisecond, Reps: 3, Flows: 4096,
		SweepFlows: []int{1, 4096, 65536}, TCPDuration: 2 * time.Second, TCPReps: 2, Conns: 16,
		AdmissionRounds: 10, VerifyDuration: 200 * time.Millisecond, VerifyReps: 5, OverlaySeconds: 2, OverlayReps: 2},
	"full": {Name: "full", Duration: 5 * time.Second, Prime: 500 * time.Millisecond, Reps: 5, Flows: 4096,
		SweepFlows: []int{1, 16, 256, 4096, 16384, 65536}, TCPDuration: 5 * time.Second, TCPReps: 3, Conns: 32,
		AdmissionRounds: 30, VerifyDuration: time.Second, VerifyReps: 5, OverlaySeconds: 5, OverlayReps: 3},
	"smoke": {Name: "smoke", Duration: 150 * time.Millisecond, Prime: 100 * time.Millisecond, Reps: 1, Flows: 256,
		SweepFlows: []int{64}, TCPDuration: 300 * time.Millisecond, TCPReps: 1, Conns: 4,
		AdmissionRounds: 2, VerifyDuration: 200 * time.Millisecond, VerifyReps: 1, OverlaySeconds: 1, OverlayReps: 1},
}

// Options configure a run.
type Options struct {
	Profile Profile
	Systems []string // default: all
	// Scenarios limits the run to these scenarios (Sc… names; default: all), for
	// looking at one path without waiting for the others.
	Scenarios []string
	Instance  string // fast path instance; default "bench"
	Command   string // recorded in the report
	// CPUProfile samples the SUT core with perf in a separate burst of each packet
	// scenario, in the first repetition, and reports where its time went
	// (cpuprofile.go). It needs perf.
	CPUProfile bool
	Progress   io.Writer
	Logger     *slog.Logger
}

// AllSystems lists the systems in the order they are measured.
var AllSystems = []string{SysMoat, SysPlain, SysXDPDrop, SysPlainCT, SysNft, SysHAProxy}

// isBound says whether system is one of the bounds (sut.go), measured only in the
// packet scenarios it bounds.
func isBound(system string) bool { return system == SysXDPDrop || system == SysPlainCT }

// sweeps says whether system runs the established flow sweep: the forwarding systems,
// plain_ct among them, whose rate against the number of flows separates what a larger
// conntrack working set costs any LRU forwarder from what it costs moat.
func sweeps(system string) bool { return system != SysHAProxy && system != SysXDPDrop }

// measures says whether a packet scenario is measured on system.
func measures(system string, sc packetScenario) bool {
	switch system {
	case SysXDPDrop:
		return sc.drop
	case SysPlainCT:
		return !sc.drop
	case SysHAProxy:
		return false
	}
	return true
}

// bencher is one run in progress.
type bencher struct {
	profile Profile
	opts    Options
	scene   *Scene
	gens    map[*netns.Host]*Generator
	sinks   map[*netns.Host]*Sink
	offset  uint64
	// pacedNext is the next flow number of the paced traffic (admission.go).
	pacedNext uint64
	// pacedRefused counts the paced frames the client's device refused (its queue to
	// the gateway full) in the current system's admission rounds.
	pacedRefused uint64
	// pacedPauses holds, for each paced measurement of the current system's admission
	// rounds, the longest time between two turns of the sender's loop: the clock of
	// the measurement stood still that long.
	pacedPauses []time.Duration
	rep         *Report
	prog        *progress
	tmp         string
}

func (o *Options) wants(system string) bool {
	if len(o.Systems) == 0 {
		return true
	}
	for _, s := range o.Systems {
		if s == system {
			return true
		}
	}
	return false
}

func (o *Options) wantsScenario(name string) bool {
	return len(o.Scenarios) == 0 || slices.Contains(o.Scenarios, name)
}

// AllScenarios lists every scenario name a run can measure, in the order of the
// report's tables.
var AllScenarios = []string{ScIsolationCross, ScIsolationUnknown, ScNewFlows, ScEstablished, ScReply, ScMixed,
	ScEstablishedSweep, ScTCPConnections, ScTCPThroughput, ScTCPRR, ScAdmission, ScEviction, ScVerifications, ScOverlay}

// packetScenarios are the profile's packet scenarios this run measures.
func (b *bencher) packetScenarios() []packetScenario {
	var out []packetScenario
	for _, sc := range b.profile.packetScenarios() {
		if b.opts.wantsScenario(sc.name) {
			out = append(out, sc)
		}
	}
	return out
}

// sweepFlows are the flow counts of the established sweep this run measures.
func (b *bencher) sweepFlows() []int {
	if !b.opts.wantsScenario(ScEstablishedSweep) {
		return nil
	}
	return b.profile.SweepFlows
}

// tcpScenarios are the TCP scenarios this run measures on system.
func (b *bencher) tcpScenarios(system string) []string {
	var out []string
	for _, sc := range tcpScenarios(system) {
		if b.opts.wantsScenario(sc) {
			out = append(out, sc)
		}
	}
	return out
}

// Run measures moat and its baselines on a scene it builds and always removes, and
// returns the report. Errors of single measurements are recorded in the report;
// errors that stop the run are returned with the report so far.
func Run(ctx context.Context, o Options) (rep *Report, err error) {
	if o.Instance == "" {
		o.Instance = "bench"
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	if o.Progress == nil {
		o.Progress = io.Discard
	}
	for _, sc := range o.Scenarios {
		if !slices.Contains(AllScenarios, sc) {
			return nil, fmt.Errorf("unknown scenario %q: want one of %s", sc, strings.Join(AllScenarios, ", "))
		}
	}
	for _, s := range o.Systems {
		if !slices.Contains(AllSystems, s) {
			return nil, fmt.Errorf("unknown system %q: want one of %s", s, strings.Join(AllSystems, ", "))
		}
	}
	if runtime.NumCPU() < 2 {
		return nil, errors.New("moat bench needs two CPUs: one for the load, one for the system under test")
	}
	if o.CPUProfile {
		if err := perfAvailable(); err != nil {
			return nil, fmt.Errorf("CPU profiles: %w", err)
		}
	}
	b := &bencher{profile: o.Profile, opts: o, gens: map[*netns.Host]*Generator{}, sinks: map[*netns.Host]*Sink{}}
	b.rep = &Report{Command: o.Command, Profile: o.Profile.Name, TCPClients: o.Profile.Conns, Started: time.Now().UTC(),
		Machine: DescribeMachine(), Isolation: isolationNotes()}
	rep = b.rep
	if b.tmp, err = os.MkdirTemp("", "moat-bench-"); err != nil {
		return rep, err
	}
	defer os.RemoveAll(b.tmp)
	if o.wants(SysHAProxy) {
		if err := ensureHAProxy(func(s string) { fmt.Fprintln(o.Progress, s) }); err != nil {
			b.fail(fmt.Errorf("HAProxy baseline skipped: %w", err))
			o.Systems = without(systemsOf(o), SysHAProxy)
			b.opts = o
		}
	}
	b.prog = newProgress(o.Progress, b.steps())
	defer b.prog.finish()

	b.prog.note("building the scene")
	if b.scene, err = NewScene(o.Instance, o.Logger); err != nil {
		return rep, err
	}
	rep.Namespaces = append([]string{b.scene.Topo.GW.Name}, hostNames(b.scene.Peers())...)
	defer func() {
		err = errors.Join(err, b.close())
		rep.Seconds = time.Since(rep.Started).Seconds()
	}()
	for _, ph := range []struct {
		name string
		run  func(context.Context) error
	}{
		{"packets", b.packetPhase}, {"tcp", b.tcpPhase}, {"admission", b.admissionPhase},
		{"verifications", b.verificationPhase}, {"overlay", b.overlayPhase},
	} {
		t0 := time.Now()
		err := ph.run(ctx)
		rep.Phases = append(rep.Phases, Phase{Name: ph.name, Seconds: time.Since(t0).Seconds()})
		if err != nil {
			return rep, err
		}
	}
	rep.ComputeRatios()
	rep.CheckTargets()
	return rep, ctx.Err()
}

func systemsOf(o Options) []string {
	if len(o.Systems) == 0 {
		return AllSystems
	}
	return o.Systems
}

func without(l []string, v string) []string {
	var out []string
	for _, x := range l {
		if x != v {
			out = append(out, x)
		}
	}
	return out
}

func (b *bencher) steps() int {
	n := 0
	for _, s := range systemsOf(b.opts) {
		for _, sc := range b.packetScenarios() {
			if measures(s, sc) {
				n += b.profile.Reps
			}
		}
		if sweeps(s) && len(b.sweepFlows()) > 0 {
			n += 1 + len(b.sweepFlows()) // turning the table over, then each flow count
		}
		n += b.profile.TCPReps * len(b.tcpScenarios(s))
	}
	return n + b.admissionSteps() + b.verificationSteps() + b.overlaySteps()
}

func tcpScenarios(system string) []string {
	if isBound(system) {
		return nil
	}
	return []string{ScTCPConnections, ScTCPThroughput, ScTCPRR}
}

func (b *bencher) fail(err error) {
	b.rep.Errors = append(b.rep.Errors, err.Error())
	if b.prog != nil {
		b.prog.note("error: " + err.Error())
	}
}

// record adds a sample to its record, creating the record.
func (b *bencher) record(scenario, system, kind string, flows int, s Sample) {
	for i := range b.rep.Records {
		r := &b.rep.Records[i]
		if r.Scenario == scenario && r.System == system && r.Flows == flows {
			r.Runs = append(r.Runs, s)
			r.aggregate()
			return
		}
	}
	r := Record{Scenario: scenario, System: system, Kind: kind, Flows: flows, Runs: []Sample{s}}
	r.aggregate()
	b.rep.Records = append(b.rep.Records, r)
}

// setup puts a system on the scene for a phase.
func (b *bencher) setup(system, kind string) (*sut, error) {
	switch system {
	case SysMoat:
		return b.scene.setupMoat(rtPrio)
	case SysPlain:
		return b.scene.setupForwarder(SysPlain, ForwardPlain, rtPrio)
	case SysXDPDrop:
		return b.scene.setupForwarder(SysXDPDrop, DropAll, rtPrio)
	case SysPlainCT:
		return b.scene.setupForwarder(SysPlainCT, ForwardTracked, rtPrio)
	case SysNft:
		if kind == KindPackets {
			return b.scene.setupNftPackets()
		}
		return b.scene.setupNftTCP()
	case SysHAProxy:
		return b.scene.setupHAProxy(b.tmp)
	}
	return nil, fmt.Errorf("unknown system %q", system)
}

// packetPhase: sinks on every far end, then for each repetition every system in turn,
// every scenario; then the flow sweep.
func (b *bencher) packetPhase(ctx context.Context) error {
	var systems, sweepers []string
	scs := b.packetScenarios()
	for _, s := range systemsOf(b.opts) {
		if slices.ContainsFunc(scs, func(sc packetScenario) bool { return measures(s, sc) }) {
			systems = append(systems, s)
		}
		if sweeps(s) && len(b.sweepFlows()) > 0 {
			sweepers = append(sweepers, s)
		}
	}
	if len(systems) == 0 && len(sweepers) == 0 {
		return nil
	}
	if err := b.attachSinks(b.scene.Peers()); err != nil {
		return err
	}
	for rep := 0; rep < b.profile.Reps && len(systems) > 0; rep++ {
		for _, system := range systems {
			own := slices.DeleteFunc(slices.Clone(scs), func(sc packetScenario) bool { return !measures(system, sc) })
			if err := b.withSystem(system, KindPackets, func(sys *sut) error {
				for _, sc := range own {
					b.prog.step(fmt.Sprintf("%-8s %-25s run %d/%d", system, sc.name, rep+1, b.profile.Reps))
					s, err := b.measurePackets(ctx, sys, sc)
					if err != nil {
						if ctx.Err() != nil {
							return ctx.Err()
						}
						b.fail(fmt.Errorf("%s %s: %w", system, sc.name, err))
						continue
					}
					if s.Leaked > 0 {
						b.fail(fmt.Errorf("%s %s: ISOLATION VIOLATED: %d frames crossed", system, sc.name, s.Leaked))
					}
					s.Rep = rep + 1
					b.record(sc.name, system, KindPackets, sc.flows, s)
				}
				if sys.prog != nil { // an XDP system: time its program
					if err := b.measureEach(ctx, system, "program time", own, func(sc packetScenario) error {
						pt, err := b.measureProgramTime(ctx, sys, sc)
						if err == nil {
							b.addProgramTime(pt)
						}
						return err
					}); err != nil {
						return err
					}
				}
				if b.opts.CPUProfile && rep == 0 { // the first repetition's profiles are enough
					return b.measureEach(ctx, system, "CPU profile", own, func(sc packetScenario) error {
						pf, err := b.measureCPUProfile(ctx, sys, sc)
						if err == nil {
							b.rep.CPUProfiles = append(b.rep.CPUProfiles, pf)
						}
						return err
					})
				}
				return nil
			}); err != nil {
				return err
			}
		}
	}
	for _, system := range sweepers {
		if err := b.withSystem(system, KindPackets, func(sys *sut) error {
			// A system set up afresh for the sweep would start from a table that no
			// flood of new flows has turned over, unlike the tables of the
			// repetitions above (and moat's, open for the whole run), and a turned
			// table is slower: turn it over first, unmeasured.
			b.prog.step(fmt.Sprintf("%-8s %-25s turning the table over", system, ScEstablishedSweep))
			if err := b.churn(ctx); err != nil {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				b.fail(fmt.Errorf("%s %s: turn the table over: %w", system, ScEstablishedSweep, err))
			}
			for _, n := range b.sweepFlows() {
				b.prog.step(fmt.Sprintf("%-8s %-25s %d flows", system, ScEstablishedSweep, n))
				s, err := b.measurePackets(ctx, sys, packetScenario{name: ScEstablishedSweep, flows: n})
				if err != nil {
					if ctx.Err() != nil {
						return ctx.Err()
					}
					b.fail(fmt.Errorf("%s %s %d flows: %w", system, ScEstablishedSweep, n, err))
					continue
				}
				b.record(ScEstablishedSweep, system, KindPackets, n, s)
			}
			return nil
		}); err != nil {
			return err
		}
	}
	var errs []error
	for h, s := range b.sinks {
		errs = append(errs, s.Close())
		delete(b.sinks, h)
	}
	return errors.Join(errs...)
}

// measureEach runs measure on each of scs in turn, showing what it measures. A
// failure is recorded in the report and the next scenario goes on; only a cancelled
// run stops it.
func (b *bencher) measureEach(ctx context.Context, system, what string, scs []packetScenario, measure func(packetScenario) error) error {
	for _, sc := range scs {
		b.prog.note(fmt.Sprintf("%-8s %-25s %s", system, sc.name, what))
		if err := measure(sc); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			b.fail(fmt.Errorf("%s %s %s: %w", system, sc.name, what, err))
		}
	}
	return nil
}

// withSystem sets a system up, runs f, and takes it down again.
func (b *bencher) withSystem(system, kind string, f func(*sut) error) error {
	sys, err := b.setup(system, kind)
	if err != nil {
		b.fail(fmt.Errorf("set up %s: %w", system, err))
		return nil
	}
	ferr := f(sys)
	return errors.Join(ferr, sys.close())
}

// tcpPhase: count-and-pass programs on the far ends, servers on the backends, the
// whole bench process on the load core; each system in turn.
func (b *bencher) tcpPhase(ctx context.Context) error {
	if !slices.ContainsFunc(systemsOf(b.opts), func(s string) bool { return len(b.tcpScenarios(s)) > 0 }) {
		return nil
	}
	var (
		cps     []*dataplane.CountPass
		servers []*tcpServer
	)
	defer func() {
		for _, c := range cps {
			c.Close()
		}
		for _, s := range servers {
			s.close()
		}
	}()
	for _, h := range b.scene.Peers() {
		err := h.Do(func() error {
			l, err := h.Link("eth0")
			if err != nil {
				return err
			}
			c, err := dataplane.AttachCountPass(l.Attrs().Index)
			if err == nil {
				cps = append(cps, c)
			}
			return err
		})
		if err != nil {
			return err
		}
		if _, err := threadNAPI(h, loadCPU, 0, "eth0"); err != nil {
			return err
		}
	}
	for _, tn := range b.scene.Topo.Tenants {
		for _, be := range tn.Backends {
			s, err := startTCPServer(be.Host, fmt.Sprintf(":%d", b.scene.Topo.Opts.BackendPort))
			if err != nil {
				return err
			}
			servers = append(servers, s)
		}
	}
	restore, err := pinProcess(loadCPU)
	if err != nil {
		return err
	}
	defer restore()
	for rep := 0; rep < b.profile.TCPReps; rep++ {
		for _, system := range systemsOf(b.opts) {
			if len(b.tcpScenarios(system)) == 0 {
				continue
			}
			if err := b.withSystem(system, KindTCP, func(sys *sut) error {
				for _, sc := range b.tcpScenarios(system) {
					b.prog.step(fmt.Sprintf("%-8s %-25s run %d/%d", system, sc, rep+1, b.profile.TCPReps))
					s, err := b.measureTCP(ctx, sys, sc)
					if err != nil {
						if ctx.Err() != nil {
							return ctx.Err()
						}
						b.fail(fmt.Errorf("%s %s: %w", system, sc, err))
						continue
					}
					b.record(sc, system, KindTCP, 0, s)
				}
				return nil
			}); err != nil {
				return err
			}
		}
	}
	return nil
}

// pinProcess binds every thread of this process to cpu (threads made later inherit
// it) and returns the function that gives them back the process's affinity of before.
func pinProcess(cpu int) (func(), error) {
	var one, all unix.CPUSet
	one.Set(cpu)
	if err := unix.SchedGetaffinity(os.Getpid(), &all); err != nil {
		return nil, fmt.Errorf("affinity of the process: %w", err)
	}
	apply := func(set *unix.CPUSet) error {
		ents, err := os.ReadDir("/proc/self/task")
		if err != nil {
			return err
		}
		for _, e := range ents {
			var tid int
			if _, err := fmt.Sscanf(e.Name(), "%d", &tid); err == nil {
				_ = unix.SchedSetaffinity(tid, set) // a thread may have exited meanwhile
			}
		}
		return nil
	}
	if err := apply(&one); err != nil {
		return nil, err
	}
	return func() { _ = apply(&all) }, nil
}

func (b *bencher) close() error {
	var errs []error
	for h, s := range b.sinks {
		errs = append(errs, s.Close())
		delete(b.sinks, h)
	}
	for h, g := range b.gens {
		errs = append(errs, g.Close())
		delete(b.gens, h)
	}
	if b.scene != nil {
		errs = append(errs, b.scene.Close())
		b.scene = nil
	}
	return errors.Join(errs...)
}

// isolationNotes says how the measurement is isolated, for the report.
func isolationNotes() []string {
	return []string{
		fmt.Sprintf("CPU %d runs the load: the live-frames generators (one thread each, nice -20), the sinks' NAPI threads (SCHED_FIFO %d), TCP clients and servers (the whole bench process is pinned there for TCP)", loadCPU, rtPrio),
		fmt.Sprintf("CPU %d runs the system under test: moat's and plain forwarding's XDP in the gateway interfaces' threaded NAPI, nftables in the CPUMAP kthread that builds skbs and runs the stack, HAProxy and the gateway's NAPI threads; all SCHED_FIFO %d so that other work on the machine does not preempt them", sutCPU, rtPrio),
		"CPU of the system under test = run time of exactly those threads (/proc/<tid>/schedstat) over the measurement window; per-core figures divide the work done by that time",
		"packets/s: frames the system forwarded (counted by the sinks behind the gateway) or, in isolation scenarios, dropped (counted by the system itself); frames delivered where they must be dropped are reported as leaked",
		"frames: 60 bytes (64 on a wire), TCP, checksums correct; flows vary by source address and port on every frame; offloads and GRO off on every veth end",
		"every packet measurement starts from an empty conntrack table on every system (moat's conntrack, plain_ct's flow table, the kernel's conntrack for nftables), then primes the scenario's flows",
		"nftables: conntrack zones per tenant, drops in raw prerouting before conntrack, DNAT by jhash, forward filter by interface pairs; tcp_be_liberal=1 and nf_conntrack_checksum=0 (a NIC would have verified checksums)",
	}
}

// DescribeMachine records the kernel, CPU, cores, memory and build.
func DescribeMachine() Machine {
	m := Machine{Cores: runtime.NumCPU(), Go: runtime.Version()}
	var u unix.Utsname
	if unix.Uname(&u) == nil {
		m.Kernel = unix.ByteSliceToString(u.Sysname[:]) + " " + unix.ByteSliceToString(u.Release[:]) + " " + unix.ByteSliceToString(u.Machine[:])
	}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		m.CPU, m.CPUID = describeCPU(string(b))
	}
	m.Caches = describeCaches("/sys/devices/system/cpu/cpu0/cache")
	m.Mitigations = readMitigations("/sys/devices/system/cpu/vulnerabilities")
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		var kb int
		if _, err := fmt.Sscanf(string(b), "MemTotal: %d kB", &kb); err == nil {
			m.MemoryGiB = (kb + 1<<19) >> 20
		}
	}
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		m.Load = strings.TrimSpace(string(b))
	}
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" && len(s.Value) >= 12 {
				m.Commit = s.Value[:12]
			}
		}
	}
	if m.Commit == "" {
		// Built without VCS stamping (GOFLAGS=-buildvcs=false, as on this machine): ask
		// the checkout the binary runs from, if it is one.
		if out, err := exec.Command("git", "rev-parse", "--short=12", "HEAD").Output(); err == nil {
			m.Commit = strings.TrimSpace(string(out))
		}
	}
	return m
}

// describeCPU returns the first processor's model name and its identity ("family 23
// model 1 stepping 2, 1996 MHz, virtual machine") from /proc/cpuinfo's text.
func describeCPU(cpuinfo string) (name, id string) {
	field := map[string]string{}
	flags := ""
	for _, l := range strings.Split(cpuinfo, "\n") {
		k, v, ok := strings.Cut(l, ":")
		if !ok {
			if len(field) > 0 && strings.TrimSpace(l) == "" {
				break // the first processor only
			}
			continue
		}
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		if k == "flags" {
			flags = " " + v + " "
		} else if _, seen := field[k]; !seen {
			field[k] = v
		}
	}
	var parts []string
	for _, k := range []string{"cpu family", "model", "stepping"} {
		if v, ok := field[k]; ok {
			parts = append(parts, strings.TrimPrefix(k, "cpu ")+" "+v)
		}
	}
	id = strings.Join(parts, " ")
	if mhz, err := strconv.ParseFloat(field["cpu MHz"], 64); err == nil {
		id += fmt.Sprintf(", %.0f MHz", mhz)
	}
	if strings.Contains(flags, " hypervisor ") {
		id += ", virtual machine"
	}
	return field["model name"], strings.TrimPrefix(id, ", ")
}

// describeCaches lists the data and unified caches of one CPU from its sysfs cache
// directory: "L1d 32K, L2 512K, L3 8192K (shared by 0-1)".
func describeCaches(dir string) string {
	idx, _ := filepath.Glob(filepath.Join(dir, "index*"))
	read := func(d, f string) string {
		b, _ := os.ReadFile(filepath.Join(d, f))
		return strings.TrimSpace(string(b))
	}
	var out []string
	for _, d := range idx {
		typ, level, size := read(d, "type"), read(d, "level"), read(d, "size")
		if typ == "Instruction" || level == "" || size == "" {
			continue
		}
		c := "L" + level
		if typ == "Data" {
			c += "d"
		}
		c += " " + size
		if shared := read(d, "shared_cpu_list"); strings.ContainsAny(shared, ",-") {
			c += " (shared by " + shared + ")"
		}
		out = append(out, c)
	}
	return strings.Join(out, ", ")
}

// readMitigations returns what the kernel reports for each CPU vulnerability it
// mitigates (those "Not affected" left out). Some mitigations tax every call and
// return (retbleed's return thunks, for one), which moat's program pays on each
// helper call where a frame through the stack pays them on every function.
func readMitigations(dir string) map[string]string {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil
	}
	out := map[string]string{}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if v := strings.TrimSpace(string(b)); err == nil && v != "" && v != "Not affected" {
			out[e.Name()] = v
		}
	}
	return out
}

// WriteFiles writes the report into dir: report.json, report.md and the SVG plots of
// what the run measured (Report.Plots), and returns the names of the files written.
// When dir held a report already, a plot of this harness that the run has nothing for
// is removed from it, so that a directory written again never shows an earlier run's
// plot beside this run's report (a directory without a report keeps its files).
func WriteFiles(rep *Report, dir string) ([]string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	_, err := os.Stat(filepath.Join(dir, "report.json"))
	return writeFiles(rep, dir, true, err == nil)
}

// Render writes report.md and the plots of dir again from dir/report.json, as
// WriteFiles would (after a change of their rendering: TestCommittedReportsRender
// holds the committed runs to it), and returns the names of the files written.
func Render(dir string) ([]string, error) {
	raw, err := os.ReadFile(filepath.Join(dir, "report.json"))
	if err != nil {
		return nil, err
	}
	var rep Report
	if err := json.Unmarshal(raw, &rep); err != nil {
		return nil, fmt.Errorf("%s/report.json: %w", dir, err)
	}
	return writeFiles(&rep, dir, false, true)
}

func writeFiles(rep *Report, dir string, withJSON, removeStale bool) ([]string, error) {
	write := func(name string, f func(io.Writer) error) error {
		fh, err := os.Create(filepath.Join(dir, name))
		if err != nil {
			return err
		}
		if err := f(fh); err != nil {
			fh.Close()
			return fmt.Errorf("write %s: %w", name, err)
		}
		return fh.Close()
	}
	var files []string
	var err error
	if withJSON {
		files, err = append(files, "report.json"), write("report.json", rep.WriteJSON)
	}
	files, err = append(files, "report.md"), errors.Join(err, write("report.md", rep.WriteMarkdown))
	plots := rep.Plots()
	for _, name := range PlotNames {
		render, ok := plots[name]
		switch {
		case ok:
			err = errors.Join(err, write(name, render))
			files = append(files, name)
		case removeStale:
			if rerr := os.Remove(filepath.Join(dir, name)); rerr != nil && !errors.Is(rerr, fs.ErrNotExist) {
				err = errors.Join(err, rerr)
			}
		}
	}
	return files, err
}

// The plots a report can have, in the order WriteFiles lists them.
const (
	FlowsSVG     = "flows.svg"     // established flows' rate against the number of flows
	LatencySVG   = "latency.svg"   // TCP request/response latency percentiles
	AdmissionSVG = "admission.svg" // admission and eviction latency percentiles
	ProfileSVG   = "profile.svg"   // where the system-under-test core goes
)

// PlotNames are the plots WriteFiles knows, in order.
var PlotNames = []string{FlowsSVG, LatencySVG, AdmissionSVG, ProfileSVG}

// Plots returns the renderers of the plots the report has data for, by file name.
func (rep *Report) Plots() map[string]func(io.Writer) error {
	plots := map[string]func(io.Writer) error{}
	for i := range rep.Records {
		switch r := &rep.Records[i]; {
		case r.Scenario == ScEstablishedSweep && r.Flows > 0:
			plots[FlowsSVG] = rep.WriteFlowsSVG
		case r.Scenario == ScTCPRR && r.Latency != nil:
			plots[LatencySVG] = rep.WriteLatencySVG
		case (r.Scenario == ScAdmission || r.Scenario == ScEviction) && r.Latency != nil:
			plots[AdmissionSVG] = rep.WriteAdmissionSVG
		}
	}
	if len(rep.CPUProfiles) > 0 {
		plots[ProfileSVG] = rep.WriteProfileSVG
	}
	return plots
}

func hostNames(hs []*netns.Host) []string {
	var out []string
	for _, h := range hs {
		out = append(out, h.Name)
	}
	return out
}
