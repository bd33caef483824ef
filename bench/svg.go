package bench

import (
	"fmt"
	"html"
	"io"
	"math"
	"sort"
	"strings"
)

var systemColor = map[string]string{SysMoat: "#1f77b4", SysPlain: "#2ca02c", SysPlainCT: "#ff7f0e", SysNft: "#d62728", SysHAProxy: "#9467bd"}

func colorOf(system string) string {
	if c, ok := systemColor[system]; ok {
		return c
	}
	return "#7f7f7f"
}

// svgFrame opens an SVG document with a title and a plot area.
type svgPlot struct {
	b                     strings.Builder
	w, h                  float64
	left, right, top, bot float64
}

func newPlot(title string) *svgPlot {
	return newPlotSized(title, 720, 420, 80)
}

// newPlotSized is newPlot with its width, height and left margin chosen.
func newPlotSized(title string, w, h, left float64) *svgPlot {
	p := &svgPlot{w: w, h: h, left: left, right: 160, top: 40, bot: 60}
	fmt.Fprintf(&p.b, `<svg xmlns="http://www.w3.org/2000/svg" width="%.0f" height="%.0f" viewBox="0 0 %.0f %.0f" font-family="sans-serif" font-size="12">`+"\n", p.w, p.h, p.w, p.h)
	fmt.Fprintf(&p.b, `<rect width="100%%" height="100%%" fill="white"/>`+"\n")
	fmt.Fprintf(&p.b, `<text x="%.0f" y="22" font-size="15" font-weight="bold">%s</text>`+"\n", p.left, html.EscapeString(title))
	return p
}

func (p *svgPlot) pw() float64 { return p.w - p.left - p.right }
func (p *svgPlot) ph() float64 { return p.h - p.top - p.bot }

func (p *svgPlot) axes(xlabel, ylabel string) {
	x0, y0 := p.left, p.h-p.bot
	fmt.Fprintf(&p.b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="black"/>`+"\n", x0, y0, x0+p.pw(), y0)
	fmt.Fprintf(&p.b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="black"/>`+"\n", x0, y0, x0, p.top)
	fmt.Fprintf(&p.b, `<text x="%.1f" y="%.1f" text-anchor="middle">%s</text>`+"\n", x0+p.pw()/2, p.h-15, html.EscapeString(xlabel))
	fmt.Fprintf(&p.b, `<text x="18" y="%.1f" text-anchor="middle" transform="rotate(-90 18 %.1f)">%s</text>`+"\n", p.top+p.ph()/2, p.top+p.ph()/2, html.EscapeString(ylabel))
}

// yTicks draws horizontal grid lines for 0..ymax.
func (p *svgPlot) yTicks(ymax float64, unit func(float64) string) {
	for i := 0; i <= 5; i++ {
		v := ymax * float64(i) / 5
		y := p.h - p.bot - p.ph()*float64(i)/5
		fmt.Fprintf(&p.b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#ddd"/>`+"\n", p.left, y, p.left+p.pw(), y)
		fmt.Fprintf(&p.b, `<text x="%.1f" y="%.1f" text-anchor="end">%s</text>`+"\n", p.left-6, y+4, unit(v))
	}
}

// note writes a line of text in the middle of the plot area: what it lacks.
func (p *svgPlot) note(text string) {
	fmt.Fprintf(&p.b, `<text x="%.1f" y="%.1f" text-anchor="middle" fill="#555">%s</text>`+"\n",
		p.left+p.pw()/2, p.top+p.ph()/2, html.EscapeString(text))
}

func (p *svgPlot) legend(i int, label, color string) {
	x, y := p.w-p.right+15, p.top+20*float64(i)+10
	fmt.Fprintf(&p.b, `<rect x="%.1f" y="%.1f" width="14" height="10" fill="%s"/>`+"\n", x, y-9, color)
	fmt.Fprintf(&p.b, `<text x="%.1f" y="%.1f">%s</text>`+"\n", x+20, y, html.EscapeString(label))
}

func (p *svgPlot) end(w io.Writer) error {
	p.b.WriteString("</svg>\n")
	_, err := io.WriteString(w, p.b.String())
	return err
}

// niceMax rounds v up to 1, 2 or 5 times a power of ten.
func niceMax(v float64) float64 {
	if v <= 0 {
		return 1
	}
	e := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 2, 5, 10} {
		if m*e >= v {
			return m * e
		}
	}
	return 10 * e
}

