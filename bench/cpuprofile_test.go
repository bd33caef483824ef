package bench

import (
	"context"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/seed4c/moat/internal/netns"
)

// A report as `perf report --sort pid,sym --show-nr-samples --stdio -g none` printed
// it during an established run of moat (thread 5773 is its NAPI thread), with a line
// of the harness's own process and one of an unrelated thread.
const moatPerfReport = `# Samples: 5K of event 'cpu-clock'
#
# Overhead       Samples      Pid:Command          Symbol
# ........  ............  .......................  ..................
#
    25.70%          1368     5773:napi/ca-81680    [k] lookup_nulls_elem_raw
    17.17%           914     5773:napi/ca-81680    [k] bpf_prog_3499316af82fcbd7_xdp_gateway
     9.47%           504     5773:napi/ca-81680    [k] __napi_schedule
     9.30%           495     5773:napi/ca-81680    [k] veth_xdp_rcv
     6.78%           361     5773:napi/ca-81680    [k] veth_xdp_rcv_one
     2.82%           150     5773:napi/ca-81680    [k] xdp_do_redirect
     2.16%           115     5773:napi/ca-81680    [k] htab_map_hash
     2.01%           107     5773:napi/ca-81680    [k] veth_xdp_xmit
     1.15%            61     5802:moat             [k] generic_map_lookup_batch
     0.40%            21     5773:napi/ca-81680    [k] srso_alias_return_thunk
     0.10%             5       17:ksoftirqd/1      [k] __napi_schedule

`

func TestParsePerfReportKeepsTheSystemsThreads(t *testing.T) {
	p, err := parsePerfReport(moatPerfReport, []int{5773})
	if err != nil {
		t.Fatal(err)
	}
	const want = 1368 + 914 + 504 + 495 + 361 + 150 + 115 + 107 + 21
	if p.Samples != want {
		t.Fatalf("samples = %d, want %d (the harness's and ksoftirqd's left out)", p.Samples, want)
	}
	shares := map[string]float64{}
	var sum float64
	for _, pp := range p.Parts {
		shares[pp.Name] = pp.Share
		sum += pp.Share
	}
	if math.Abs(sum-1) > 1e-9 {
		t.Errorf("shares sum to %v, want 1", sum)
	}
	for part, n := range map[string]int{
		PartMapLookup: 1368 + 115,
		PartProgram:   914,
		PartWake:      504,
		PartVethRecv:  495 + 361,
		PartRedirect:  150 + 107,
		PartOther:     21,
	} {
		if got, want := shares[part], float64(n)/float64(want); math.Abs(got-want) > 1e-9 {
			t.Errorf("%s share = %.4f, want %.4f", part, got, want)
		}
	}
	for i := 1; i < len(p.Parts); i++ {
		if p.Parts[i].Share > p.Parts[i-1].Share {
			t.Errorf("parts not largest first: %v", p.Parts)
		}
	}
	if len(p.Top) != profileTop || p.Top[0].Name != "lookup_nulls_elem_raw" || p.Top[1].Name != "bpf_prog_3499316af82fcbd7_xdp_gateway" {
		t.Errorf("top symbols = %v", p.Top)
	}
	for _, s := range p.Top {
		if s.Name == "generic_map_lookup_batch" {
			t.Errorf("the harness's symbol is in the system's top: %v", p.Top)
		}
	}
}

func TestParsePerfReportRefusesAProfileWithoutTheSystem(t *testing.T) {
	if _, err := parsePerfReport(moatPerfReport, []int{4242}); err == nil {
		t.Fatal("a report without a sample of the system's threads gave a profile")
	}
	if _, err := parsePerfReport("", []int{5773}); err == nil {
		t.Fatal("an empty report gave a profile")
	}
}

// nftables' path, as perf names it in the CPUMAP kthread: every symbol lands in the
// part an operator would look for it in.
func TestPartOfNftablesPath(t *testing.T) {
	for sym, want := range map[string]string{
		"__napi_schedule":             PartWake,
		"nft_do_chain":                PartNetfilter,
		"nf_hook_slow":                PartNetfilter,
		"nf_nat_ipv4_manip_pkt":       PartNetfilter,
		"l4proto_manip_pkt":           PartNetfilter,
		"__nf_conntrack_find_get":     PartConntrack,
		"nf_conntrack_tcp_packet":     PartConntrack,
		"__siphash_unaligned":         PartConntrack,
		"fib_table_lookup":            PartRouting,
		"fib4_rule_action":            PartRouting,
		"ip_route_input_slow":         PartRouting,
		"__fib_validate_source":       PartRouting,
		"cpu_map_kthread_run":         PartStack,
		"veth_xmit":                   PartStack,
		"ip_forward":                  PartStack,
		"napi_skb_cache_get_bulk":     PartStack,
		"__kmem_cache_alloc_bulk":     PartStack,
		"__inet_lookup_established":   PartStack,
		"bpf_prog_efbac497c6e464a0_x": PartProgram,
		"dev_hash_map_redirect":       PartRedirect,
		"bq_xmit_all":                 PartRedirect,
		"veth_poll":                   PartVethRecv,
		"page_pool_put_unrefed_page":  PartVethRecv,
		"some_unknown_symbol":         PartOther,
		"__pi_memcpy":                 PartOther,
	} {
		if got := partOf(sym); got != want {
			t.Errorf("partOf(%s) = %q, want %q", sym, got, want)
		}
	}
}

