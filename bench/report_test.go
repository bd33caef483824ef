package bench

import (
	"bytes"
	"encoding/json"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/seed4c/moat/internal/topology"
)

func sampleReport() *Report {
	rep := &Report{Command: "moat bench --profile quick", Profile: "quick", Machine: Machine{Kernel: "Linux 6.18", CPU: "test", Cores: 2}}
	add := func(sc, sys string, flows int, perCore ...float64) {
		r := Record{Scenario: sc, System: sys, Kind: KindPackets, Flows: flows}
		for _, v := range perCore {
			r.Runs = append(r.Runs, Sample{PPS: v / 2, PPSPerCore: v, CPU: 0.5, Seconds: 1})
		}
		r.aggregate()
		rep.Records = append(rep.Records, r)
	}
	add(ScEstablished, SysMoat, 4096, 3e6, 2e6, 4e6)
	add(ScEstablished, SysPlain, 4096, 4e6, 4e6, 5e6)
	add(ScEstablished, SysNft, 4096, 2e5, 3e5, 1e5)
	add(ScNewFlows, SysMoat, 0, 5e5)
	add(ScNewFlows, SysNft, 0, 1e5)
	add(ScEstablishedSweep, SysMoat, 64, 3e6)
	add(ScEstablishedSweep, SysNft, 64, 3e5)
	add(ScEstablishedSweep, SysMoat, 65536, 2e6)
	tcp := Record{Scenario: ScTCPConnections, System: SysMoat, Kind: KindTCP, Runs: []Sample{{ConnsPerSec: 1000, ConnsPerCore: 5000, Latency: &Latency{P50: 100, P90: 150, P99: 300, P999: 900}}}}
	tcp.aggregate()
	rep.Records = append(rep.Records, tcp)
	hp := Record{Scenario: ScTCPConnections, System: SysHAProxy, Kind: KindTCP, Runs: []Sample{{ConnsPerSec: 500, ConnsPerCore: 1000, Latency: &Latency{P50: 200, P90: 250, P99: 600, P999: 1900}}}}
	hp.aggregate()
	rep.Records = append(rep.Records, hp)
	rep.ProgramTimes = []ProgramTime{{Scenario: ScEstablished, System: SysMoat, Flows: 4096, NsPerRun: 100, Runs: 1000}}
	rep.Phases = []Phase{{"packets", 160.4}, {"tcp", 54}}
	rep.ComputeRatios()
	rep.CheckTargets()
	rep.SortRecords()
	return rep
}

func near(a, b float64) bool { return math.Abs(a-b) <= 1e-9*math.Max(1, math.Abs(b)) }

func TestMedian(t *testing.T) {
	for _, c := range []struct {
		in   []float64
		want float64
	}{{nil, 0}, {[]float64{3}, 3}, {[]float64{3, 1, 2}, 2}, {[]float64{4, 1, 3, 2}, 2.5}} {
		if got := median(c.in); got != c.want {
			t.Errorf("median(%v) = %v, want %v", c.in, got, c.want)
		}
	}
}