func mpps(v float64) string { return fmt.Sprintf("%.2g", v/1e6) }

// WriteFlowsSVG plots the established-flows rate per busy core against the number of
// flows (log scale), one line per system.
func (rep *Report) WriteFlowsSVG(w io.Writer) error {
	p := newPlot("Established flows: packets/s per busy core vs number of flows")
	series := map[string][][2]float64{}
	var xs []float64
	ymax := 0.0
	for i := range rep.Records {
		r := &rep.Records[i]
		if r.Scenario != ScEstablishedSweep || r.Flows <= 0 {
			continue
		}
		series[r.System] = append(series[r.System], [2]float64{float64(r.Flows), r.PPSPerCore})
		xs = append(xs, float64(r.Flows))
		ymax = math.Max(ymax, r.PPSPerCore)
	}
	p.axes("flows (log scale)", "Mpps per busy core of the system under test")
	if len(xs) == 0 {
		p.note("no flow sweep in this run")
		return p.end(w)
	}
	ymax = niceMax(ymax)
	p.yTicks(ymax, mpps)
	sort.Float64s(xs)
	lx0, lx1 := math.Log10(xs[0]), math.Log10(xs[len(xs)-1])
	if lx1 == lx0 {
		lx1 = lx0 + 1
	}
	px := func(x float64) float64 { return p.left + (math.Log10(x)-lx0)/(lx1-lx0)*p.pw() }
	py := func(y float64) float64 { return p.h - p.bot - y/ymax*p.ph() }
	seen := map[float64]bool{}
	for _, x := range xs {
		if seen[x] {
			continue
		}
		seen[x] = true
		fmt.Fprintf(&p.b, `<text x="%.1f" y="%.1f" text-anchor="middle">%g</text>`+"\n", px(x), p.h-p.bot+16, x)
	}
	n := 0
	for _, sys := range AllSystems {
		pts := series[sys]
		if len(pts) == 0 {
			continue
		}
		sort.Slice(pts, func(i, j int) bool { return pts[i][0] < pts[j][0] })
		var path []string
		for _, pt := range pts {
			path = append(path, fmt.Sprintf("%.1f,%.1f", px(pt[0]), py(pt[1])))
		}
		fmt.Fprintf(&p.b, `<polyline fill="none" stroke="%s" stroke-width="2" points="%s"/>`+"\n", colorOf(sys), strings.Join(path, " "))
		for _, pt := range pts {
			fmt.Fprintf(&p.b, `<circle cx="%.1f" cy="%.1f" r="3" fill="%s"><title>%s %g flows: %s pps/core</title></circle>`+"\n",
				px(pt[0]), py(pt[1]), colorOf(sys), sys, pt[0], fmtRate(pt[1]))
		}
		p.legend(n, sys, colorOf(sys))
		n++
	}
	return p.end(w)
}