func TestProfileTimesScaleByTheRate(t *testing.T) {
	rep := &Report{
		Records: []Record{{Scenario: ScEstablished, System: SysMoat, Flows: 4096, Kind: KindPackets, Sample: Sample{PPSPerCore: 2e6}}},
		CPUProfiles: []CPUProfile{{Scenario: ScEstablished, System: SysMoat, Flows: 4096,
			Parts: []ProfilePart{{Name: PartMapLookup, Share: 0.25}, {Name: PartProgram, Share: 0.75}},
			Top:   []ProfilePart{{Name: "lookup_nulls_elem_raw", Share: 0.2}}}},
	}
	rep.computeProfileTimes()
	pf := rep.CPUProfiles[0]
	// 2 Mpps per core: 500 ns per frame.
	if pf.Parts[0].NsPerFrame != 125 || pf.Parts[1].NsPerFrame != 375 || pf.Top[0].NsPerFrame != 100 {
		t.Fatalf("ns per frame = %v, %v; want 125, 375 and 100", pf.Parts, pf.Top)
	}
	var md strings.Builder
	writeProfiles(func(f string, a ...any) { fmt.Fprintf(&md, f+"\n", a...) }, rep.CPUProfiles)
	for _, want := range []string{"| established | 4096 | moat |", "125 ns (25%)", "375 ns (75%)", "lookup_nulls_elem_raw 20%"} {
		if !strings.Contains(md.String(), want) {
			t.Errorf("markdown lacks %q:\n%s", want, md.String())
		}
	}
}

// TestPrivilegedCPUProfile runs the smoke profile's established scenario on moat and
// nftables with CPU profiles: each system's samples are its own threads', sorted into
// the parts its path has (moat's program and conntrack lookups; nftables' netfilter,
// conntrack and stack, and no XDP program of its own), and scaled to ns per frame.
// It needs perf (.ci/deps installs it): it skips without it, and fails under CI=true.
func TestPrivilegedCPUProfile(t *testing.T) {
	netns.RequireRoot(t)
	if err := perfAvailable(); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%v, and CI=true", err)
		}
		t.Skip(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	rep, err := Run(ctx, Options{Profile: Profiles["smoke"], Systems: []string{SysMoat, SysNft},
		Scenarios: []string{ScEstablished}, Instance: netns.UniqueName("bperf"), Command: t.Name(), CPUProfile: true})
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range rep.Errors {
		t.Errorf("run error: %s", e)
	}
	parts := map[string]map[string]ProfilePart{} // Run scaled them: ns per frame
	for _, pf := range rep.CPUProfiles {
		t.Logf("%s %s: %d samples", pf.System, pf.Scenario, pf.Samples)
		if pf.Scenario != ScEstablished || pf.Samples < 100 {
			t.Errorf("profile %s %s: %d samples", pf.System, pf.Scenario, pf.Samples)
		}
		parts[pf.System] = map[string]ProfilePart{}
		for _, pp := range pf.Parts {
			parts[pf.System][pp.Name] = pp
		}
	}
	for system, want := range map[string][]string{
		SysMoat: {PartProgram, PartMapLookup, PartVethRecv, PartRedirect},
		SysNft:  {PartNetfilter, PartConntrack, PartStack},
	} {
		got, ok := parts[system]
		if !ok {
			t.Errorf("no profile of %s", system)
			continue
		}
		for _, name := range want {
			if pp := got[name]; pp.Share <= 0 || pp.NsPerFrame <= 0 {
				t.Errorf("%s: part %q = %+v, want a share and a time per frame", system, name, pp)
			}
		}
	}
	if _, ok := parts[SysNft][PartProgram]; ok {
		t.Errorf("nftables' profile has an XDP program part: %v", parts[SysNft])
	}
	// moat's program samples, by source line: at most its program part, from bpf/.
	for _, pf := range rep.CPUProfiles {
		if pf.System != SysMoat {
			if len(pf.Lines) > 0 {
				t.Errorf("%s's profile has program lines: %+v", pf.System, pf.Lines)
			}
			continue
		}
		if len(pf.Lines) == 0 {
			t.Errorf("moat's profile has no program line")
		}
		sum := 0.0
		for _, l := range pf.Lines {
			sum += l.Share
			if l.Share <= 0 || l.NsPerFrame <= 0 || !strings.HasPrefix(l.Source, "bpf/") || l.Text == "" {
				t.Errorf("program line %+v", l)
			}
		}
		if prog := parts[SysMoat][PartProgram].Share; sum > prog+1e-9 {
			t.Errorf("program lines share %.3f, more than the program's %.3f", sum, prog)
		}
	}
}

