package bench

import (
	"cmp"
	"fmt"
	"io"
	"maps"
	"slices"
	"sort"
	"strings"
)

func scenarioRank(s string) int {
	for i, x := range AllScenarios {
		if strings.HasPrefix(s, x) {
			return i
		}
	}
	return len(AllScenarios)
}

func systemRank(s string) int {
	for i, x := range AllSystems {
		if x == s {
			return i
		}
	}
	return len(AllSystems)
}

// SortRecords orders records by scenario, flows, system.
func (rep *Report) SortRecords() {
	sort.SliceStable(rep.Records, func(i, j int) bool {
		a, b := &rep.Records[i], &rep.Records[j]
		if x, y := scenarioRank(a.Scenario), scenarioRank(b.Scenario); x != y {
			return x < y
		}
		if a.Flows != b.Flows {
			return a.Flows < b.Flows
		}
		return systemRank(a.System) < systemRank(b.System)
	})
}

// ratioKeys lists the scenarios that have a ratio, in table order.
func (rep *Report) ratioKeys() []string {
	seen := map[string]bool{}
	var keys []string
	for _, m := range rep.Ratios {
		for k := range m {
			if !seen[k] {
				seen[k] = true
				keys = append(keys, k)
			}
		}
	}
	sort.Slice(keys, func(i, j int) bool {
		if x, y := scenarioRank(keys[i]), scenarioRank(keys[j]); x != y {
			return x < y
		}
		var fi, fj int
		fmt.Sscanf(strings.TrimPrefix(keys[i], ScEstablishedSweep+"_"), "%d", &fi)
		fmt.Sscanf(strings.TrimPrefix(keys[j], ScEstablishedSweep+"_"), "%d", &fj)
		return fi < fj
	})
	return keys
}

func (rep *Report) baselines() []string {
	var out []string
	for _, s := range AllSystems[1:] {
		if _, ok := rep.Ratios[s]; ok {
			out = append(out, s)
		}
	}
	return out
}

func fmtRatio(v float64, ok bool) string {
	if !ok {
		return "–"
	}
	if v >= 10 {
		return fmt.Sprintf("%.0f×", v)
	}
	return fmt.Sprintf("%.2f×", v)
}

// fmtRate prints a rate with an SI suffix.
func fmtRate(v float64) string {
	switch {
	case v == 0:
		return "–"
	case v >= 1e6:
		return fmt.Sprintf("%.2f M", v/1e6)
	case v >= 1e3:
		return fmt.Sprintf("%.1f k", v/1e3)
	default:
		return fmt.Sprintf("%.1f", v)
	}
}

// fmtCount formats a count: exact below a thousand.
func fmtCount(n uint64) string {
	if n < 1000 {
		return fmt.Sprint(n)
	}
	return fmtRate(float64(n))
}

