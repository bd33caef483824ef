package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"golang.org/x/sys/unix"
)

// A rate per busy core says how much of a core a frame costs, not what in the core
// costs it. With Options.CPUProfile the bench samples the system-under-test core with
// perf (cpu-clock, so it works in a VM without hardware counters) during a separate
// burst of each packet scenario, keeps the samples of exactly the threads whose run
// time it counts, and sorts their kernel symbols into the parts of a frame's path:
// the system's own program, the BPF map lookups it calls, the veth receive, the
// redirect, waking the receiving end, and for nftables the stack's parts. Sampling
// costs the core an interrupt every 100 µs, so it never runs while rates are
// measured; a profile's ns per frame are its shares of the rate measurement's
// per-frame time.
//
// cpu-clock samples come from a timer interrupt, so a sample due while interrupts
// are off is taken where they come back on: the time of a region that runs with
// interrupts off lands on the symbol that ends it. That is why waking the receiver is
// read off __napi_schedule, which holds the wake-up (and its inter-processor
// interrupt) inside such a region, and why a spin_unlock_irqrestore can collect the
// time of the locked code before it.

// profileBurst is how long the traffic of a CPU profile runs; perf samples all of it.
const profileBurst = time.Second

// profileHz is perf's sampling rate on the SUT core.
const profileHz = 10000

// CPUProfile is where a system's core time went in one packet scenario.
type CPUProfile struct {
	Scenario string `json:"scenario"`
	System   string `json:"system"`
	Flows    int    `json:"flows,omitempty"`
	Samples  int    `json:"samples"` // samples of the system's threads
	// Parts are the shares of those samples by part of the path, largest first;
	// NsPerFrame is the share of the scenario's per-frame time (1 / per-core rate).
	Parts []ProfilePart `json:"parts"`
	// Top lists the symbols with the most samples, for what the parts hide.
	Top []ProfilePart `json:"top"`
	// Lines are the source lines of moat's program with the most samples, through
	// the program's JIT line table (moat's profiles only).
	Lines []ProgramLine `json:"program_lines,omitempty"`
}

// ProgramLine is one source line of an XDP program in a profile: Share is of the
// system's samples, as a part's is.
type ProgramLine struct {
	Source     string  `json:"source"` // file (under bpf/) and line number
	Text       string  `json:"text"`
	Share      float64 `json:"share"`
	NsPerFrame float64 `json:"ns_per_frame,omitempty"`
}

// ProfilePart is one part of a profile (or one symbol, in Top).
type ProfilePart struct {
	Name       string  `json:"name"`
	Share      float64 `json:"share"`
	NsPerFrame float64 `json:"ns_per_frame,omitempty"`
}

// part returns the profile's part of that name (false: the profile has none).
func (pf *CPUProfile) part(name string) (ProfilePart, bool) {
	i := slices.IndexFunc(pf.Parts, func(pp ProfilePart) bool { return pp.Name == name })
	if i < 0 {
		return ProfilePart{}, false
	}
	return pf.Parts[i], true
}

// nsPerFrame is the profile's whole time per frame (0 until computeProfileTimes).
func (pf *CPUProfile) nsPerFrame() float64 {
	var ns float64
	for _, pp := range pf.Parts {
		ns += pp.NsPerFrame
	}
	return ns
}

// partsIn lists, in report order, the parts that any of pfs has.
func partsIn(pfs []CPUProfile) []string {
	var parts []string
	for _, name := range ProfileParts {
		if slices.ContainsFunc(pfs, func(pf CPUProfile) bool { _, ok := pf.part(name); return ok }) {
			parts = append(parts, name)
		}
	}
	return parts
}

// Parts of a frame's path, in the order the report shows them.
const (
	PartProgram   = "program"             // the system's XDP program itself
	PartMapLookup = "map lookups"         // hash map lookups the program calls
	PartVethRecv  = "veth receive"        // NAPI poll of the receiving veth, the XDP run loop
	PartRedirect  = "redirect"            // XDP_REDIRECT: devmap enqueue, bulk transmit to the egress veth
	PartWake      = "waking the receiver" // scheduling the receiving end's NAPI (a wake-up on another core)
	PartNetfilter = "netfilter"           // nftables rules, NAT
	PartConntrack = "conntrack"           // the kernel's connection tracking
	PartRouting   = "routing"             // FIB lookups, route input and output
	PartStack     = "skb, stack"          // skbs built from frames (the CPUMAP kthread) and freed, GRO, IP receive and output
	PartOther     = "other"
)