func TestRatios(t *testing.T) {
	rep := sampleReport()
	for _, c := range []struct {
		base, sc string
		want     float64
	}{
		{SysPlain, ScEstablished, 3e6 / 4e6},
		{SysNft, ScEstablished, 3e6 / 2e5},
		{SysNft, ScNewFlows, 5},
		{SysNft, ScEstablishedSweep + "_64", 10},
		{SysHAProxy, ScTCPConnections, 5},
	} {
		if got := rep.Ratios[c.base][c.sc]; !near(got, c.want) {
			t.Errorf("ratios.%s.%s = %v, want %v", c.base, c.sc, got, c.want)
		}
	}
	if got := rep.RatiosAbsolute[SysHAProxy][ScTCPConnections]; !near(got, 2) {
		t.Errorf("absolute ratio = %v, want 2", got)
	}
	if _, ok := rep.Ratios[SysNft][ScEstablishedSweep+"_65536"]; ok {
		t.Error("a ratio without a baseline measurement")
	}
	var met, missed int
	for _, tg := range rep.Targets {
		if tg.Met {
			met++
		} else {
			missed++
		}
	}
	// nftables established 15x and new flows 5x; plain established 0.75x.
	if met != 2 || missed != 1 {
		t.Errorf("targets %+v: want 2 met, 1 missed", rep.Targets)
	}
	// Runs pair by repetition: moat 3, 2, 4 Mpps against nftables 0.2, 0.3, 0.1.
	for _, tg := range rep.Targets {
		if tg.Name == "moat / nftables per core, "+ScEstablished {
			want := []float64{15, 2e6 / 3e5, 40}
			if len(tg.Runs) != 3 || !near(tg.Runs[0], want[0]) || !near(tg.Runs[1], want[1]) || !near(tg.Runs[2], want[2]) {
				t.Errorf("%s: runs %v, want %v", tg.Name, tg.Runs, want)
			}
		}
		if tg.Name == "moat / nftables per core, "+ScNewFlows && len(tg.Runs) != 1 {
			t.Errorf("%s: runs %v, want the one pair", tg.Name, tg.Runs)
		}
	}
	if got := runRatios(rep.Find(ScEstablished, SysMoat, 0), rep.Find(ScNewFlows, SysNft, 0)); got != nil {
		t.Errorf("runs of different counts paired: %v", got)
	}
	lo, hi := rep.Find(ScEstablished, SysMoat, 0).Spread()
	if lo != 2e6 || hi != 4e6 {
		t.Errorf("spread %v-%v, want 2e6-4e6", lo, hi)
	}
}

// TestTargetBounds: a target gets the bound's own ratio to the same baseline, is out of
// reach when that bound is below it, and keeps no bound where none was measured.
func TestTargetBounds(t *testing.T) {
	rep := &Report{}
	add := func(sc, sys string, perCore float64) {
		r := Record{Scenario: sc, System: sys, Kind: KindPackets, Runs: []Sample{{PPS: perCore / 2, PPSPerCore: perCore, CPU: 0.5}}}
		r.aggregate()
		rep.Records = append(rep.Records, r)
	}
	add(ScIsolationCross, SysMoat, 4e6)
	add(ScIsolationCross, SysNft, 1e6)
	add(ScIsolationCross, SysXDPDrop, 8e6) // the cheapest drop reaches 8x: 10x is out of reach
	add(ScNewFlows, SysMoat, 4e5)
	add(ScNewFlows, SysPlain, 2e6)
	add(ScNewFlows, SysNft, 1e5)
	add(ScNewFlows, SysPlainCT, 1.2e6) // 0.6x plain: 0.5x is within reach, and 12x nftables
	add(ScEstablished, SysMoat, 2e6)
	add(ScEstablished, SysNft, 2.5e5)
	rep.ComputeRatios()
	rep.CheckTargets()
	want := map[string]struct {
		bound  float64
		system string
		out    bool
	}{
		"moat / nftables per core, " + ScIsolationCross:       {8, SysXDPDrop, true},
		"moat / nftables per core, " + ScNewFlows:             {12, SysPlainCT, false},
		"moat / plain XDP forwarding per core, " + ScNewFlows: {0.6, SysPlainCT, false},
		"moat / nftables per core, " + ScEstablished:          {0, "", false},
	}
	if len(rep.Targets) != len(want) {
		t.Fatalf("targets %+v: want %d", rep.Targets, len(want))
	}
	for _, tg := range rep.Targets {
		w, ok := want[tg.Name]
		if !ok {
			t.Errorf("unexpected target %q", tg.Name)
			continue
		}
		if !near(tg.Bound, w.bound) || tg.BoundSystem != w.system || tg.OutOfReach() != w.out {
			t.Errorf("%s: bound %v from %q, out of reach %v; want %v from %q, %v", tg.Name, tg.Bound, tg.BoundSystem, tg.OutOfReach(), w.bound, w.system, w.out)
		}
	}
	var buf bytes.Buffer
	if err := rep.WriteMarkdown(&buf); err != nil {
		t.Fatal(err)
	}
	for _, line := range []string{
		"| moat / nftables per core, isolation_cross_tenant | ≥ 10.0× | 4.00× | 8.00× (xdp_drop) | **missed**: out of reach here |",
		"| moat / plain XDP forwarding per core, new_flows | ≥ 0.5× | 0.20× | 0.60× (plain_ct) | **missed** |",
		"| moat / nftables per core, established | ≥ 10.0× | 8.00× | – | **missed** |",
	} {
		if !strings.Contains(buf.String(), line) {
			t.Errorf("markdown lacks %q:\n%s", line, buf.String())
		}
	}
}