// WriteMarkdown writes the ratio table, the targets and the measurements.
func (rep *Report) WriteMarkdown(w io.Writer) error {
	var b strings.Builder
	p := func(f string, a ...any) { fmt.Fprintf(&b, f+"\n", a...) }
	m := rep.Machine
	p("# moat benchmark (%s profile)", rep.Profile)
	p("")
	p("Command: `%s`  ", rep.Command)
	p("Started %s, %.0f s; %s, %s, %d cores, %d GiB; %s; commit %s; load average at start %s.",
		rep.Started.Format("2006-01-02 15:04 UTC"), rep.Seconds, m.Kernel, m.CPU, m.Cores, m.MemoryGiB, m.Go, m.Commit, m.Load)
	if len(rep.Phases) > 0 {
		var parts []string
		for _, ph := range rep.Phases {
			parts = append(parts, fmt.Sprintf("%s %.0f s", ph.Name, ph.Seconds))
		}
		p("Time by phase: %s.", strings.Join(parts, ", "))
	}
	if m.CPUID != "" || m.Caches != "" || m.Mitigations != nil {
		p("")
		p("CPU: %s; caches %s. The kernel's mitigations:", cmp.Or(m.CPUID, "unknown"), cmp.Or(m.Caches, "unknown"))
		p("")
		switch {
		case m.Mitigations == nil:
			p("- unknown (no /sys/devices/system/cpu/vulnerabilities)")
		case len(m.Mitigations) == 0:
			p("- none: not affected by any vulnerability the kernel knows")
		}
		for _, k := range slices.Sorted(maps.Keys(m.Mitigations)) {
			p("- %s: %s", k, m.Mitigations[k])
		}
	}
	p("")
	bases := rep.baselines()
	p("## moat ÷ baseline, per busy core of the system under test")
	p("")
	p("Packets/s per core for packet scenarios, connections/s, transactions/s or Gbit/s per core for TCP, verifications/s per core for attestation; medians of the runs. In parentheses: the same ratio without dividing by CPU. Latency scenarios compare speeds: the baseline's median latency ÷ moat's.")
	p("")
	p("| scenario | %s |", strings.Join(bases, " | "))
	p("|---|%s", strings.Repeat("---|", len(bases)))
	for _, k := range rep.ratioKeys() {
		row := []string{k}
		for _, base := range bases {
			v, ok := rep.Ratios[base][k]
			a, aok := rep.RatiosAbsolute[base][k]
			cell := fmtRatio(v, ok)
			if aok {
				cell += " (" + fmtRatio(a, true) + ")"
			}
			row = append(row, cell)
		}
		p("| %s |", strings.Join(row, " | "))
	}
	p("")
	if len(rep.Targets) > 0 {
		p("## Targets")
		p("")
		p("Bound: the same ratio for the cheapest program that does the scenario's least work on the same path, measured in the same run: %s counts and drops every frame; %s keeps one LRU entry per flow, of moat's conntrack size and layout, with the flow's route in it (a known flow's frame costs one lookup, a new flow's a lookup, a FIB lookup and an insert; moat keeps two entries per flow). A bound below the target puts the target out of reach here for any system that does at least that work. In parentheses after the median: the lowest and highest ratio of moat's and the baseline's runs of the same repetition, and in how many repetitions that ratio meets the target.", SysXDPDrop, SysPlainCT)
		p("")
		p("| target | want | got (range over the runs; runs that meet it) | bound | |")
		p("|---|---|---|---|---|")
		for _, t := range rep.Targets {
			mark := t.Verdict()
			if !t.Met {
				mark = "**missed**" + strings.TrimPrefix(mark, "missed")
			}
			bound := "–"
			if t.BoundSystem != "" {
				bound = fmt.Sprintf("%.2f× (%s)", t.Bound, t.BoundSystem)
			}
			got := fmt.Sprintf("%.2f×", t.Got)
			if len(t.Runs) > 1 {
				got += fmt.Sprintf(" (%.1f–%.1f; %d of %d)", slices.Min(t.Runs), slices.Max(t.Runs), t.RunsMet(), len(t.Runs))
			}
			p("| %s | ≥ %.1f× | %s | %s | %s |", t.Name, t.Want, got, bound, mark)
		}
		p("")
	}
	if len(rep.ProgramTimes) > 0 {
		p("## XDP programs alone")
		p("")
		p("Mean run time of the system's XDP program per frame, from the kernel's BPF run-time statistics during a separate %v burst of the same traffic after each measurement (statistics cost two clock reads per run, included here: they are off while rates are measured); median of the bursts, and the share of the system's busy core that this accounts for at the measured rate. The rest is the kernel's work around the program (veth receive, redirect, waking the far end).", programBurst)
		p("")
		p("| scenario | flows | system | ns per frame | frames | share of busy core |")
		p("|---|---|---|---|---|---|")
		for _, pt := range rep.ProgramTimes {
			flows := flowsCell(pt.Flows)
			share := "–"
			if pt.CoreShare > 0 {
				share = fmt.Sprintf("%.0f%%", 100*pt.CoreShare)
			}
			p("| %s | %s | %s | %.0f | %s | %s |", pt.Scenario, flows, pt.System, pt.NsPerRun, fmtRate(float64(pt.Runs)), share)
		}
		p("")
	}
	if len(rep.CPUProfiles) > 0 {
		writeProfiles(p, rep.CPUProfiles)
	}
	p("## Measurements (median of runs; spread = min–max of the per-core figure)")
	p("")
	p("| scenario | flows | system | handled/s | per core | SUT cores | offered/s | conns/s | trans/s | Gbit/s | latency p50 / p99 µs | spread per core |")
	p("|---|---|---|---|---|---|---|---|---|---|---|---|")
	for i := range rep.Records {
		r := &rep.Records[i]
		if r.Kind != KindPackets && r.Kind != KindTCP {
			continue
		}
		flows := flowsCell(r.Flows)
		lat := "–"
		if r.Latency != nil {
			lat = fmt.Sprintf("%.0f / %.0f", r.Latency.P50, r.Latency.P99)
		}
		lo, hi := r.Spread()
		gb := "–"
		if r.Gbps > 0 {
			gb = fmt.Sprintf("%.2f", r.Gbps)
		}
		note := ""
		if r.Leaked > 0 {
			note = fmt.Sprintf(" **%d leaked**", r.Leaked)
		}
		p("| %s | %s | %s | %s%s | %s | %.2f | %s | %s | %s | %s | %s | %s–%s (%d runs) |",
			r.Scenario, flows, r.System, fmtRate(r.PPS), note, fmtRate(r.Primary()), r.CPU, fmtRate(r.OfferedPPS),
			fmtRate(r.ConnsPerSec), fmtRate(r.TPS), gb, lat, fmtRate(lo), fmtRate(hi), len(r.Runs))
	}
	p("")
	if rep.Find(ScTCPConnections, SysMoat, 0) != nil || rep.Find(ScTCPRR, SysMoat, 0) != nil {
		clients := "the profile's" // a report made before TCPClients was kept
		if rep.TCPClients > 0 {
			clients = fmt.Sprint(rep.TCPClients)
		}
		p("Latencies are per exchange. For %s, a connection's connect, one-byte exchange and close, timed by each of %s clients that connect one after another on the load core: they saturate that core, so the latency is mostly their own queueing (about the clients ÷ the connection rate), nearly the same for every system. For %s, one connection's one-byte round trip, one at a time: the latency the system adds (latency.svg plots it).",
			ScTCPConnections, clients, ScTCPRR)
		p("")
	}
	rep.writeLedgerMarkdown(p)
	rep.writeDropMarkdown(p)
	rep.writeControlMarkdown(p)
	p("## How the measurement was isolated")
	p("")
	for _, n := range rep.Isolation {
		p("- %s", n)
	}
	if len(rep.Errors) > 0 {
		p("")
		p("## Errors")
		p("")
		for _, e := range rep.Errors {
			p("- %s", e)
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// writeLedgerMarkdown says where the frames of each packet measurement went (nothing
// for a report made before the ledger was kept).
func (rep *Report) writeLedgerMarkdown(p func(string, ...any)) {
	first := true
	for i := range rep.Records {
		r := &rep.Records[i]
		l := r.Frames
		if l == nil {
			continue
		}
		if first {
			p("## Where the frames went (all runs)")
			p("")
			p("The frames the generators sent: counted by the sinks on the far ends, dropped by the system under test (its own count), refused on receive (a full gateway interface ring, or for nftables its full CPUMAP queue: lost before the system saw them, so they cost it nothing), refused on transmit (the far end's ring full: lost after the system had handled them, and not counted in its rate), and the rest: frames in flight when the counters were read, less the namespaces' own frames counted in.")
			p("")
			p("| scenario | flows | system | sent | delivered | dropped by the system | refused on receive | refused on transmit | rest |")
			p("|---|---|---|---|---|---|---|---|---|")
			first = false
		}
		share := func(n int64) string {
			if l.Sent == 0 {
				return fmt.Sprint(n)
			}
			if s := fmt.Sprintf("%.1f%%", 100*float64(n)/float64(l.Sent)); s != "-0.0%" {
				return s
			}
			return "0.0%"
		}
		p("| %s | %s | %s | %s | %s | %s | %s | %s | %s |", r.Scenario, flowsCell(r.Flows), r.System, fmtCount(l.Sent),
			share(int64(l.Delivered)), share(int64(l.Dropped)), share(int64(l.RefusedIn)), fmtCount(l.RefusedOut), share(l.Rest()))
	}
	if !first {
		p("")
	}
}

// writeDropMarkdown lists, for the systems that count their drops by reason, what
// they dropped in each packet scenario.
func (rep *Report) writeDropMarkdown(p func(string, ...any)) {
	first := true
	for i := range rep.Records {
		r := &rep.Records[i]
		if len(r.DropReasons) == 0 {
			continue
		}
		if first {
			p("## Drops by reason (the system's own counters, all runs)")
			p("")
			p("In a forwarding scenario every drop is counted against the system (the namespaces' own IPv6 chatter, dropped as IPv6, is some of them); in an isolation scenario, the reasons show which rule refused the probes.")
			p("")
			p("| scenario | flows | system | drops |")
			p("|---|---|---|---|")
			first = false
		}
		reasons := make([]string, 0, len(r.DropReasons))
		for k := range r.DropReasons {
			reasons = append(reasons, k)
		}
		sort.Slice(reasons, func(a, b int) bool {
			if r.DropReasons[reasons[a]] != r.DropReasons[reasons[b]] {
				return r.DropReasons[reasons[a]] > r.DropReasons[reasons[b]]
			}
			return reasons[a] < reasons[b]
		})
		var parts []string
		for _, k := range reasons {
			parts = append(parts, k+" "+fmtCount(r.DropReasons[k]))
		}
		flows := flowsCell(r.Flows)
		p("| %s | %s | %s | %s |", r.Scenario, flows, r.System, strings.Join(parts, ", "))
	}
	if !first {
		p("")
	}
}

// writeControlMarkdown writes the records that are neither packet rates nor TCP
// through the gateway: admission and eviction latency, attestation verifications and
// the overlay's throughput.
func (rep *Report) writeControlMarkdown(p func(string, ...any)) {
	var rows []*Record
	for i := range rep.Records {
		if r := &rep.Records[i]; r.Kind == KindLatency || r.Kind == KindOps || r.Kind == KindThroughput {
			rows = append(rows, r)
		}
	}
	if len(rows) == 0 {
		return
	}
	p("## Admission, eviction, attestation and overlay (median of runs)")
	p("")
	p("| scenario | system | figure | per busy core | cores | runs |")
	p("|---|---|---|---|---|---|")
	for _, r := range rows {
		fig, per, cores := "–", "–", "–"
		switch r.Kind {
		case KindLatency:
			if l := r.Latency; l != nil {
				fig = fmt.Sprintf("p50 %s, p90 %s, p99 %s", fmtMicros(l.P50), fmtMicros(l.P90), fmtMicros(l.P99))
			}
		case KindOps:
			fig, per = fmtRate(r.OpsPerSec)+"/s", fmtRate(r.OpsPerCore)+"/s"
		case KindThroughput:
			fig, per = fmt.Sprintf("%.2f Gbit/s", r.Gbps), fmt.Sprintf("%.2f Gbit/s", r.GbpsPerCore)
		}
		if r.CPU > 0 {
			cores = fmt.Sprintf("%.2f", r.CPU)
		}
		p("| %s | %s | %s | %s | %s | %d |", r.Scenario, r.System, fig, per, cores, len(r.Runs))
	}
	p("")
	for _, r := range rows {
		for _, n := range r.Notes {
			p("- %s, %s: %s", r.Scenario, r.System, n)
		}
	}
	p("")
}

// fmtMicros prints a duration given in microseconds.
func fmtMicros(us float64) string {
	switch {
	case us >= 1e6:
		return fmt.Sprintf("%.2f s", us/1e6)
	case us >= 1e3:
		return fmt.Sprintf("%.2f ms", us/1e3)
	default:
		return fmt.Sprintf("%.0f µs", us)
	}
}

// writeProfiles writes the CPU profiles: per part of the path, the ns per frame of
// the rate measurement and the share of the system's samples; then the top symbols.
func writeProfiles(p func(string, ...any), pfs []CPUProfile) {
	parts := partsIn(pfs)
	p("## Where the system's core goes (perf)")
	p("")
	p("Samples of the system-under-test core (perf, cpu-clock at %d Hz) during a separate %v burst of each scenario's traffic in the first repetition, counting only the threads whose run time the per-core rates count, sorted by kernel symbol into the parts of a frame's path (bench/cpuprofile.go). Each cell: ns per frame (the part's share of samples × the per-frame time of the rate measurement), then the share; %s draws the shares.", profileHz, profileBurst, ProfileSVG)
	p("")
	head := "| scenario | flows | system | samples | ns per frame |"
	rule := "|---|---|---|---|---|"
	for _, name := range parts {
		head += " " + name + " |"
		rule += "---|"
	}
	p("%s", head)
	p("%s", rule)
	for _, pf := range pfs {
		flows := flowsCell(pf.Flows)
		row := fmt.Sprintf("| %s | %s | %s | %d | %s |", pf.Scenario, flows, pf.System, pf.Samples, nsOrDash(pf.nsPerFrame()))
		for _, name := range parts {
			cell := "–"
			if pp, ok := pf.part(name); ok {
				cell = fmt.Sprintf("%s (%.0f%%)", nsOrDash(pp.NsPerFrame), 100*pp.Share)
			}
			row += " " + cell + " |"
		}
		p("%s", row)
	}
	p("")
	p("Top symbols of each profile (share of the system's samples):")
	p("")
	p("| scenario | flows | system | symbols |")
	p("|---|---|---|---|")
	for _, pf := range pfs {
		flows := flowsCell(pf.Flows)
		var syms []string
		for _, t := range pf.Top {
			syms = append(syms, fmt.Sprintf("%s %.0f%%", t.Name, 100*t.Share))
		}
		p("| %s | %s | %s | %s |", pf.Scenario, flows, pf.System, strings.Join(syms, ", "))
	}
	p("")
	if !slices.ContainsFunc(pfs, func(pf CPUProfile) bool { return len(pf.Lines) > 0 }) {
		return
	}
	p("moat's program by source line: the samples inside its JIT image, each mapped to the source line its instructions came from through the program's line table (an inlined function's line counts for every call site, and code the compiler merged from several places is counted under one of them); ns per frame and share of the system's samples, the lines with the most samples first:")
	p("")
	p("| scenario | flows | source line | ns per frame | share | code |")
	p("|---|---|---|---|---|---|")
	for _, pf := range pfs {
		for _, l := range pf.Lines {
			p("| %s | %s | %s | %s | %.1f%% | `%s` |", pf.Scenario, flowsCell(pf.Flows), l.Source, nsOrDash(l.NsPerFrame), 100*l.Share,
				strings.ReplaceAll(l.Text, "|", "\\|"))
		}
	}
	p("")
}

// nsOrDash formats a time per frame in ns, or a dash when there is none (no rate
// measurement of the same scenario to scale the shares by).
func nsOrDash(ns float64) string {
	if ns <= 0 {
		return "–"
	}
	return fmt.Sprintf("%.0f ns", ns)
}

// flowsCell is a table's flow count: the number, or a dash for scenarios without one.
func flowsCell(n int) string {
	if n <= 0 {
		return "–"
	}
	return fmt.Sprint(n)
}