// ProfileParts lists the parts in report order.
var ProfileParts = []string{PartProgram, PartMapLookup, PartVethRecv, PartRedirect, PartWake,
	PartNetfilter, PartConntrack, PartRouting, PartStack, PartOther}

// partOf names the part of the path a kernel symbol belongs to. The lists hold the
// symbols these paths spend their time in on this kernel (6.18); an unknown symbol
// is "other", never guessed.
func partOf(sym string) string {
	switch {
	case strings.HasPrefix(sym, "bpf_prog_"):
		return PartProgram
	case strings.HasPrefix(sym, "htab_"), strings.HasPrefix(sym, "__htab_"), sym == "lookup_nulls_elem_raw",
		sym == "lookup_elem_raw", strings.HasPrefix(sym, "bpf_lru_"):
		return PartMapLookup
	case sym == "__napi_schedule", sym == "__napi_schedule_irqoff", sym == "try_to_wake_up",
		sym == "wake_up_process", strings.HasPrefix(sym, "ttwu_"), sym == "__smp_call_single_queue",
		sym == "native_send_call_func_single_ipi", sym == "kvm_send_ipi_mask":
		return PartWake
	case strings.HasPrefix(sym, "veth_xdp_rcv"), sym == "veth_poll", sym == "__napi_poll",
		strings.HasPrefix(sym, "napi_threaded_poll"), sym == "bpf_dispatcher_xdp_func", sym == "bpf_dispatcher_xdp",
		strings.HasPrefix(sym, "page_pool_"), sym == "xdp_return_frame", sym == "xdp_return_frame_rx_napi",
		sym == "__xdp_return":
		return PartVethRecv
	case strings.HasPrefix(sym, "xdp_do_"), strings.HasPrefix(sym, "dev_map_"), strings.HasPrefix(sym, "dev_hash_map_"),
		strings.HasPrefix(sym, "bq_"), sym == "veth_xdp_xmit", sym == "veth_ndo_xdp_xmit", sym == "__dev_flush",
		strings.HasPrefix(sym, "__xdp_enqueue"):
		return PartRedirect
	case strings.HasPrefix(sym, "nft_"), strings.HasPrefix(sym, "nf_hook"), strings.HasPrefix(sym, "nf_nat_"),
		strings.HasPrefix(sym, "__nf_nat"), strings.HasPrefix(sym, "nf_tables_"), sym == "l4proto_manip_pkt":
		return PartNetfilter
	case strings.HasPrefix(sym, "nf_conntrack"), strings.HasPrefix(sym, "__nf_conntrack"), strings.HasPrefix(sym, "nf_ct_"),
		strings.HasPrefix(sym, "__nf_ct_"), strings.HasPrefix(sym, "tcp_in_window"), sym == "hash_conntrack_raw",
		strings.HasPrefix(sym, "ipv4_conntrack"), sym == "nf_confirm", strings.HasPrefix(sym, "__siphash"):
		return PartConntrack
	case strings.HasPrefix(sym, "fib"), strings.HasPrefix(sym, "ip_route_"), strings.HasPrefix(sym, "__fib"),
		strings.HasPrefix(sym, "ip_mkroute"), strings.HasPrefix(sym, "bpf_ipv4_fib"), strings.HasPrefix(sym, "l3mdev"):
		return PartRouting
	case strings.Contains(sym, "skb"), strings.HasPrefix(sym, "ip_"), strings.HasPrefix(sym, "gro_"),
		strings.HasPrefix(sym, "dev_gro"), strings.HasPrefix(sym, "__netif"), strings.HasPrefix(sym, "netif_"),
		strings.HasPrefix(sym, "__dev_queue_xmit"), sym == "dev_hard_start_xmit", sym == "veth_xmit",
		strings.HasPrefix(sym, "inet_gro"), strings.HasPrefix(sym, "tcp4_gro"), strings.HasPrefix(sym, "tcp_gro"),
		strings.Contains(sym, "kmem_cache"), sym == "__inet_lookup_established", strings.HasPrefix(sym, "cpu_map_"),
		strings.HasPrefix(sym, "__ip_"), strings.HasPrefix(sym, "neigh_"), strings.HasPrefix(sym, "eth_"):
		return PartStack
	}
	return PartOther
}

// perfLine is one line of `perf report --sort pid,sym --show-nr-samples --stdio`:
// "    25.70%          1368     5773:napi/ca-81680    [k] lookup_nulls_elem_raw"
// (share, samples, thread id and name, symbol).
var perfLine = regexp.MustCompile(`^\s*[0-9.]+%\s+(\d+)\s+(\d+):\S*\s+\[[^\]]+\]\s+(\S+)`)