func TestJSONShape(t *testing.T) {
	var buf bytes.Buffer
	if err := sampleReport().WriteJSON(&buf); err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Records []map[string]any          `json:"records"`
		Ratios  map[string]map[string]any `json:"ratios"`
	}
	if err := json.Unmarshal(buf.Bytes(), &doc); err != nil {
		t.Fatal(err)
	}
	if _, ok := doc.Ratios["nftables"]["established"]; !ok {
		t.Errorf("no ratios.nftables.established in %s", buf.String())
	}
	for _, r := range doc.Records {
		for _, k := range []string{"scenario", "system", "cpu_cores", "runs"} {
			if _, ok := r[k]; !ok {
				t.Errorf("record without %q: %v", k, r)
			}
		}
	}
}

func TestMarkdown(t *testing.T) {
	var buf bytes.Buffer
	if err := sampleReport().WriteMarkdown(&buf); err != nil {
		t.Fatal(err)
	}
	md := buf.String()
	for _, want := range []string{"| scenario | plain | nftables | haproxy |", "| established | 0.75× (0.75×) | 15× (15×) | – |",
		"**missed**", "moat bench --profile quick",
		"| moat / nftables per core, established | ≥ 10.0× | 15.00× (6.7–40.0; 2 of 3) | – | met |",
		// 100 ns per frame at the median 3 Mpps per core: 30% of the core.
		"| established | 4096 | moat | 100 | 1.0 k | 30% |",
		"Time by phase: packets 160 s, tcp 54 s."} {
		if !strings.Contains(md, want) {
			t.Errorf("markdown lacks %q:\n%s", want, md)
		}
	}
}

// TestDropReasons: a record's drops by reason are the sum of its runs', and the
// Markdown lists them, the largest first.
func TestDropReasons(t *testing.T) {
	r := Record{Scenario: ScIsolationCross, System: SysMoat, Kind: KindPackets, Runs: []Sample{
		{PPS: 1, PPSPerCore: 2, DropReasons: map[string]uint64{"drop_no_service": 1500, "drop_ipv6_unsupported": 2}},
		{PPS: 1, PPSPerCore: 2, DropReasons: map[string]uint64{"drop_no_service": 700}},
		{PPS: 1, PPSPerCore: 2},
	}}
	r.aggregate()
	if want := map[string]uint64{"drop_no_service": 2200, "drop_ipv6_unsupported": 2}; fmt.Sprint(r.DropReasons) != fmt.Sprint(want) {
		t.Errorf("drops by reason %v, want %v", r.DropReasons, want)
	}
	rep := &Report{Records: []Record{r}}
	var buf bytes.Buffer
	if err := rep.WriteMarkdown(&buf); err != nil {
		t.Fatal(err)
	}
	if want := "| isolation_cross_tenant | – | moat | drop_no_service 2.2 k, drop_ipv6_unsupported 2 |"; !strings.Contains(buf.String(), want) {
		t.Errorf("markdown lacks %q:\n%s", want, buf.String())
	}
	// A report without reasons has no such section.
	buf.Reset()
	if err := sampleReport().WriteMarkdown(&buf); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(buf.String(), "Drops by reason") {
		t.Error("a report without drop reasons has a section for them")
	}
	if got := countersSince(map[string]uint64{"a": 5, "b": 1}, map[string]uint64{"a": 9, "b": 1, "c": 3}); fmt.Sprint(got) != "map[a:4 c:3]" {
		t.Errorf("countersSince: %v, want map[a:4 c:3]", got)
	}
	if got := countersSince(nil, map[string]uint64{"a": 0}); got != nil {
		t.Errorf("countersSince of nothing new: %v, want nil", got)
	}
}

