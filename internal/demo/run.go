package demo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/seed4c/moat/dataplane"
	"github.com/seed4c/moat/internal/topology"
	"github.com/seed4c/moat/lb"
)

// RunOptions configure `moat demo`.
type RunOptions struct {
	Instance    string // fast path instance name; default "demo"
	Backends    int    // per tenant; default 3
	Connections int    // per tenant and round; default 30
	Hold        bool   // after the scenes, keep everything up until ctx ends
	Logger      *slog.Logger
}

// Run builds the scene, walks through what the fast path does (balancing, isolation,
// draining and eviction), prints it to w as it goes, and removes everything it created
// before returning, whether the run ended, failed, or ctx was cancelled (Ctrl-C).
func Run(ctx context.Context, w io.Writer, o RunOptions) (err error) {
	if o.Instance == "" {
		o.Instance = "demo"
	}
	if o.Backends == 0 {
		o.Backends = 3
	}
	if o.Connections == 0 {
		o.Connections = 30
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	p := func(format string, args ...any) { fmt.Fprintf(w, format+"\n", args...) }

	// A previous run killed before it cleaned up left its pins behind: start clean.
	_ = dataplane.Remove(dataplane.DefaultOptions(o.Instance))

	p("moat demo: two tenants, one gateway, and the same addresses everywhere")
	p("  client prefix 10.0.0.0/24, VIP 10.100.0.1:80, backends 10.1.n.2:8080, in both tenants")
	start := time.Now()
	s, err := NewScene(topology.Options{Backends: o.Backends}, o.Instance, o.Logger)
	if err != nil {
		return fmt.Errorf("set up the scene: %w", err)
	}
	defer func() {
		cerr := s.Close()
		if cerr == nil {
			p("\nremoved every namespace, interface, program and pin the demo created")
		}
		err = errors.Join(err, cerr)
	}()
	modes := map[dataplane.AttachMode]int{}
	for _, m := range s.Modes {
		modes[m]++
	}
	p("  built in %v: gateway namespace %s, %d client and %d backend namespaces",
		time.Since(start).Round(time.Millisecond), s.Topo.GW.Name, len(s.Topo.Tenants), len(s.Topo.Tenants)*o.Backends)
	p("  fast path instance %q on %d gateway interfaces (%s), maps pinned in %s",
		o.Instance, len(s.Modes), describeModes(modes), s.Opts.PinDir())

	steps := []struct {
		title string
		run   func() error
	}{
		{"balancing: %d connections per tenant through the same VIP", func() error { return s.stepBalance(p, o.Connections) }},
		{"isolation: tenant a attacks tenant b", func() error { return s.stepIsolation(p) }},
		{"admission: drain a-1, evict a-3 (what a failed attestation does)", func() error { return s.stepAdmission(p, o.Connections) }},
		{"counters (what `moat dataplane status --instance %s` reads from the pins)", func() error { return s.stepCounters(w, o.Instance) }},
	}
	for i, st := range steps {
		if err := ctx.Err(); err != nil {
			return nil // interrupted: clean up quietly
		}
		title := st.title
		if strings.Contains(title, "%d") {
			title = fmt.Sprintf(title, o.Connections)
		} else if strings.Contains(title, "%s") {
			title = fmt.Sprintf(title, o.Instance)
		}
		p("\n[%d] %s", i+1, title)
		if err := st.run(); err != nil {
			return err
		}
	}
	if o.Hold {
		p("\nholding the scene; inspect it with `moat dataplane status --instance %s`; Ctrl-C to remove it", o.Instance)
		<-ctx.Done()
	}
	return nil
}

func describeModes(m map[dataplane.AttachMode]int) string {
	var parts []string
	for mode, n := range m {
		parts = append(parts, fmt.Sprintf("%d %s XDP", n, mode))
	}
	sort.Strings(parts)
	return strings.Join(parts, ", ")
}

func formatSpread(m map[string]int) string {
	names := make([]string, 0, len(m))
	for n := range m {
		names = append(names, n)
	}
	sort.Strings(names)
	var b strings.Builder
	for _, n := range names {
		fmt.Fprintf(&b, "%s %-4d", n, m[n])
	}
	return b.String()
}

func (s *Scene) stepBalance(p func(string, ...any), n int) error {
	for _, tn := range s.Topo.Tenants {
		conns, err := s.Connect(tn, n)
		if err != nil {
			return err
		}
		sticky := true
		for _, c := range conns {
			if got, err := c.Ask("again", AskTimeout); err != nil || got != c.Backend {
				sticky = false
			}
		}
		CloseAll(conns)
		foreign := 0
		for _, c := range conns {
			if !strings.HasPrefix(c.Backend, tn.Name+"-") {
				foreign++
			}
		}
		p("  tenant %s: %s  (answers from another tenant: %d; every connection kept its backend: %v)",
			tn.Name, formatSpread(Spread(conns)), foreign, sticky)
	}
	return nil
}

func (s *Scene) stepIsolation(p func(string, ...any)) error {
	a, b := s.Topo.Tenants[0], s.Topo.Tenants[1]
	target := netip.AddrPortFrom(b.Backends[0].Addr, s.Topo.Opts.BackendPort)
	if c, err := topology.Dial(a.Client, target.String(), time.Second); err == nil {
		c.Close()
		return fmt.Errorf("tenant a reached %s directly", target)
	}
	p("  a -> %s (a backend address, not a service): refused", target)
	reached, err := s.Spoof(a, b, 200)
	if err != nil {
		return err
	}
	p("  a sends 200 frames with forged sources (b's client, b's backend, the VIP, the gateway): %d reached b", reached)
	base, err := s.DP.Counters()
	if err != nil {
		return err
	}
	want, err := s.SendMalformed(a, 3)
	if err != nil {
		return err
	}
	got, err := s.WaitCounted(base, want, 3*time.Second)
	if err != nil {
		return err
	}
	var parts []string
	for r, n := range got {
		parts = append(parts, fmt.Sprintf("%s %d", strings.TrimPrefix(r.String(), "drop_"), n))
	}
	sort.Strings(parts)
	p("  a sends malformed frames, all dropped and counted: %s", strings.Join(parts, ", "))
	return nil
}

func (s *Scene) stepAdmission(p func(string, ...any), n int) error {
	a := s.Topo.Tenants[0]
	conns, err := s.Connect(a, n)
	if err != nil {
		return err
	}
	defer CloseAll(conns)
	cfg := s.Topo.Config()
	bs := cfg.Tenants[0].Services[0].Backends
	bs[0].State, bs[len(bs)-1].State = lb.StateDraining, lb.StateEvicted
	if err := s.Apply(cfg); err != nil {
		return err
	}
	kept, cut := map[string]int{}, map[string]int{}
	for _, c := range conns {
		if got, err := c.Ask("after", AskTimeout); err == nil && got == c.Backend {
			kept[c.Backend]++
		} else {
			cut[c.Backend]++
		}
	}
	p("  existing connections kept: %s", formatSpread(kept))
	p("  existing connections cut:  %s", formatSpread(cut))
	fresh, err := s.Connect(a, n)
	if err != nil {
		return err
	}
	CloseAll(fresh)
	p("  new connections:           %s", formatSpread(Spread(fresh)))
	if err := s.Apply(s.Topo.Config()); err != nil {
		return err
	}
	p("  a-1 and a-3 admitted again")
	return nil
}

func (s *Scene) stepCounters(w io.Writer, instance string) error {
	st, err := dataplane.ReadStatus(s.Opts)
	if err != nil {
		return err
	}
	names := map[uint32]string{}
	for _, b := range s.Compiled.Backends {
		names[b.ID] = b.Tenant + "/" + b.Name
	}
	if err := PrintStatus(w, st, names); err != nil {
		return err
	}
	return s.printEvents(w, names)
}

// printEvents drains the flow event ring buffer and shows what it held.
func (s *Scene) printEvents(w io.Writer, names map[uint32]string) error {
	rd, err := s.DP.Events()
	if err != nil {
		return err
	}
	defer rd.Close()
	byType := map[dataplane.EventType]int{}
	var samples []dataplane.Event
	for {
		rd.SetDeadline(time.Now().Add(100 * time.Millisecond))
		e, err := rd.Read()
		if err != nil {
			break
		}
		byType[e.Type]++
		if len(samples) < 3 && (e.Type == dataplane.EventFlowNew || e.Type == dataplane.EventDrop && e.TenantID != 0) {
			samples = append(samples, e)
		}
	}
	fmt.Fprintf(w, "  ring buffer: %d new-flow, %d flow-end and %d drop events; for instance:\n",
		byType[dataplane.EventFlowNew], byType[dataplane.EventFlowEnd], byType[dataplane.EventDrop])
	for _, e := range samples {
		switch e.Type {
		case dataplane.EventFlowNew:
			fmt.Fprintf(w, "    new  tenant %d %s -> %s to backend %s\n", e.TenantID, e.Src, e.Dst, names[e.BackendID])
		default:
			fmt.Fprintf(w, "    drop tenant %d %s -> %s: %s\n", e.TenantID, e.Src, e.Dst, e.Reason)
		}
	}
	return nil
}

// PrintStatus writes st as tables. names maps backend ids to names where known.
func PrintStatus(w io.Writer, st *dataplane.Status, names map[uint32]string) error {
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "  instance %s (%s): %d interfaces, %d services, %d backends, %d conntrack entries\n",
		st.Instance, st.PinDir, len(st.Interfaces), len(st.Services), len(st.Backends), st.Flows)
	fmt.Fprintln(tw, "  TENANT\tRX PKTS\tFWD PKTS\tDROPPED\t")
	ids := make([]uint32, 0, len(st.Counters.Tenants))
	for id := range st.Counters.Tenants {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	for _, id := range ids {
		c := st.Counters.Tenants[id]
		fmt.Fprintf(tw, "  %d\t%d\t%d\t%d\t\n", id, c.RX.Packets, c.Fwd.Packets, c.Dropped.Packets)
	}
	fmt.Fprintln(tw, "  BACKEND\tSTATE\tADDRESS\tNEW FLOWS\tTO BACKEND\tREPLIES\t")
	for _, b := range st.Backends {
		c := st.Counters.Backends[b.ID]
		if c == nil {
			c = &dataplane.BackendCounters{}
		}
		name := names[b.ID]
		if name == "" {
			name = fmt.Sprintf("%d", b.ID)
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%d\t%d\t%d\t\n", name, b.State, b.Addr, c.NewFlows, c.Fwd.Packets, c.Reply.Packets)
	}
	fmt.Fprintln(tw, "  REASON\tPACKETS\tBYTES\t")
	for r, t := range st.Counters.Reasons {
		if t.Packets > 0 && dataplane.Reason(r) != dataplane.ReasonNone {
			fmt.Fprintf(tw, "  %s\t%d\t%d\t\n", dataplane.Reason(r), t.Packets, t.Bytes)
		}
	}
	ev := st.Counters.Events
	fmt.Fprintf(tw, "  flow events: %d emitted, %d lost (%d rate-limited, %d ring buffer full)\n",
		ev.Emitted, ev.Lost(), ev.RateLimited, ev.RingbufFull)
	return tw.Flush()
}