// WriteLatencySVG plots the request/response latency percentiles (one byte each way on
// one connection, one exchange at a time) per system as grouped bars: the latency a
// system adds to a packet's round trip. The connection scenario's latencies are not
// plotted: its clients saturate their core, and its latency is theirs (the report
// says so).
func (rep *Report) WriteLatencySVG(w io.Writer) error {
	p := newPlot("TCP request/response latency percentiles (1 byte each way)")
	type row struct {
		sys string
		l   Latency
	}
	var rows []row
	ymax := 0.0
	for _, sys := range AllSystems {
		r := rep.Find(ScTCPRR, sys, 0)
		if r == nil || r.Latency == nil {
			continue
		}
		rows = append(rows, row{sys, *r.Latency})
		ymax = math.Max(ymax, r.Latency.P999)
	}
	p.axes("percentile", "microseconds")
	if len(rows) == 0 {
		p.note("no TCP request/response latency in this run")
		return p.end(w)
	}
	ymax = niceMax(ymax)
	p.yTicks(ymax, func(v float64) string { return fmt.Sprintf("%.0f", v) })
	names := []string{"p50", "p90", "p99", "p99.9"}
	group := p.pw() / float64(len(names))
	bw := group * 0.8 / float64(len(rows))
	for gi, name := range names {
		gx := p.left + group*float64(gi) + group*0.1
		fmt.Fprintf(&p.b, `<text x="%.1f" y="%.1f" text-anchor="middle">%s</text>`+"\n", gx+group*0.4, p.h-p.bot+16, name)
		for ri, r := range rows {
			v := []float64{r.l.P50, r.l.P90, r.l.P99, r.l.P999}[gi]
			hgt := v / ymax * p.ph()
			fmt.Fprintf(&p.b, `<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s"><title>%s %s: %.0f µs</title></rect>`+"\n",
				gx+bw*float64(ri), p.h-p.bot-hgt, bw*0.9, hgt, colorOf(r.sys), r.sys, name, v)
		}
	}
	for i, r := range rows {
		p.legend(i, r.sys, colorOf(r.sys))
	}
	return p.end(w)
}