// TestRunRatiosPairByRepetition: a repetition that one system failed is left out of
// the per-repetition ratios, instead of shifting every later pair by one; runs that
// name no repetition (reports made before they did) pair by position.
func TestRunRatiosPairByRepetition(t *testing.T) {
	m := &Record{Kind: KindPackets, Runs: []Sample{{Rep: 1, PPSPerCore: 10}, {Rep: 2, PPSPerCore: 20}, {Rep: 3, PPSPerCore: 30}}}
	b := &Record{Kind: KindPackets, Runs: []Sample{{Rep: 1, PPSPerCore: 1}, {Rep: 3, PPSPerCore: 3}}}
	if got, want := fmt.Sprint(runRatios(m, b)), "[10 10]"; got != want {
		t.Errorf("paired by repetition: %s, want %s", got, want)
	}
	// Misaligned by position: rep 2 of moat against rep 3 of the baseline.
	b.Runs = append(b.Runs, Sample{Rep: 4, PPSPerCore: 4})
	m.Runs = m.Runs[1:]
	if got, want := fmt.Sprint(runRatios(m, b)), "[10]"; got != want {
		t.Errorf("paired by repetition with one each missing: %s, want %s", got, want)
	}
	old := &Record{Kind: KindPackets, Runs: []Sample{{PPSPerCore: 4}, {PPSPerCore: 9}}}
	oldBase := &Record{Kind: KindPackets, Runs: []Sample{{PPSPerCore: 2}, {PPSPerCore: 3}}}
	if got, want := fmt.Sprint(runRatios(old, oldBase)), "[2 3]"; got != want {
		t.Errorf("paired by position: %s, want %s", got, want)
	}
	oldBase.Runs = oldBase.Runs[:1]
	if got := runRatios(old, oldBase); got != nil {
		t.Errorf("unpaired runs without repetitions gave %v, want nil", got)
	}
}

// TestFrameLedger: a record's ledger is the sum of its runs', its rest what no
// count places (negative when the namespaces' chatter was counted in), and the
// Markdown gives each part as a share of the frames sent; a report without ledgers
// (made before they were kept) has no such section.
func TestFrameLedger(t *testing.T) {
	r := Record{Scenario: ScEstablished, System: SysNft, Kind: KindPackets, Flows: 4096, Runs: []Sample{
		{PPS: 1, PPSPerCore: 2, Frames: &FrameLedger{Sent: 1000, Delivered: 150, RefusedIn: 840, RefusedOut: 2}},
		{PPS: 1, PPSPerCore: 2, Frames: &FrameLedger{Sent: 1000, Delivered: 170, Dropped: 4, RefusedIn: 830}},
	}}
	r.aggregate()
	if want := (FrameLedger{Sent: 2000, Delivered: 320, Dropped: 4, RefusedIn: 1670, RefusedOut: 2}); r.Frames == nil || *r.Frames != want {
		t.Fatalf("ledger %+v, want %+v", r.Frames, want)
	}
	if r.Frames.Rest() != 4 {
		t.Errorf("rest %d, want 4", r.Frames.Rest())
	}
	if l := (FrameLedger{Sent: 10, Delivered: 12}); l.Rest() != -2 {
		t.Errorf("rest %d with chatter counted in, want -2", l.Rest())
	}
	rep := &Report{Records: []Record{r}}
	var buf bytes.Buffer
	if err := rep.WriteMarkdown(&buf); err != nil {
		t.Fatal(err)
	}
	if want := "| established | 4096 | nftables | 2.0 k | 16.0% | 0.2% | 83.5% | 2 | 0.2% |"; !strings.Contains(buf.String(), want) {
		t.Errorf("markdown lacks %q:\n%s", want, buf.String())
	}
	buf.Reset()
	if err := sampleReport().WriteMarkdown(&buf); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(buf.String(), "Where the frames went") {
		t.Error("a report without ledgers has a section for them")
	}
}

