package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"sort"
	"time"
)

// Kinds of scenario.
const (
	KindPackets = "packets" // live frames, packets per second
	KindTCP     = "tcp"     // real TCP through the gateway
	// KindLatency: how long the gateway takes to act on a decision (admission,
	// eviction), in latency percentiles; ratios compare speeds (1 / median latency).
	KindLatency = "latency"
	// KindOps: operations per second and per busy core (attestation verifications).
	KindOps = "ops"
	// KindThroughput: TCP throughput over a link (the overlay), Gbit/s.
	KindThroughput = "throughput"
)

// Latency holds percentiles in microseconds.
type Latency struct {
	P50  float64 `json:"p50"`
	P90  float64 `json:"p90"`
	P99  float64 `json:"p99"`
	P999 float64 `json:"p99_9"`
}

// Sample is one measurement of one scenario on one system.
type Sample struct {
	// Rep is the repetition the measurement belongs to, from 1, in phases that
	// repeat every system in turn (0: none, or a report made before it was kept).
	Rep          int      `json:"rep,omitempty"`
	Seconds      float64  `json:"seconds"`
	OfferedPPS   float64  `json:"offered_pps,omitempty"`   // frames the generator sent
	PPS          float64  `json:"pps,omitempty"`           // frames the system handled (forwarded, or dropped where it must drop)
	DeliveredPPS float64  `json:"delivered_pps,omitempty"` // frames that reached any far end
	CPU          float64  `json:"cpu_cores"`               // busy cores of the system under test
	PPSPerCore   float64  `json:"pps_per_core,omitempty"`
	ConnsPerSec  float64  `json:"conns_per_sec,omitempty"`
	ConnsPerCore float64  `json:"conns_per_core,omitempty"`
	TPS          float64  `json:"transactions_per_sec,omitempty"`
	TPSPerCore   float64  `json:"transactions_per_core,omitempty"`
	OpsPerSec    float64  `json:"ops_per_sec,omitempty"`
	OpsPerCore   float64  `json:"ops_per_core,omitempty"`
	Gbps         float64  `json:"gbps,omitempty"`
	GbpsPerCore  float64  `json:"gbps_per_core,omitempty"`
	Latency      *Latency `json:"latency_us,omitempty"`
	Leaked       uint64   `json:"leaked,omitempty"`    // frames that crossed where the system had to drop them
	SUTDrops     uint64   `json:"sut_drops,omitempty"` // frames the system dropped where it had to forward them
	// DropReasons: the frames the system dropped, by its own reason (moat's verdict
	// reasons), over the run; for a record, summed over its runs. In a forwarding
	// scenario they say what the drops were (the namespaces' own IPv6 chatter
	// is some); in an isolation scenario, that the right rule dropped the probes.
	DropReasons map[string]uint64 `json:"drop_reasons,omitempty"`
	// Frames says where the frames the generators sent went (packet scenarios; for a
	// record, summed over its runs; absent from reports made before it was kept).
	Frames *FrameLedger `json:"frames,omitempty"`
}

// FrameLedger accounts for the frames of a packet measurement. A system's per-core rate
// counts the frames it handled; the ledger shows that the frames it did not handle
// were lost where it spent nothing on them. Frames refused on transmit are the
// exception: the system handled them, and its rate does not count them.
type FrameLedger struct {
	Sent      uint64 `json:"sent"`      // by the generators
	Delivered uint64 `json:"delivered"` // counted by the sinks on the far ends
	Dropped   uint64 `json:"dropped"`   // by the system under test, by its own count
	// RefusedIn: refused before the system saw them, by a gateway interface's ring on
	// receive, or by the queue in front of the system (nftables' CPUMAP), all full.
	RefusedIn uint64 `json:"refused_in"`
	// RefusedOut: refused by a gateway interface on transmit (the far end's ring
	// full), after the system had handled them.
	RefusedOut uint64 `json:"refused_out"`
}