// parsePerfReport reads such a report and returns the profile of the threads in tids:
// their samples, the shares of those samples by part of the path, and the top
// symbols. Samples of other threads (perf itself, the harness) are left out, as the
// busy-core figures leave out their run time.
func parsePerfReport(out string, tids []int) (CPUProfile, error) {
	want := map[int]bool{}
	for _, t := range tids {
		want[t] = true
	}
	parts := map[string]int{}
	syms := map[string]int{}
	var p CPUProfile
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		m := perfLine.FindStringSubmatch(sc.Text())
		if m == nil {
			continue
		}
		n, err := strconv.Atoi(m[1])
		if err == nil && n > math.MaxInt32 {
			// A second of sampling at profileHz has a few thousand: bounding the
			// count keeps the sums below from wrapping.
			err = fmt.Errorf("%d samples", n)
		}
		if err != nil {
			return p, fmt.Errorf("perf report line %q: %w", sc.Text(), err)
		}
		if tid, _ := strconv.Atoi(m[2]); !want[tid] || n == 0 {
			continue // another thread's, or a symbol with no sample to share
		}
		p.Samples += n
		parts[partOf(m[3])] += n
		syms[m[3]] += n
	}
	if err := sc.Err(); err != nil {
		return p, err
	}
	if p.Samples == 0 {
		return p, fmt.Errorf("perf recorded no sample of threads %v", tids)
	}
	share := func(n int) float64 { return float64(n) / float64(p.Samples) }
	for _, name := range ProfileParts {
		if n := parts[name]; n > 0 {
			p.Parts = append(p.Parts, ProfilePart{Name: name, Share: share(n)})
		}
	}
	sort.SliceStable(p.Parts, func(i, j int) bool { return p.Parts[i].Share > p.Parts[j].Share })
	for s, n := range syms {
		p.Top = append(p.Top, ProfilePart{Name: s, Share: share(n)})
	}
	sort.Slice(p.Top, func(i, j int) bool {
		if p.Top[i].Share != p.Top[j].Share {
			return p.Top[i].Share > p.Top[j].Share
		}
		return p.Top[i].Name < p.Top[j].Name
	})
	if len(p.Top) > profileTop {
		p.Top = p.Top[:profileTop]
	}
	return p, nil
}

// profileTop is how many symbols a profile lists.
const profileTop = 8

// measureCPUProfile runs a fresh burst of sc through sys while perf samples the SUT
// core, and returns where the system's threads spent it.
func (b *bencher) measureCPUProfile(ctx context.Context, sys *sut, sc packetScenario) (CPUProfile, error) {
	ts, err := b.freshTraffic(ctx, sys, sc)
	if err != nil {
		return CPUProfile{}, err
	}
	tids, err := sys.tids()
	if err != nil {
		return CPUProfile{}, err
	}
	data := filepath.Join(b.tmp, "perf.data")
	ctl, ack := filepath.Join(b.tmp, "perf.ctl"), filepath.Join(b.tmp, "perf.ack")
	defer os.Remove(data)
	for _, f := range []string{ctl, ack} {
		os.Remove(f)
		if err := unix.Mkfifo(f, 0o600); err != nil {
			return CPUProfile{}, fmt.Errorf("perf control fifo: %w", err)
		}
		defer os.Remove(f)
	}
	// perf starts with its events off (-D -1) and samples from the moment it
	// acknowledges "enable" on its control fifo: the burst starts then, however long
	// perf took to start on a loaded machine. SIGINT ends the recording.
	rec := exec.CommandContext(ctx, "perf", "record", "-q", "-e", "cpu-clock", "-F", strconv.Itoa(profileHz),
		"-C", strconv.Itoa(sutCPU), "-o", data, "-D", "-1", "--control", "fifo:"+ctl+","+ack, "--", "sleep", "600")
	var recErr strings.Builder
	rec.Stderr = &recErr
	if err := rec.Start(); err != nil {
		return CPUProfile{}, fmt.Errorf("perf record: %w", err)
	}
	// exited is closed when perf has exited, waitErr says how: a closed channel can
	// be waited on by perfEnable and by stop alike.
	exited := make(chan struct{})
	var waitErr error
	go func() { waitErr = rec.Wait(); close(exited) }()
	stop := func() error {
		rec.Process.Signal(os.Interrupt)
		select {
		case <-exited:
			if waitErr != nil && !endedBySignal(waitErr) {
				return fmt.Errorf("perf record: %w: %s", waitErr, strings.TrimSpace(recErr.String()))
			}
			return nil
		case <-time.After(30 * time.Second):
			rec.Process.Kill()
			<-exited
			return errors.New("perf record did not stop on SIGINT")
		}
	}
	if err := perfEnable(ctl, ack, exited, 30*time.Second); err != nil {
		return CPUProfile{}, errors.Join(fmt.Errorf("perf record: %w", err), stop())
	}
	_, trafficErr := b.runTraffic(ctx, ts, profileBurst)
	if err := errors.Join(trafficErr, stop()); err != nil {
		return CPUProfile{}, err
	}
	rep, err := exec.CommandContext(ctx, "perf", "report", "-i", data, "--no-children", "--sort", "pid,sym",
		"--stdio", "-g", "none", "--show-nr-samples").Output()
	if err != nil {
		return CPUProfile{}, fmt.Errorf("perf report: %w", err)
	}
	p, err := parsePerfReport(string(rep), tids)
	if err != nil {
		return CPUProfile{}, err
	}
	p.Scenario, p.System, p.Flows = sc.name, sys.name, sc.flows
	if sys.name == SysMoat && sys.prog != nil {
		table, err := newProgramLines(sys.prog)
		if err != nil {
			return CPUProfile{}, fmt.Errorf("source lines of %s's program: %w", sys.name, err)
		}
		script, err := exec.CommandContext(ctx, "perf", "script", "-i", data, "-F", "tid,ip").Output()
		if err != nil {
			return CPUProfile{}, fmt.Errorf("perf script: %w", err)
		}
		if p.Lines, err = table.profile(string(script), tids, p.Samples); err != nil {
			return CPUProfile{}, err
		}
	}
	return p, nil
}