func wellFormed(t *testing.T, name string, write func(io.Writer) error) string {
	t.Helper()
	var buf bytes.Buffer
	if err := write(&buf); err != nil {
		t.Fatal(err)
	}
	d := xml.NewDecoder(bytes.NewReader(buf.Bytes()))
	for {
		_, err := d.Token()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("%s is not well-formed XML: %v\n%s", name, err, buf.String())
		}
	}
	return buf.String()
}

func TestSVG(t *testing.T) {
	rep := sampleReport()
	flows := wellFormed(t, "flows.svg", rep.WriteFlowsSVG)
	if n := strings.Count(flows, "<polyline"); n != 2 {
		t.Errorf("flows.svg has %d lines, want 2 (moat, nftables)", n)
	}
	if _, ok := rep.Plots()[LatencySVG]; ok {
		t.Errorf("a report without request/response latency has a %s", LatencySVG)
	}
	for _, sys := range []string{SysMoat, SysHAProxy} {
		rr := Record{Scenario: ScTCPRR, System: sys, Kind: KindTCP, Runs: []Sample{{TPS: 5000, Latency: &Latency{P50: 190, P90: 250, P99: 400, P999: 900}}}}
		rr.aggregate()
		rep.Records = append(rep.Records, rr)
	}
	lat := wellFormed(t, "latency.svg", rep.WriteLatencySVG)
	if n := strings.Count(lat, "<rect x="); n != 2*4+2 { // 2 systems x 4 percentiles + legend
		t.Errorf("latency.svg has %d rects, want 10", n)
	}
	if !strings.Contains(lat, "haproxy p99: 400 µs") {
		t.Errorf("latency.svg lacks haproxy's request/response p99:\n%s", lat)
	}
	// A plot without data says so, with no bar, line or tick labels made of nothing.
	empty := &Report{}
	for name, render := range map[string]func(io.Writer) error{"flows.svg": empty.WriteFlowsSVG, "latency.svg": empty.WriteLatencySVG} {
		svg := wellFormed(t, "empty "+name, render)
		if !strings.Contains(svg, ">no ") || strings.Contains(svg, "<polyline") || strings.Contains(svg, "<rect x=") || strings.Contains(svg, `text-anchor="end"`) {
			t.Errorf("empty %s:\n%s", name, svg)
		}
	}
}

func TestNftCounters(t *testing.T) {
	js := `{"nftables": [{"metainfo": {}}, {"table": {"name": "moatbench"}},
	  {"rule": {"chain": "client_a", "expr": [{"counter": {"packets": 7, "bytes": 420}}, {"drop": null}]}},
	  {"rule": {"chain": "pre_raw", "expr": [{"match": {}}, {"counter": {"packets": 5, "bytes": 300}}, {"drop": null}]}},
	  {"rule": {"chain": "lb_a", "expr": [{"dnat": {}}]}}]}`
	n, err := sumNftCounters([]byte(js))
	if err != nil || n != 12 {
		t.Fatalf("sum = %d, %v; want 12", n, err)
	}
}