// Rest is what the ledger does not place: frames in flight when the counters were
// read, less the namespaces' own frames that the counters took in (their IPv6
// chatter). Near 0: anything else is a frame lost where the harness does not look.
func (l *FrameLedger) Rest() int64 {
	return int64(l.Sent) - int64(l.Delivered) - int64(l.Dropped) - int64(l.RefusedIn) - int64(l.RefusedOut)
}

// add sums o into l.
func (l *FrameLedger) add(o *FrameLedger) {
	l.Sent += o.Sent
	l.Delivered += o.Delivered
	l.Dropped += o.Dropped
	l.RefusedIn += o.RefusedIn
	l.RefusedOut += o.RefusedOut
}

// Record is one scenario on one system: the median of its samples, and the samples.
type Record struct {
	Scenario string `json:"scenario"`
	System   string `json:"system"`
	Kind     string `json:"kind"`
	Flows    int    `json:"flows,omitempty"`
	Sample
	Runs  []Sample `json:"runs"`
	Notes []string `json:"notes,omitempty"`
}

// Primary is the figure ratios compare: work per busy core of the system under test;
// for latency records, the speed 1/p50 (per second), so that a ratio above 1 still
// means moat is better.
func (r *Record) Primary() float64 {
	switch {
	case r.Kind == KindLatency:
		return r.speed()
	case r.PPSPerCore > 0:
		return r.PPSPerCore
	case r.ConnsPerCore > 0:
		return r.ConnsPerCore
	case r.TPSPerCore > 0:
		return r.TPSPerCore
	case r.OpsPerCore > 0:
		return r.OpsPerCore
	default:
		return r.GbpsPerCore
	}
}

// speed is 1 / median latency, per second (0 without a latency).
func (r *Record) speed() float64 {
	if r.Latency == nil || r.Latency.P50 <= 0 {
		return 0
	}
	return 1e6 / r.Latency.P50
}

// Absolute is the figure regardless of CPU: packets/s, connections/s, operations/s or
// Gbit/s (for latency records, the speed as in Primary).
func (r *Record) Absolute() float64 {
	switch {
	case r.Kind == KindLatency:
		return r.speed()
	case r.PPS > 0:
		return r.PPS
	case r.ConnsPerSec > 0:
		return r.ConnsPerSec
	case r.TPS > 0:
		return r.TPS
	case r.OpsPerSec > 0:
		return r.OpsPerSec
	default:
		return r.Gbps
	}
}

// Machine describes where the run happened.
type Machine struct {
	Kernel string `json:"kernel"`
	CPU    string `json:"cpu"`
	// CPUID, Caches and Mitigations tell hosts apart whose CPU has the same name (a
	// VM's "AMD EPYC" may be any generation): the rates and the ratios move with them.
	// Reports made before they were kept lack them.
	CPUID       string            `json:"cpuid,omitempty"`  // family, model, stepping and clock, from /proc/cpuinfo
	Caches      string            `json:"caches,omitempty"` // data and unified caches of CPU 0, from sysfs
	Mitigations map[string]string `json:"mitigations"`      // the kernel's, for each vulnerability it mitigates (null: unknown)
	Cores       int               `json:"cores"`
	MemoryGiB   int               `json:"memory_gib"`
	Go          string            `json:"go"`
	Commit      string            `json:"commit,omitempty"`
	Load        string            `json:"loadavg_at_start"`
}

// Target is one of the goals, checked against the run.
type Target struct {
	Name string  `json:"name"`
	Want float64 `json:"want"`
	Got  float64 `json:"got"`
	Met  bool    `json:"met"`
	// Bound is the same ratio for BoundSystem, the cheapest program doing the
	// scenario's least work on the same path (sut.go), when it was measured. A bound
	// below Want says the target is out of reach on this machine for any system
	// that has to do at least that work.
	Bound       float64 `json:"bound,omitempty"`
	BoundSystem string  `json:"bound_system,omitempty"`
	// Runs is the ratio in each repetition: the packet phase measures every system
	// once per repetition, so runs of the same index ran minutes apart at most. Their
	// spread is the noise the median (Got) sits in.
	Runs []float64 `json:"runs,omitempty"`
}

