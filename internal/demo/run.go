package demo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/seed4c/moat/controlapi/state"
	"github.com/seed4c/moat/dataplane"
	"github.com/seed4c/moat/internal/topology"
)

// RunOptions configure `moat demo`.
type RunOptions struct {
	Instance    string // fast path instance name; default "demo"
	Backends    int    // per tenant; default 3
	Connections int    // per tenant and step; default 30
	Hold        bool   // after the steps, keep everything up until ctx ends
	// NoOverlay leaves out the remote backend host reached through the attested
	// WireGuard overlay (and the gateway's own simulated SE).
	NoOverlay bool
	// Binary is the moat executable run as gateway and agents; default this one.
	Binary string
	Logger *slog.Logger
}

// Run builds the scene the production way — `moat gateway` owning the fast path in the
// gateway's namespace, `moat agent` with a simulated TPM on every backend host —
// walks through what moat does (attestation-gated admission, balancing, isolation,
// eviction when a host's measured state changes), prints it to w as it goes, and
// removes everything it created before returning, whether the run ended, failed, or
// ctx was cancelled (Ctrl-C).
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
	if o.Binary == "" {
		if o.Binary, err = os.Executable(); err != nil {
			return fmt.Errorf("find the moat executable: %w", err)
		}
	}
	p := func(format string, args ...any) { fmt.Fprintf(w, format+"\n", args...) }

	// A previous run killed before it cleaned up left its pins behind: start clean.
	_ = dataplane.Remove(dataplane.DefaultOptions(o.Instance))
	dir, err := os.MkdirTemp("", "moat-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)

	p("moat demo: a gateway, two tenants that use the same addresses, %d backend hosts with TPMs", 2*o.Backends)
	p("  client prefix 10.0.0.0/24, VIP 10.100.0.1:80, backends 10.1.n.2:8080, in both tenants")
	if !o.NoOverlay {
		p("  and a remote host of tenant a (%s:8080) reachable only through the attested WireGuard overlay", RemoteSegmentAddr)
	}
	start := time.Now()
	s, err := NewAttestedScene(AttestedOptions{Binary: o.Binary, Dir: dir, Instance: o.Instance, Backends: o.Backends, Overlay: !o.NoOverlay,
		Tampered: LastOfFirstTenant})
	if err != nil {
		return fmt.Errorf("set up the scene (logs were in %s): %w", dir, err)
	}
	defer func() {
		cerr := s.Close()
		if cerr == nil {
			p("\nremoved every namespace, process, program and pin the demo created")
		}
		err = errors.Join(err, cerr)
	}()
	p("  built in %v: `moat gateway` in namespace %s (API https://127.0.0.1:9443, CA %s),",
		time.Since(start).Round(time.Millisecond), s.Topo.GW.Name, filepath.Join(dir, "state", "ca.crt"))
	p("  and `moat agent` with a simulated TPM on every backend host, attesting every 500 ms")

	type step struct {
		title string
		run   func() error
	}
	steps := []step{
		{"attestation-gated admission: backends registered through the REST API", func() error { return s.stepAdmission(p) }},
		{fmt.Sprintf("balancing: %d connections per tenant through the same VIP", o.Connections), func() error { return s.stepBalance(p, o.Connections) }},
		{"isolation: tenant a attacks tenant b", func() error { return s.stepIsolation(p) }},
		{"the remote host over the attested WireGuard overlay", func() error { return s.stepOverlay(p, o.Connections) }},
		{"a host's application changes mid-run", func() error { return s.stepEviction(p, o.Connections) }},
		{fmt.Sprintf("status (what `moat ctl status` and `moat dataplane status --instance %s` show)", o.Instance), func() error { return s.stepStatus(w) }},
	}
	if o.NoOverlay {
		steps = slices.DeleteFunc(steps, func(st step) bool { return strings.Contains(st.title, "overlay") })
	}
	for i, st := range steps {
		if err := ctx.Err(); err != nil {
			return nil // interrupted: clean up quietly
		}
		p("\n[%d] %s", i+1, st.title)
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

func (s *AttestedScene) stepAdmission(p func(string, ...any)) error {
	tampered := LastOfFirstTenant(s.Topo)[0]
	p("  %s's application was tampered with before the backends are registered", tampered.Name)
	start := time.Now()
	if err := s.Register(); err != nil {
		return err
	}
	for _, tn := range s.Topo.Tenants {
		for _, b := range tn.Backends {
			want := state.StateAdmitted
			if b == tampered {
				want = state.StateRejected
			}
			st, err := s.WaitState(tn.Name, b.Name, 30*time.Second, want)
			if err != nil {
				return err
			}
			p("  %-4s %-9s after %-6v %s", b.Name, st.State, time.Since(start).Round(10*time.Millisecond), shorten(st.Reason, 90))
		}
	}
	if r := s.Remote(); r != nil {
		// Admitted only once the overlay link is up: the host attested to the gateway,
		// the gateway to the host, and a WireGuard handshake completed.
		st, err := s.WaitState(r.Tenant.Name, r.Name, 30*time.Second, state.StateAdmitted)
		if err != nil {
			return err
		}
		p("  %-4s %-9s after %-6v %s", r.Name, st.State, time.Since(start).Round(10*time.Millisecond), shorten(st.Reason, 120))
	}
	return nil
}

func (s *AttestedScene) stepBalance(p func(string, ...any), n int) error {
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
		p("  tenant %s: %s (every connection kept its backend: %v)", tn.Name, formatSpread(Spread(conns)), sticky)
	}
	tampered := LastOfFirstTenant(s.Topo)[0]
	p("  %s, never admitted, accepted %d connections", tampered.Name, tampered.Server.Accepted())
	return nil
}

func (s *AttestedScene) counters() (dataplane.Counters, error) {
	st, err := dataplane.ReadStatus(dataplane.DefaultOptions(s.Instance))
	if err != nil {
		return dataplane.Counters{}, err
	}
	return st.Counters, nil
}

func (s *AttestedScene) stepIsolation(p func(string, ...any)) error {
	a, b := s.Topo.Tenants[0], s.Topo.Tenants[1]
	target := netip.AddrPortFrom(b.Backends[0].Addr, s.Topo.Opts.BackendPort)
	if c, err := topology.Dial(a.Client, target.String(), time.Second); err == nil {
		c.Close()
		return fmt.Errorf("tenant a reached %s directly", target)
	}
	p("  a -> %s (a backend address, not a service): refused", target)
	reached, err := Spoof(s.Topo, a, b, 200)
	if err != nil {
		return err
	}
	p("  a sends 200 frames with forged sources (b's client, b's backend, the VIP, the gateway): %d reached b", reached)
	base, err := s.counters()
	if err != nil {
		return err
	}
	want, err := SendMalformed(s.Topo, a, 3)
	if err != nil {
		return err
	}
	got, err := WaitCounted(s.counters, base, want, 3*time.Second)
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

func (s *AttestedScene) stepEviction(p func(string, ...any), n int) error {
	a := s.Topo.Tenants[0]
	victim := a.Backends[1]
	conns, err := s.Connect(a, n)
	if err != nil {
		return err
	}
	defer CloseAll(conns)
	p("  %d connections of tenant a: %s", n, formatSpread(Spread(conns)))
	if err := os.WriteFile(s.AppFile(victim.Name), []byte("application of tenant a, release 1, patched in place\n"), 0o644); err != nil {
		return err
	}
	changed := time.Now()
	st, err := s.WaitState(a.Name, victim.Name, 10*time.Second, state.StateEvicted)
	if err != nil {
		return err
	}
	p("  %s's application file changed; its next quote showed it: evicted %v later", victim.Name, time.Since(changed).Round(time.Millisecond))
	p("    reason: %s", shorten(st.Reason, 110))
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
	return nil
}

func (s *AttestedScene) stepStatus(w io.Writer) error {
	var trs struct {
		Items []state.Transition `json:"items"`
	}
	if _, err := s.Call("GET", "/v1/transitions?limit=1000", nil, &trs); err != nil {
		return err
	}
	fmt.Fprintf(w, "  %d backend state transitions recorded (GET /v1/transitions), the last ones:\n", len(trs.Items))
	for _, t := range trs.Items[max(0, len(trs.Items)-4):] {
		fmt.Fprintf(w, "    %s %s/%s: %s -> %s (%s)\n", t.Time.Format("15:04:05.000"), t.Tenant, t.Backend, t.From, t.To, shorten(t.Reason, 60))
	}
	st, err := dataplane.ReadStatus(dataplane.DefaultOptions(s.Instance))
	if err != nil {
		return err
	}
	if err := PrintStatus(w, st, nil); err != nil {
		return err
	}
	return s.printEvents(w)
}

// printEvents drains the fast path's flow event ring buffer (through its pin, beside
// the daemon) and shows what it held.
func (s *AttestedScene) printEvents(w io.Writer) error {
	rd, err := dataplane.OpenPinnedEvents(dataplane.DefaultOptions(s.Instance))
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
		if len(samples) < 4 && e.Src.Addr().IsValid() && !e.Src.Addr().IsUnspecified() &&
			(e.Type == dataplane.EventFlowNew && len(samples) < 2 || e.Type == dataplane.EventDrop && e.TenantID != 0) {
			samples = append(samples, e)
		}
	}
	fmt.Fprintf(w, "  ring buffer: %d new-flow, %d flow-end and %d drop events; for instance:\n",
		byType[dataplane.EventFlowNew], byType[dataplane.EventFlowEnd], byType[dataplane.EventDrop])
	for _, e := range samples {
		if e.Type == dataplane.EventFlowNew {
			fmt.Fprintf(w, "    new  tenant %d %s -> %s to backend %d\n", e.TenantID, e.Src, e.Dst, e.BackendID)
		} else {
			fmt.Fprintf(w, "    drop tenant %d %s -> %s: %s\n", e.TenantID, e.Src, e.Dst, e.Reason)
		}
	}
	return nil
}

func shorten(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n-1] + "…"
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