func TestBarAndRates(t *testing.T) {
	if got := bar(3, 10, 10); got != "[###.......]" {
		t.Errorf("bar = %q", got)
	}
	if got := bar(12, 10, 4); got != "[####]" {
		t.Errorf("bar past the end = %q", got)
	}
	if got := fmtRate(2.5e6); got != "2.50 M" {
		t.Errorf("fmtRate = %q", got)
	}
	if got := niceMax(3.2e6); got != 5e6 {
		t.Errorf("niceMax = %v", got)
	}
}

func TestRuleset(t *testing.T) {
	// The ruleset is text for nft; its shape is checked here, its syntax by the
	// privileged smoke test that loads it.
	s := nftRuleset(sceneTopologyForText())
	for _, want := range []string{"ct zone set 1", "ct zone set 2", "priority raw; policy drop;", "dnat to jhash ip saddr . tcp sport mod 3",
		`"ca" . "ba1"`, `"bb3" . "cb"`} {
		if !strings.Contains(s, want) {
			t.Errorf("ruleset lacks %q:\n%s", want, s)
		}
	}
}

// sceneTopologyForText is the scene's topology as data only (no namespaces).
func sceneTopologyForText() *topology.Topology {
	t := &topology.Topology{Opts: topology.Options{VIP: netip.MustParseAddr("10.100.0.1"), Port: 80, BackendPort: 8080}}
	for _, name := range []string{"a", "b"} {
		tn := &topology.Tenant{Name: name, ClientIface: "c" + name}
		for n := 1; n <= 3; n++ {
			tn.Backends = append(tn.Backends, &topology.Backend{
				Name: fmt.Sprintf("%s-%d", name, n), Addr: netip.AddrFrom4([4]byte{10, 1, byte(n), 2}), GWIface: fmt.Sprintf("b%s%d", name, n)})
		}
		t.Tenants = append(t.Tenants, tn)
	}
	return t
}

func TestTargetSummary(t *testing.T) {
	rep := &Report{Targets: []Target{
		{Name: "a", Want: 10, Got: 12, Met: true},
		{Name: "b", Want: 10, Got: 9, Bound: 11, BoundSystem: SysPlainCT, Runs: []float64{8, 9, 10.5}},
		{Name: "c", Want: 10, Got: 5, Bound: 6, BoundSystem: SysXDPDrop},
	}}
	var b strings.Builder
	if err := rep.WriteTargetSummary(&b); err != nil {
		t.Fatal(err)
	}
	want := "met                        a: 12.00× (want ≥ 10.0×)\n" +
		"missed                     b: 9.00× (want ≥ 10.0×; met in 1 of 3 runs; bound: plain_ct 11.00×)\n" +
		"missed: out of reach here  c: 5.00× (want ≥ 10.0×; bound: xdp_drop 6.00×)\n"
	if b.String() != want {
		t.Errorf("summary:\n%s\nwant:\n%s", b.String(), want)
	}
}

// admissionReport has the two decision scenarios alone, for moat and nftables.
func admissionReport() *Report {
	rep := &Report{Command: "moat bench --scenarios admission_latency,eviction_latency", Profile: "full"}
	for _, r := range []struct {
		sc, sys string
		l       Latency
	}{
		{ScAdmission, SysMoat, Latency{P50: 5600, P90: 7000, P99: 7800, P999: 7800}},
		{ScAdmission, SysNft, Latency{P50: 390, P90: 510, P99: 520, P999: 520}},
		{ScEviction, SysMoat, Latency{P50: 230, P90: 300, P99: 340, P999: 340}},
		{ScEviction, SysNft, Latency{P50: 235, P90: 290, P99: 390, P999: 390}},
	} {
		rec := Record{Scenario: r.sc, System: r.sys, Kind: KindLatency, Runs: []Sample{{Seconds: 1, Latency: &r.l}}}
		rec.aggregate()
		rep.Records = append(rep.Records, rec)
	}
	rep.ComputeRatios()
	rep.SortRecords()
	return rep
}