// RunsMet counts the repetitions whose own ratio meets the target.
func (t Target) RunsMet() int {
	n := 0
	for _, r := range t.Runs {
		if r >= t.Want {
			n++
		}
	}
	return n
}

// OutOfReach says whether the target's bound was measured and stays below it.
func (t Target) OutOfReach() bool { return t.BoundSystem != "" && t.Bound < t.Want }

// Verdict is "met", "missed", or "missed: out of reach here".
func (t Target) Verdict() string {
	switch {
	case t.Met:
		return "met"
	case t.OutOfReach():
		return "missed: out of reach here"
	}
	return "missed"
}

// WriteTargetSummary writes one line per target, for the terminal at the end of a run.
func (r *Report) WriteTargetSummary(w io.Writer) error {
	for _, t := range r.Targets {
		line := fmt.Sprintf("%-26s %s: %.2f× (want ≥ %.1f×", t.Verdict(), t.Name, t.Got, t.Want)
		if len(t.Runs) > 1 {
			line += fmt.Sprintf("; met in %d of %d runs", t.RunsMet(), len(t.Runs))
		}
		if t.BoundSystem != "" {
			line += fmt.Sprintf("; bound: %s %.2f×", t.BoundSystem, t.Bound)
		}
		if _, err := fmt.Fprintln(w, line+")"); err != nil {
			return err
		}
	}
	return nil
}

// Report is a whole run.
type Report struct {
	Command string `json:"command"`
	Profile string `json:"profile"`
	// TCPClients is the number of clients the connection scenario ran (the profile's
	// Conns then; reports made before it was kept lack it).
	TCPClients int       `json:"tcp_clients,omitempty"`
	Started    time.Time `json:"started"`
	Seconds    float64   `json:"seconds"`
	Machine    Machine   `json:"machine"`
	Isolation  []string  `json:"isolation"`
	// Namespaces lists the network namespaces the run built (and removed).
	Namespaces []string `json:"namespaces"`
	Records    []Record `json:"records"`
	// Ratios[baseline][scenario] = moat / baseline, per busy core of the system under
	// test (packets/s, connections/s or Gbit/s per core).
	Ratios map[string]map[string]float64 `json:"ratios"`
	// RatiosAbsolute is the same without dividing by CPU.
	RatiosAbsolute map[string]map[string]float64 `json:"ratios_absolute"`
	Targets        []Target                      `json:"targets"`
	// ProgramTimes: what the XDP systems' programs cost per frame (progtime.go).
	ProgramTimes []ProgramTime `json:"program_times,omitempty"`
	// CPUProfiles: where the systems' cores went, by part of the path (cpuprofile.go).
	CPUProfiles []CPUProfile `json:"cpu_profiles,omitempty"`
	// Phases: where the run's time went (building the scene and tearing it down are
	// the rest of Seconds).
	Phases []Phase  `json:"phases,omitempty"`
	Errors []string `json:"errors,omitempty"`
}

// Phase is one phase of a run and its wall-clock time.
type Phase struct {
	Name    string  `json:"name"`
	Seconds float64 `json:"seconds"`
}