// programLines maps the addresses of a loaded program's JIT image to its source lines.
type programLines struct {
	funcs [][2]uint64 // [start, end) of each function's image
	addrs []uint64    // the JIT address of each line, ascending
	lines []*btf.Line
}

// newProgramLines reads prog's line table: the kernel keeps the BTF line of each
// instruction that starts a source line, and the JIT address it became.
func newProgramLines(prog *ebpf.Program) (*programLines, error) {
	info, err := prog.Info()
	if err != nil {
		return nil, err
	}
	lines, err := info.LineInfos()
	if err != nil {
		return nil, fmt.Errorf("line infos: %w", err)
	}
	addrs, ok := info.JitedLineInfos()
	if !ok || len(addrs) != len(lines) {
		return nil, fmt.Errorf("%d JIT addresses for %d lines", len(addrs), len(lines))
	}
	ksyms, ok := info.JitedKsymAddrs()
	lens, lok := info.JitedFuncLens()
	if !ok || !lok || len(ksyms) != len(lens) {
		return nil, fmt.Errorf("JIT images: %d addresses, %d lengths", len(ksyms), len(lens))
	}
	pl := &programLines{}
	for i, k := range ksyms {
		pl.funcs = append(pl.funcs, [2]uint64{uint64(k), uint64(k) + uint64(lens[i])})
	}
	order := make([]int, len(addrs))
	for i := range order {
		order[i] = i
	}
	sort.SliceStable(order, func(a, b int) bool { return addrs[order[a]] < addrs[order[b]] })
	for _, i := range order {
		pl.addrs = append(pl.addrs, addrs[i])
		pl.lines = append(pl.lines, lines[i].Line)
	}
	return pl, nil
}

// lineAt returns the source line whose code holds ip, or nil when ip is outside the
// program.
func (pl *programLines) lineAt(ip uint64) *btf.Line {
	if !slices.ContainsFunc(pl.funcs, func(f [2]uint64) bool { return ip >= f[0] && ip < f[1] }) {
		return nil
	}
	i := sort.Search(len(pl.addrs), func(i int) bool { return pl.addrs[i] > ip }) - 1
	if i < 0 {
		return nil
	}
	return pl.lines[i]
}

// programLinesTop is how many source lines a profile lists.
const programLinesTop = 12