func TestAdmissionSVG(t *testing.T) {
	svg := wellFormed(t, "admission.svg", admissionReport().WriteAdmissionSVG)
	if n := strings.Count(svg, "<rect x="); n != 2*6+2 { // 2 systems x 2 scenarios x 3 percentiles + legend
		t.Errorf("admission.svg has %d rects, want 14", n)
	}
	for _, want := range []string{"moat admission p50: 5.6 ms", "nftables eviction p99: 390 µs", ">100 µs<", ">1 ms<", ">10 ms<"} {
		if !strings.Contains(svg, want) {
			t.Errorf("admission.svg lacks %q", want)
		}
	}
	// The scale is logarithmic, from the decade below the smallest value (230 µs: 100)
	// to the one at or above the largest (7.8 ms: 10 ms): 5.6 ms stands
	// log10(56)/log10(100) of the plot's height, 320 px, from its bottom at y = 360.
	bar := regexp.MustCompile(`<rect x="[0-9.]+" y="([0-9.]+)" width="[0-9.]+" height="([0-9.]+)" fill="[^"]+"><title>moat admission p50: 5.6 ms</title>`).FindStringSubmatch(svg)
	if bar == nil {
		t.Fatalf("no bar for moat's admission p50:\n%s", svg)
	}
	wantH := 320 * math.Log10(56) / 2
	if h, _ := strconv.ParseFloat(bar[2], 64); math.Abs(h-wantH) > 0.1 {
		t.Errorf("moat's admission p50 bar is %v px high, want %.1f", h, wantH)
	}
	if y, _ := strconv.ParseFloat(bar[1], 64); math.Abs(y-(360-wantH)) > 0.1 {
		t.Errorf("moat's admission p50 bar starts at y = %v, want %.1f", y, 360-wantH)
	}
	// A value of exactly a power of ten still gets a bar.
	exact := admissionReport()
	for i := range exact.Records {
		exact.Records[i].Latency = &Latency{P50: 100, P90: 100, P99: 100}
	}
	if heights := regexp.MustCompile(`height="0\.0"`).FindAllString(wellFormed(t, "exact admission.svg", exact.WriteAdmissionSVG), -1); len(heights) > 0 {
		t.Errorf("%d bars of no height when every value is 100 µs", len(heights))
	}
	if svg := wellFormed(t, "empty admission.svg", (&Report{}).WriteAdmissionSVG); !strings.Contains(svg, "no admission or eviction latency") || strings.Contains(svg, "<rect x=") {
		t.Errorf("an empty admission.svg should say so and draw no bar:\n%s", svg)
	}
}

// A run writes the plots it has data for, and removes the harness's other plots from a
// directory written before.
func TestWriteFilesOnlyPlotsWithData(t *testing.T) {
	// A directory that holds no report keeps files of the plots' names.
	other := t.TempDir()
	if err := os.WriteFile(filepath.Join(other, FlowsSVG), []byte("mine"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := WriteFiles(admissionReport(), other); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(other, FlowsSVG)); err != nil || string(b) != "mine" {
		t.Errorf("a flows.svg in a directory without a report was removed or changed (%q, %v)", b, err)
	}

	dir := t.TempDir()
	if _, err := WriteFiles(sampleReport(), dir); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, FlowsSVG)); err != nil {
		t.Fatalf("the full report's flows.svg: %v", err)
	}
	files, err := WriteFiles(admissionReport(), dir)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"report.json", "report.md", AdmissionSVG}; !slices.Equal(files, want) {
		t.Errorf("files %v, want %v", files, want)
	}
	for _, name := range PlotNames {
		_, err := os.Stat(filepath.Join(dir, name))
		if got, want := err == nil, name == AdmissionSVG; got != want {
			t.Errorf("%s in the directory: %v, want %v", name, got, want)
		}
	}
	// Render reads the report back and writes the same files but report.json.
	before, err := os.ReadFile(filepath.Join(dir, "report.md"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(dir, "report.md")); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, LatencySVG), []byte("stale"), 0o644); err != nil {
		t.Fatal(err)
	}
	files, err = Render(dir)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"report.md", AdmissionSVG}; !slices.Equal(files, want) {
		t.Errorf("Render wrote %v, want %v", files, want)
	}
	if after, err := os.ReadFile(filepath.Join(dir, "report.md")); err != nil || !bytes.Equal(after, before) {
		t.Errorf("report.md rendered again differs (%v)", err)
	}
	if _, err := os.Stat(filepath.Join(dir, LatencySVG)); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Render left a stale %s beside a report without its data (%v)", LatencySVG, err)
	}
}