// median of the values (0 for none).
func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// aggregate makes a record's summary the per-field median of its runs.
func (r *Record) aggregate() {
	pick := func(f func(*Sample) float64) float64 {
		var v []float64
		for i := range r.Runs {
			v = append(v, f(&r.Runs[i]))
		}
		return median(v)
	}
	r.Seconds = pick(func(s *Sample) float64 { return s.Seconds })
	r.OfferedPPS = pick(func(s *Sample) float64 { return s.OfferedPPS })
	r.PPS = pick(func(s *Sample) float64 { return s.PPS })
	r.DeliveredPPS = pick(func(s *Sample) float64 { return s.DeliveredPPS })
	r.CPU = pick(func(s *Sample) float64 { return s.CPU })
	r.PPSPerCore = pick(func(s *Sample) float64 { return s.PPSPerCore })
	r.ConnsPerSec = pick(func(s *Sample) float64 { return s.ConnsPerSec })
	r.ConnsPerCore = pick(func(s *Sample) float64 { return s.ConnsPerCore })
	r.TPS = pick(func(s *Sample) float64 { return s.TPS })
	r.TPSPerCore = pick(func(s *Sample) float64 { return s.TPSPerCore })
	r.OpsPerSec = pick(func(s *Sample) float64 { return s.OpsPerSec })
	r.OpsPerCore = pick(func(s *Sample) float64 { return s.OpsPerCore })
	r.Gbps = pick(func(s *Sample) float64 { return s.Gbps })
	r.GbpsPerCore = pick(func(s *Sample) float64 { return s.GbpsPerCore })
	r.Leaked, r.SUTDrops, r.DropReasons, r.Frames = 0, 0, nil, nil
	var lat []*Latency
	for _, s := range r.Runs {
		r.Leaked += s.Leaked
		r.SUTDrops += s.SUTDrops
		if s.Frames != nil {
			if r.Frames == nil {
				r.Frames = &FrameLedger{}
			}
			r.Frames.add(s.Frames)
		}
		for reason, n := range s.DropReasons {
			if r.DropReasons == nil {
				r.DropReasons = map[string]uint64{}
			}
			r.DropReasons[reason] += n
		}
		if s.Latency != nil {
			lat = append(lat, s.Latency)
		}
	}
	r.Latency = nil
	if len(lat) > 0 {
		pl := func(f func(*Latency) float64) float64 {
			var v []float64
			for _, l := range lat {
				v = append(v, f(l))
			}
			return median(v)
		}
		r.Latency = &Latency{
			P50: pl(func(l *Latency) float64 { return l.P50 }), P90: pl(func(l *Latency) float64 { return l.P90 }),
			P99: pl(func(l *Latency) float64 { return l.P99 }), P999: pl(func(l *Latency) float64 { return l.P999 }),
		}
	}
}

// Spread is the smallest and largest primary figure over the record's runs.
func (r *Record) Spread() (lo, hi float64) {
	lo = math.Inf(1)
	for _, s := range r.Runs {
		rr := Record{Kind: r.Kind, Sample: s}
		v := rr.Primary()
		lo, hi = math.Min(lo, v), math.Max(hi, v)
	}
	if math.IsInf(lo, 1) {
		lo = 0
	}
	return lo, hi
}

// ratioKey names a record in the ratio tables: its scenario, with the flow count for
// sweeps.
func ratioKey(r *Record) string {
	if r.Scenario == ScEstablishedSweep {
		return fmt.Sprintf("%s_%d", r.Scenario, r.Flows)
	}
	return r.Scenario
}

// ComputeRatios fills Ratios and RatiosAbsolute: moat against every other system, per
// scenario both measured.
func (rep *Report) ComputeRatios() {
	rep.computeCoreShares()
	rep.computeProfileTimes()
	rep.Ratios = map[string]map[string]float64{}
	rep.RatiosAbsolute = map[string]map[string]float64{}
	moat := map[string]*Record{}
	for i := range rep.Records {
		if r := &rep.Records[i]; r.System == SysMoat {
			moat[ratioKey(r)] = r
		}
	}
	for i := range rep.Records {
		r := &rep.Records[i]
		m, ok := moat[ratioKey(r)]
		if r.System == SysMoat || !ok {
			continue
		}
		if b := r.Primary(); b > 0 {
			if rep.Ratios[r.System] == nil {
				rep.Ratios[r.System] = map[string]float64{}
			}
			rep.Ratios[r.System][ratioKey(r)] = m.Primary() / b
		}
		if b := r.Absolute(); b > 0 {
			if rep.RatiosAbsolute[r.System] == nil {
				rep.RatiosAbsolute[r.System] = map[string]float64{}
			}
			rep.RatiosAbsolute[r.System][ratioKey(r)] = m.Absolute() / b
		}
	}
}