// profile reads `perf script -F tid,ip` output and returns the source lines with the
// most samples of the threads tids, each with its share of total samples.
func (pl *programLines) profile(script string, tids []int, total int) ([]ProgramLine, error) {
	if total <= 0 {
		return nil, fmt.Errorf("%d samples", total)
	}
	want := map[int]bool{}
	for _, t := range tids {
		want[t] = true
	}
	counts := map[*btf.Line]int{}
	sc := bufio.NewScanner(strings.NewReader(script))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 2 {
			continue
		}
		tid, err := strconv.Atoi(f[0])
		if err != nil || !want[tid] {
			continue
		}
		ip, err := strconv.ParseUint(f[1], 16, 64)
		if err != nil {
			return nil, fmt.Errorf("perf script line %q: %w", sc.Text(), err)
		}
		if l := pl.lineAt(ip); l != nil {
			counts[l]++
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	// Lines of the same source line (an inlined helper's, from several call sites)
	// add up.
	bySource := map[string]*ProgramLine{}
	for l, n := range counts {
		src := fmt.Sprintf("%s:%d", bpfRelative(l.FileName()), l.LineNumber())
		line, ok := bySource[src]
		if !ok {
			text := strings.Join(strings.Fields(l.Line()), " ")
			if l.LineNumber() == 0 || text == "" {
				text = "(no source line: code the compiler gave none)"
			}
			line = &ProgramLine{Source: src, Text: text}
			bySource[src] = line
		}
		line.Share += float64(n) / float64(total)
	}
	var out []ProgramLine
	for _, l := range bySource {
		out = append(out, *l)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Share != out[j].Share {
			return out[i].Share > out[j].Share
		}
		return out[i].Source < out[j].Source
	})
	return out[:min(len(out), programLinesTop)], nil
}

// bpfRelative shortens a source path that BTF holds as compiled to its part from bpf/.
func bpfRelative(path string) string {
	if i := strings.LastIndex(path, "bpf/"); i >= 0 {
		return path[i:]
	}
	return filepath.Base(path)
}

// endedBySignal says whether a perf record exited as it does when stopped: on SIGINT
// it ends its workload with SIGTERM, then dies of the workload's signal. A recording
// cut short any other way fails at `perf report`.
func endedBySignal(err error) bool {
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		return false
	}
	ws, ok := ee.Sys().(syscall.WaitStatus)
	return ok && ws.Signaled() && (ws.Signal() == syscall.SIGTERM || ws.Signal() == syscall.SIGINT)
}

// perfEnable turns on the events of a `perf record -D -1 --control fifo:ctl,ack` and
// returns once perf has acknowledged, or with an error when perf exited or did not
// answer within timeout. perf opens ctl at start and then ack for writing, which
// waits for a reader: ack is opened first, read-write so that it never blocks.
func perfEnable(ctl, ack string, exited <-chan struct{}, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	r, err := os.OpenFile(ack, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer r.Close()
	var w *os.File
	for w == nil {
		// Non-blocking: fails with ENXIO until perf has opened its end.
		f, err := os.OpenFile(ctl, os.O_WRONLY|unix.O_NONBLOCK, 0)
		switch {
		case err == nil:
			w = f
		case !errors.Is(err, unix.ENXIO):
			return err
		case time.Now().After(deadline):
			return errors.New("perf did not open its control fifo")
		default:
			select {
			case <-exited:
				return errors.New("perf exited before it listened")
			case <-time.After(10 * time.Millisecond):
			}
		}
	}
	defer w.Close()
	if _, err := w.WriteString("enable\n"); err != nil {
		return err
	}
	if err := r.SetReadDeadline(deadline); err != nil {
		return err
	}
	buf := make([]byte, 16)
	n, err := r.Read(buf)
	if err != nil {
		return fmt.Errorf("perf did not acknowledge enable: %w", err)
	}
	if !strings.HasPrefix(string(buf[:n]), "ack") {
		return fmt.Errorf("perf answered %q to enable", buf[:n])
	}
	return nil
}

// perfAvailable says whether perf is installed. (Whether it may sample is found out
// by the first profile: perf's own error goes into the report's errors.)
func perfAvailable() error {
	if _, err := exec.LookPath("perf"); err != nil {
		return fmt.Errorf("perf is not installed (apt-get install linux-perf)")
	}
	return nil
}

// computeProfileTimes turns each profile's shares into ns per frame of the rate
// measurement of the same scenario and system.
func (rep *Report) computeProfileTimes() {
	for i := range rep.CPUProfiles {
		pf := &rep.CPUProfiles[i]
		r := rep.Find(pf.Scenario, pf.System, pf.Flows)
		if r == nil || r.PPSPerCore <= 0 {
			continue
		}
		frame := 1e9 / r.PPSPerCore
		for j := range pf.Parts {
			pf.Parts[j].NsPerFrame = pf.Parts[j].Share * frame
		}
		for j := range pf.Top {
			pf.Top[j].NsPerFrame = pf.Top[j].Share * frame
		}
		for j := range pf.Lines {
			pf.Lines[j].NsPerFrame = pf.Lines[j].Share * frame
		}
	}
}