// WriteAdmissionSVG plots the admission and eviction latency percentiles per system as
// grouped bars on a log scale: the systems' latencies differ by orders of magnitude
// (a table rebuilt against a map element replaced, a process forked against a netlink
// message).
func (rep *Report) WriteAdmissionSVG(w io.Writer) error {
	p := newPlot("Admission and eviction: decision to effect at the backend, percentiles")
	type group struct {
		sc, label string // scenario, percentile
		pick      func(Latency) float64
	}
	scenarios := []string{ScAdmission, ScEviction}
	var groups []group
	for _, sc := range scenarios {
		groups = append(groups,
			group{sc, "p50", func(l Latency) float64 { return l.P50 }},
			group{sc, "p90", func(l Latency) float64 { return l.P90 }},
			group{sc, "p99", func(l Latency) float64 { return l.P99 }})
	}
	// value is a group's latency for sys, 0 when the run has none.
	value := func(g group, sys string) float64 {
		if r := rep.Find(g.sc, sys, 0); r != nil && r.Latency != nil {
			return g.pick(*r.Latency)
		}
		return 0
	}
	var systems []string
	lo, hi := math.Inf(1), 0.0
	for _, sys := range AllSystems {
		found := false
		for _, g := range groups {
			if v := value(g, sys); v > 0 {
				lo, hi, found = math.Min(lo, v), math.Max(hi, v), true
			}
		}
		if found {
			systems = append(systems, sys)
		}
	}
	p.axes("", "latency (log scale)")
	if len(systems) == 0 {
		p.note("no admission or eviction latency in this run")
		return p.end(w)
	}
	// Decades of µs, the lowest strictly below every value so that no bar is empty
	// (a value of exactly 10^k would sit on an axis starting at 10^k).
	d0, d1 := math.Ceil(math.Log10(lo))-1, math.Ceil(math.Log10(hi))
	if d1 <= d0 {
		d1 = d0 + 1
	}
	py := func(v float64) float64 { return p.h - p.bot - (math.Log10(v)-d0)/(d1-d0)*p.ph() }
	for d := d0; d <= d1; d++ {
		y := py(math.Pow(10, d))
		fmt.Fprintf(&p.b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#ddd"/>`+"\n", p.left, y, p.left+p.pw(), y)
		fmt.Fprintf(&p.b, `<text x="%.1f" y="%.1f" text-anchor="end">%s</text>`+"\n", p.left-6, y+4, microseconds(math.Pow(10, d)))
	}
	gw := p.pw() / float64(len(groups))
	bw := gw * 0.8 / float64(len(systems))
	for si, sc := range scenarios { // each scenario's name under its three groups
		fmt.Fprintf(&p.b, `<text x="%.1f" y="%.1f" text-anchor="middle">%s</text>`+"\n",
			p.left+p.pw()*(float64(si)+0.5)/float64(len(scenarios)), p.h-p.bot+34, strings.TrimSuffix(sc, "_latency"))
	}
	for gi, g := range groups {
		gx := p.left + gw*float64(gi) + gw*0.1
		fmt.Fprintf(&p.b, `<text x="%.1f" y="%.1f" text-anchor="middle">%s</text>`+"\n", gx+gw*0.4, p.h-p.bot+16, g.label)
		for si, sys := range systems {
			v := value(g, sys)
			if v <= 0 {
				continue
			}
			y := py(v)
			fmt.Fprintf(&p.b, `<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s"><title>%s %s %s: %s</title></rect>`+"\n",
				gx+bw*float64(si), y, bw*0.9, p.h-p.bot-y, colorOf(sys), sys, strings.TrimSuffix(g.sc, "_latency"), g.label, microseconds(v))
		}
	}
	for i, sys := range systems {
		p.legend(i, sys, colorOf(sys))
	}
	return p.end(w)
}

// microseconds formats a latency given in µs.
func microseconds(v float64) string {
	switch {
	case v >= 1e6:
		return fmt.Sprintf("%.3g s", v/1e6)
	case v >= 1e3:
		return fmt.Sprintf("%.3g ms", v/1e3)
	}
	return fmt.Sprintf("%.3g µs", v)
}

// partColor colours the parts of a frame's path in the profile plot.
var partColor = map[string]string{
	PartProgram: "#1f77b4", PartMapLookup: "#ff7f0e", PartVethRecv: "#2ca02c", PartRedirect: "#17becf",
	PartWake: "#d62728", PartNetfilter: "#9467bd", PartConntrack: "#8c564b", PartRouting: "#e377c2",
	PartStack: "#bcbd22", PartOther: "#7f7f7f",
}

// WriteProfileSVG draws each CPU profile as one bar split by part of the path. The
// bars show shares of the system's samples, so that a 500 ns frame and a 5 µs one are
// both readable; each bar's label gives its time per frame.
func (rep *Report) WriteProfileSVG(w io.Writer) error {
	const rowH = 22.0
	parts := partsIn(rep.CPUProfiles)
	rows := float64(max(len(rep.CPUProfiles), 1))
	h := 40 + 60 + max(rowH*rows, 20*float64(len(parts)))
	// The left margin holds the longest label, "mixed_tenants (4096 flows), plain_ct:
	// 377 ns", at about 6.6 px a character.
	p := newPlotSized("Where the system-under-test core goes: each part's share of a frame", 900, h, 320)
	p.axes("share of the system's samples (perf)", "")
	for i := 0; i <= 5; i++ {
		x := p.left + p.pw()*float64(i)/5
		fmt.Fprintf(&p.b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#ddd"/>`+"\n", x, p.top, x, p.h-p.bot)
		fmt.Fprintf(&p.b, `<text x="%.1f" y="%.1f" text-anchor="middle">%d%%</text>`+"\n", x, p.h-p.bot+16, 20*i)
	}
	for i, pf := range rep.CPUProfiles {
		y := p.top + rowH*float64(i) + 3
		label := fmt.Sprintf("%s, %s", pf.Scenario, pf.System)
		if pf.Flows > 0 {
			label = fmt.Sprintf("%s (%d flows), %s", pf.Scenario, pf.Flows, pf.System)
		}
		if ns := pf.nsPerFrame(); ns > 0 {
			label += fmt.Sprintf(": %.0f ns", ns)
		}
		fmt.Fprintf(&p.b, `<text x="%.1f" y="%.1f" text-anchor="end">%s</text>`+"\n", p.left-6, y+rowH*0.6, html.EscapeString(label))
		x := p.left
		for _, name := range parts { // the same order in every bar
			pp, ok := pf.part(name)
			if !ok {
				continue
			}
			wd := pp.Share * p.pw()
			fmt.Fprintf(&p.b, `<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s"><title>%s, %s: %s, %.0f%%</title></rect>`+"\n",
				x, y, wd, rowH-6, partColor[name], pf.System, name, nsOrDash(pp.NsPerFrame), 100*pp.Share)
			x += wd
		}
	}
	for i, name := range parts {
		p.legend(i, name, partColor[name])
	}
	return p.end(w)
}