// CheckTargets compares the ratios with the issues' goals: moat at least 10x nftables
// per core for isolation and load balancing, at least 0.5x plain XDP forwarding, and
// the overlay at least 0.4x the throughput of the plain veth under it.
func (rep *Report) CheckTargets() {
	rep.Targets = nil
	add := func(name, base, sc string, want float64) {
		got, ok := rep.Ratios[base][sc]
		if !ok {
			return
		}
		t := Target{Name: name, Want: want, Got: got, Met: got >= want, Runs: runRatios(rep.Find(sc, SysMoat, 0), rep.Find(sc, base, 0))}
		bound := SysPlainCT
		if sc == ScIsolationCross || sc == ScIsolationUnknown {
			bound = SysXDPDrop
		}
		f, b := rep.Find(sc, bound, 0), rep.Find(sc, base, 0)
		if f != nil && b != nil && f.Primary() > 0 && b.Primary() > 0 {
			t.Bound, t.BoundSystem = f.Primary()/b.Primary(), bound
		}
		rep.Targets = append(rep.Targets, t)
	}
	for _, sc := range []string{ScIsolationCross, ScIsolationUnknown, ScNewFlows, ScEstablished, ScReply, ScMixed} {
		add(fmt.Sprintf("moat / nftables per core, %s", sc), SysNft, sc, 10)
	}
	for _, sc := range []string{ScNewFlows, ScEstablished, ScReply, ScMixed} {
		add(fmt.Sprintf("moat / plain XDP forwarding per core, %s", sc), SysPlain, sc, 0.5)
	}
	// The overlay's goal (issue 5) is throughput, whatever the CPU: the two ends share
	// this machine's cores with each other and with the load.
	if got, ok := rep.RatiosAbsolute[SysPlain][ScOverlay]; ok {
		rep.Targets = append(rep.Targets, Target{Name: "overlay / plain veth TCP throughput", Want: 0.4, Got: got, Met: got >= 0.4})
	}
}

// runRatios returns m's primary figure over b's, repetition by repetition: runs are
// paired by their repetition when both records name them (a repetition that one
// system failed is left out), else by position when both have as many runs (nil when
// they cannot be paired).
func runRatios(m, b *Record) []float64 {
	if m == nil || b == nil {
		return nil
	}
	named := func(r *Record) bool {
		for _, s := range r.Runs {
			if s.Rep == 0 {
				return false
			}
		}
		return len(r.Runs) > 0
	}
	var pairs [][2]Sample
	switch {
	case named(m) && named(b):
		for _, ms := range m.Runs {
			for _, bs := range b.Runs {
				if bs.Rep == ms.Rep {
					pairs = append(pairs, [2]Sample{ms, bs})
				}
			}
		}
	case len(m.Runs) == len(b.Runs):
		for i := range m.Runs {
			pairs = append(pairs, [2]Sample{m.Runs[i], b.Runs[i]})
		}
	}
	if len(pairs) == 0 {
		return nil
	}
	out := make([]float64, 0, len(pairs))
	for _, p := range pairs {
		mr, br := Record{Kind: m.Kind, Sample: p[0]}, Record{Kind: b.Kind, Sample: p[1]}
		if br.Primary() <= 0 {
			return nil
		}
		out = append(out, mr.Primary()/br.Primary())
	}
	return out
}

// WriteJSON writes the report, indented.
func (rep *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(rep)
}

// Find returns the record of a scenario (and flow count, for sweeps) on a system.
func (rep *Report) Find(scenario, system string, flows int) *Record {
	for i := range rep.Records {
		r := &rep.Records[i]
		if r.Scenario == scenario && r.System == system && (flows == 0 || r.Flows == flows) {
			return r
		}
	}
	return nil
}

// computeCoreShares sets each program time's share of its system's busy core: its run
// time per frame times the frames the system handled per busy core in the same
// scenario.
func (rep *Report) computeCoreShares() {
	for i := range rep.ProgramTimes {
		pt := &rep.ProgramTimes[i]
		for j := range rep.Records {
			r := &rep.Records[j]
			if r.Scenario == pt.Scenario && r.System == pt.System && r.Flows == pt.Flows && r.PPSPerCore > 0 {
				pt.CoreShare = pt.NsPerRun * 1e-9 * r.PPSPerCore
			}
		}
	}
}