func TestProfileSVG(t *testing.T) {
	rep := &Report{CPUProfiles: []CPUProfile{
		{Scenario: ScEstablished, System: SysMoat, Flows: 4096,
			Parts: []ProfilePart{{Name: PartMapLookup, Share: 0.4, NsPerFrame: 226}, {Name: PartProgram, Share: 0.6, NsPerFrame: 339}}},
		{Scenario: ScEstablished, System: SysNft, Flows: 4096,
			Parts: []ProfilePart{{Name: PartStack, Share: 0.7, NsPerFrame: 3400}, {Name: PartWake, Share: 0.2, NsPerFrame: 970}, {Name: PartNetfilter, Share: 0.1, NsPerFrame: 500}}},
	}}
	svg := wellFormed(t, "profile.svg", rep.WriteProfileSVG)
	if n := strings.Count(svg, "<rect x="); n != 5+5 { // 5 bar segments, 5 legend entries
		t.Errorf("profile.svg has %d rects, want 10", n)
	}
	for _, want := range []string{"established (4096 flows), moat: 565 ns", "established (4096 flows), nftables: 4870 ns", "nftables, waking the receiver: 970 ns, 20%"} {
		if !strings.Contains(svg, want) {
			t.Errorf("profile.svg lacks %q", want)
		}
	}
	// Only a run with profiles gets the file.
	for _, r := range []*Report{rep, {}} {
		dir := t.TempDir()
		if _, err := WriteFiles(r, dir); err != nil {
			t.Fatal(err)
		}
		_, err := os.Stat(dir + "/" + ProfileSVG)
		if got, want := err == nil, len(r.CPUProfiles) > 0; got != want {
			t.Errorf("%d profiles: %s written = %v", len(r.CPUProfiles), ProfileSVG, got)
		}
	}
}

// perfEnable returns when perf exits without listening, instead of waiting forever.
func TestPerfEnableGivesUpWhenPerfExits(t *testing.T) {
	dir := t.TempDir()
	ctl, ack := filepath.Join(dir, "ctl"), filepath.Join(dir, "ack")
	for _, f := range []string{ctl, ack} {
		if err := unix.Mkfifo(f, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command("true")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t0 := time.Now()
	if err := perfEnable(ctl, ack, exited, 20*time.Second); err == nil {
		t.Fatal("perfEnable succeeded with nobody listening")
	}
	if d := time.Since(t0); d > 5*time.Second {
		t.Errorf("perfEnable took %v to notice the exit", d)
	}
}

// The samples of a loaded program map to its source lines through the kernel's JIT
// line table; samples of other threads, or outside the program, count for no line.
func TestPrivilegedProgramLines(t *testing.T) {
	netns.RequireRoot(t)
	s := unattachedSink(t)
	table, err := newProgramLines(s.objs.XdpSink)
	if err != nil {
		t.Fatal(err)
	}
	if len(table.addrs) < 2 || len(table.funcs) == 0 {
		t.Fatalf("line table of %d lines, %d functions", len(table.addrs), len(table.funcs))
	}
	first, last := table.lines[0], table.lines[len(table.lines)-1]
	if !strings.HasSuffix(first.FileName(), "sink.c") || first.LineNumber() == 0 {
		t.Fatalf("first line %s:%d %q, want one of sink.c", first.FileName(), first.LineNumber(), first.Line())
	}
	end := table.funcs[len(table.funcs)-1][1]
	script := strings.Join([]string{
		fmt.Sprintf("  7 %x", table.addrs[0]),      // the first line, thread 7
		fmt.Sprintf("  7 %x", table.addrs[0]+1),    // still the first line (unless it is one byte long)
		fmt.Sprintf("  7 %x", end-1),               // the last line
		fmt.Sprintf("  8 %x", table.addrs[0]),      // another thread
		fmt.Sprintf("  7 %x", end+16),              // outside the program
		fmt.Sprintf("  7 %x", table.funcs[0][0]-1), // before it
		"  7", // no address
	}, "\n")
	lines, err := table.profile(script, []int{7}, 10)
	if err != nil {
		t.Fatal(err)
	}
	total := 0.0
	for _, l := range lines {
		total += l.Share
		if !strings.HasPrefix(l.Source, "bpf/") && !strings.Contains(l.Source, "sink.c:") {
			t.Errorf("source %q", l.Source)
		}
	}
	if math.Abs(total-0.3) > 1e-9 {
		t.Errorf("lines share %.2f of the samples, want 0.30 (3 of 10): %+v", total, lines)
	}
	want := fmt.Sprintf("%s:%d", bpfRelative(last.FileName()), last.LineNumber())
	if !slices.ContainsFunc(lines, func(l ProgramLine) bool { return l.Source == want }) {
		t.Errorf("no sample on the last line %s: %+v", want, lines)
	}
	if _, err := table.profile(script, []int{7}, 0); err == nil {
		t.Error("a profile of no sample gave lines")
	}
}