// The machine's description tells hosts apart that share a CPU name.
func TestDescribeCPU(t *testing.T) {
	cpuinfo := "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 23\nmodel\t\t: 1\nmodel name\t: AMD EPYC\nstepping\t: 2\ncpu MHz\t\t: 1996.249\nflags\t\t: fpu sse hypervisor avx2\n\n" +
		"processor\t: 1\ncpu family\t: 25\nmodel\t\t: 17\nmodel name\t: other\nstepping\t: 1\ncpu MHz\t\t: 3000\nflags\t\t: fpu\n"
	name, id := describeCPU(cpuinfo)
	if name != "AMD EPYC" || id != "family 23 model 1 stepping 2, 1996 MHz, virtual machine" {
		t.Fatalf("describeCPU = %q, %q", name, id)
	}
	dir := t.TempDir()
	for i, c := range []struct{ level, typ, size, shared string }{
		{"1", "Data", "32K", "0"}, {"1", "Instruction", "64K", "0"}, {"2", "Unified", "512K", "0"}, {"3", "Unified", "8192K", "0-1"},
	} {
		d := filepath.Join(dir, fmt.Sprintf("index%d", i))
		for f, v := range map[string]string{"level": c.level, "type": c.typ, "size": c.size, "shared_cpu_list": c.shared} {
			if err := os.MkdirAll(d, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(d, f), []byte(v+"\n"), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	if got, want := describeCaches(dir), "L1d 32K, L2 512K, L3 8192K (shared by 0-1)"; got != want {
		t.Errorf("describeCaches = %q, want %q", got, want)
	}
	vuln := t.TempDir()
	for f, v := range map[string]string{"retbleed": "Mitigation: untrained return thunk; SMT disabled", "meltdown": "Not affected"} {
		if err := os.WriteFile(filepath.Join(vuln, f), []byte(v+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if got := readMitigations(vuln); len(got) != 1 || got["retbleed"] != "Mitigation: untrained return thunk; SMT disabled" {
		t.Errorf("readMitigations = %v", got)
	}
	rep := sampleReport()
	rep.Machine.CPUID, rep.Machine.Caches, rep.Machine.Mitigations = "family 23", "L2 512K", map[string]string{"retbleed": "thunk", "spectre_v2": "retpolines"}
	var md strings.Builder
	if err := rep.WriteMarkdown(&md); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(md.String(), "\nCPU: family 23; caches L2 512K. The kernel's mitigations:\n\n- retbleed: thunk\n- spectre_v2: retpolines\n") {
		t.Errorf("report.md lacks the CPU lines:\n%s", md.String()[:400])
	}
	// None known and none at all read differently, in report.json too.
	for _, c := range []struct {
		mit  map[string]string
		want string
	}{{nil, "- unknown"}, {map[string]string{}, "- none"}} {
		rep.Machine.Mitigations = c.mit
		var js bytes.Buffer
		if err := rep.WriteJSON(&js); err != nil {
			t.Fatal(err)
		}
		var back Report
		if err := json.Unmarshal(js.Bytes(), &back); err != nil {
			t.Fatal(err)
		}
		md.Reset()
		if err := back.WriteMarkdown(&md); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(md.String(), "mitigations:\n\n"+c.want) {
			t.Errorf("mitigations %v after report.json: report.md lacks %q", c.mit, c.want)
		}
	}
}
