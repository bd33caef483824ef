package dataplane

import (
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"

	"github.com/seed4c/moat/internal/netns"
	"github.com/seed4c/moat/internal/packet"
	"github.com/seed4c/moat/lb"
	"github.com/seed4c/moat/tenant"
)

// smallEnv is one tenant on two interfaces: clients on c1, backends on b1.
func smallEnv(t testing.TB, cfg Config) (*gwEnv, *Dataplane, *tenant.Compiled) {
	t.Helper()
	env := newGWEnv(t,
		[]envIface{{"c1", 1500, true, 0}, {"b1", 1500, true, 0}, {"c9", 1500, true, 0}},
		[]envRoute{{table: 100, dst: "10.0.0.0/24", dev: "c1"}, {table: 100, dst: "10.1.0.0/24", dev: "b1"}},
		[]envNeigh{{"c1", "10.0.0.2"}, {"b1", "10.1.0.1"}, {"b1", "10.1.0.2"}}, nil)
	dp := env.open(t, cfg, tenant.DefaultLimits(), 1<<16)
	c, err := tenant.Compile(smallConfig(lb.StateAdmitted), env, tenant.IDs{}, tenant.DefaultLimits())
	if err != nil {
		t.Fatal(err)
	}
	env.apply(t, c)
	return env, dp, c
}

func smallConfig(st lb.State) tenant.Config {
	return tenant.Config{Tenants: []tenant.Tenant{{
		Name: "a", FIBTable: 100,
		Attachments: []tenant.Attachment{{Interface: "c1"}, {Interface: "b1"}},
		Services: []tenant.Service{
			{Name: "web", VIP: ap("10.100.0.1"), Port: 80, Protocol: tenant.TCP, MaglevSize: 131, Backends: []tenant.Backend{
				bk("w1", "10.1.0.1", 8080, 1, st), bk("w2", "10.1.0.2", 8080, 1, st)}},
			{Name: "dns", VIP: ap("10.100.0.1"), Port: 53, Protocol: tenant.UDP, MaglevSize: 131, Backends: []tenant.Backend{
				bk("d1", "10.1.0.1", 53, 1, st)}},
		},
		Rules: []tenant.Rule{{Sources: []netip.Prefix{pfx("10.0.0.0/24")}, Services: []string{"*"}}},
	}}}
}

func clientFrame(proto uint8, sport, dport uint16, flags uint8) []byte {
	return packet.Frame{SrcIP: ap("10.0.0.2"), DstIP: ap("10.100.0.1"), Proto: proto, SrcPort: sport, DstPort: dport, TCPFlags: flags}.Build()
}

// TestPrivilegedFlowEvents: new-flow, flow-end and drop events reach the ring buffer
// with what happened in them.
func TestPrivilegedFlowEvents(t *testing.T) {
	env, dp, c := smallEnv(t, DefaultConfig())
	rd, err := dp.Events()
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	c1 := env.ifindex["c1"]
	err = env.gw.Do(func() error {
		if v, _ := runProg(t, dp, clientFrame(6, 4000, 80, packet.SYN), c1); v != XDPRedirect {
			t.Errorf("SYN: %s", v)
		}
		if v, _ := runProg(t, dp, clientFrame(6, 4000, 80, packet.FIN|packet.ACK), c1); v != XDPRedirect {
			t.Errorf("FIN: %s", v)
		}
		if v, _ := runProg(t, dp, clientFrame(6, 4000, 81, packet.SYN), c1); v != XDPDrop {
			t.Errorf("to a port that is no service: %s", v)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	var got []Event
	rd.SetDeadline(time.Now().Add(time.Second))
	for len(got) < 3 {
		e, err := rd.Read()
		if err != nil {
			t.Fatalf("after %d events: %v", len(got), err)
		}
		got = append(got, e)
	}
	web := c.Services[0]
	if e := got[0]; e.Type != EventFlowNew || e.TenantID != web.TenantID || e.ServiceID != web.ID || e.BackendID == 0 ||
		e.Src != netip.MustParseAddrPort("10.0.0.2:4000") || e.Dst != netip.MustParseAddrPort("10.100.0.1:80") || e.Proto != 6 || e.Ifindex != c1 {
		t.Errorf("new-flow event: %+v", e)
	}
	if e := got[1]; e.Type != EventFlowEnd || e.BackendID != got[0].BackendID || e.Reply {
		t.Errorf("flow-end event: %+v", e)
	}
	if e := got[2]; e.Type != EventDrop || e.Reason != DropNoService || e.Dst.Port() != 81 {
		t.Errorf("drop event: %+v", e)
	}
}

// TestPrivilegedEventRateLimit: a flood of drops emits at most the burst, and every
// event not emitted is counted as lost.
func TestPrivilegedEventRateLimit(t *testing.T) {
	cfg := DefaultConfig()
	cfg.EventRate, cfg.EventBurst = 20, 10
	env, dp, _ := smallEnv(t, cfg)
	const n = 500
	start := time.Now()
	err := env.gw.Do(func() error {
		for i := range n {
			runProg(t, dp, clientFrame(6, uint16(i), 9999, packet.SYN), env.ifindex["c1"])
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	elapsed := time.Since(start)
	cn, err := dp.Counters()
	if err != nil {
		t.Fatal(err)
	}
	ev := cn.Events
	if ev.Emitted+ev.Lost() != n {
		t.Fatalf("%d drops but %d events emitted + %d lost", n, ev.Emitted, ev.Lost())
	}
	// Per CPU: the burst, plus what the rate refills while the loop runs.
	limit := uint64(2 * (10 + 20*elapsed.Seconds() + 1))
	if ev.Emitted > limit || ev.RateLimited == 0 {
		t.Fatalf("in %v emitted %d (limit %d on 2 CPUs), rate-limited %d", elapsed, ev.Emitted, limit, ev.RateLimited)
	}
}

// TestPrivilegedConntrackExpiry: an idle flow expires and the next packet is a new
// flow; a closing TCP flow expires on the shorter timeout, and a SYN reusing the tuple
// starts a new flow at once.
func TestPrivilegedConntrackExpiry(t *testing.T) {
	cfg := DefaultConfig()
	cfg.CTUDPTimeout, cfg.CTTCPClosingTimeout, cfg.CTRefresh = 300*time.Millisecond, 300*time.Millisecond, 50*time.Millisecond
	env, dp, c := smallEnv(t, cfg)
	c1 := env.ifindex["c1"]
	newFlows := func(svc uint32) uint64 {
		cn, err := dp.Counters()
		if err != nil {
			t.Fatal(err)
		}
		if s := cn.Services[svc]; s != nil {
			return s.NewFlows
		}
		return 0
	}
	web, dns := c.Services[0].ID, c.Services[1].ID
	send := func(f []byte) {
		t.Helper()
		if err := env.gw.Do(func() error { runProg(t, dp, f, c1); return nil }); err != nil {
			t.Fatal(err)
		}
	}
	send(clientFrame(17, 5000, 53, 0))
	send(clientFrame(17, 5000, 53, 0))
	if n := newFlows(dns); n != 1 {
		t.Fatalf("two packets of one UDP flow made %d flows", n)
	}
	time.Sleep(450 * time.Millisecond)
	send(clientFrame(17, 5000, 53, 0))
	if n := newFlows(dns); n != 2 {
		t.Fatalf("after the UDP timeout: %d flows, want 2", n)
	}

	send(clientFrame(6, 6000, 80, packet.SYN))
	send(clientFrame(6, 6000, 80, packet.ACK))
	send(clientFrame(6, 6000, 80, packet.FIN|packet.ACK))
	send(clientFrame(6, 6000, 80, packet.ACK))
	if n := newFlows(web); n != 1 {
		t.Fatalf("one TCP connection made %d flows", n)
	}
	send(clientFrame(6, 6000, 80, packet.SYN)) // tuple reused right after the close
	if n := newFlows(web); n != 2 {
		t.Fatalf("SYN on a closing flow: %d flows, want 2", n)
	}
	send(clientFrame(6, 6000, 80, packet.RST))
	time.Sleep(450 * time.Millisecond)
	send(clientFrame(6, 6000, 80, packet.ACK))
	if n := newFlows(web); n != 3 {
		t.Fatalf("after the closing timeout: %d flows, want 3", n)
	}
}

// TestPrivilegedWriterConverges: whatever sequence of configurations is applied, the
// maps end up holding exactly the last one, and a new writer (a restarted daemon)
// converges from whatever the maps hold.
func TestPrivilegedWriterConverges(t *testing.T) {
	env, dp, c0 := smallEnv(t, DefaultConfig())
	cfgs := []tenant.Config{smallConfig(lb.StateDraining), {}, smallConfig(lb.StateAdmitted)}
	cfgs[0].Tenants[0].Services = cfgs[0].Tenants[0].Services[:1]
	ids := c0.IDs
	var last *tenant.Compiled
	for i, cfg := range cfgs {
		c, err := tenant.Compile(cfg, env, ids, tenant.DefaultLimits())
		if err != nil {
			t.Fatal(err)
		}
		ids, last = c.IDs, c
		env.apply(t, c)
		got, err := dp.Writer().readMapState()
		if err != nil {
			t.Fatal(err)
		}
		want := toMapState(c)
		// A service without admitted backends keeps its table slots (ready to be refilled
		// in place): tables exist for every service with a table, and only for services.
		svcIDs := map[uint32]bool{}
		for _, v := range want.services {
			svcIDs[v.Id] = true
		}
		for id := range want.tables {
			if _, ok := got.tables[id]; !ok {
				t.Fatalf("step %d: service %d has no table in the maps", i, id)
			}
		}
		for id := range got.tables {
			if !svcIDs[id] {
				t.Fatalf("step %d: a table of service %d, which is gone", i, id)
			}
		}
		if len(got.attachments) != len(want.attachments) || len(got.services) != len(want.services) ||
			len(got.policy) != len(want.policy) || len(got.backends) != len(want.backends) ||
			len(got.txPorts) != len(want.txPorts) || len(got.egress) != len(want.egress) {
			t.Fatalf("step %d: maps hold %d/%d/%d/%d/%d attachments/services/policy/backends/tables, want %d/%d/%d/%d/%d", i,
				len(got.attachments), len(got.services), len(got.policy), len(got.backends), len(got.tables),
				len(want.attachments), len(want.services), len(want.policy), len(want.backends), len(want.tables))
		}
		if !maps.Equal(got.attachments, want.attachments) || !maps.Equal(got.ports, want.ports) {
			t.Fatalf("step %d: attachments %v and by port %v in the maps, want %v and %v", i, got.attachments, got.ports, want.attachments, want.ports)
		}
		for k, v := range want.backends {
			if got.backends[k] != v {
				t.Fatalf("step %d: backend %d is %+v, want %+v", i, k, got.backends[k], v)
			}
		}
		if !maps.Equal(got.serviceFilter, want.serviceFilter) || !maps.Equal(got.backendFilter, want.backendFilter) {
			t.Fatalf("step %d: filter words %v and %v, want %v and %v", i, got.serviceFilter, got.backendFilter, want.serviceFilter, want.backendFilter)
		}
	}
	// A fresh writer over the same maps (what a restarted daemon has) applies the
	// empty configuration: everything goes, nothing is left behind.
	fresh := newWriter(dp.writer.m, dp.writer.innerSpec, dp.writer.limits, dp.writer.maxFlows)
	empty, err := tenant.Compile(tenant.Config{}, env, last.IDs, tenant.DefaultLimits())
	if err != nil {
		t.Fatal(err)
	}
	if err := env.gw.Do(func() error { return fresh.Apply(empty) }); err != nil {
		t.Fatal(err)
	}
	got, err := fresh.readMapState()
	if err != nil {
		t.Fatal(err)
	}
	if n := len(got.attachments) + len(got.ports) + len(got.services) + len(got.policy) + len(got.backends) + len(got.tables) + len(got.txPorts) + len(got.egress) + len(got.serviceFilter) + len(got.backendFilter); n != 0 {
		t.Fatalf("a fresh writer applying nothing left %d entries", n)
	}
}

// TestPrivilegedAttachLifecycle: attach pins a link; a second process attaching the
// same instance swaps its program into the same link; detach and remove leave nothing.
func TestPrivilegedAttachLifecycle(t *testing.T) {
	env := newGWEnv(t, []envIface{{"c1", 1500, true, 0}}, nil, nil, nil)
	dp := env.open(t, DefaultConfig(), tenant.DefaultLimits(), 1024)
	opts := dp.Options()
	pin := filepath.Join(opts.PinDir(), "links", "xdp_c1")
	progID := func() uint32 {
		l, err := link.LoadPinnedLink(pin, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		info, err := l.Info()
		if err != nil {
			t.Fatal(err)
		}
		return uint32(info.Program)
	}
	var mode AttachMode
	if err := env.gw.Do(func() (err error) { mode, err = dp.Attach("c1"); return err }); err != nil {
		t.Fatal(err)
	}
	if mode != ModeNative {
		t.Errorf("veth attach mode %s, want native", mode)
	}
	first := progID()
	var second *Dataplane
	if err := env.gw.Do(func() (err error) {
		if second, err = Open(opts); err != nil {
			return err
		}
		_, err = second.Attach("c1")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer second.Close()
	if id := progID(); id == first {
		t.Errorf("re-attaching kept program %d: the new process's program was not swapped in", id)
	}
	if names, err := dp.AttachedInterfaces(); err != nil || len(names) != 1 || names[0] != "c1" {
		t.Errorf("attached interfaces: %v, %v", names, err)
	}
	if err := dp.Detach("c1"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(pin); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("link pin still there after detach: %v", err)
	}
	if err := env.gw.Do(func() error {
		_, err := dp.Attach("nosuch")
		return err
	}); err == nil {
		t.Error("attaching to a missing interface succeeded")
	}
	if err := Remove(opts); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(opts.PinDir()); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("pin directory still there after remove: %v", err)
	}
}

// TestPrivilegedIncompatiblePins: reopening an instance with other map sizes is refused
// with an error that says what to do, and does not touch the running instance.
func TestPrivilegedIncompatiblePins(t *testing.T) {
	env, dp, _ := smallEnv(t, DefaultConfig())
	opts := dp.Options()
	opts.MaxFlows *= 2
	err := env.gw.Do(func() error {
		other, err := Open(opts)
		if err == nil {
			other.Close()
		}
		return err
	})
	if err == nil {
		t.Fatal("opened pinned maps with a different conntrack size")
	}
	if want := "moat dataplane remove"; !strings.Contains(err.Error(), want) {
		t.Errorf("error does not say how to recover (%q): %v", want, err)
	}
}

// TestPrivilegedFailedOpenLeavesPinsAsFound: an Open whose program the verifier refuses
// (after its maps were created and pinned) removes the pins it created, and leaves
// those of a running instance alone.
func TestPrivilegedFailedOpenLeavesPinsAsFound(t *testing.T) {
	env, dp, c := smallEnv(t, DefaultConfig())
	// The program's first instruction reads a register nothing wrote; the rest, and
	// its map references, are intact.
	refused := func(spec *ebpf.CollectionSpec) {
		insns := spec.Programs[gatewayProgXdpGateway].Instructions
		insns[0] = asm.LoadMem(asm.R6, asm.R2, 0, asm.DWord).WithMetadata(insns[0].Metadata)
	}
	openRefused := func(opts Options) error {
		return env.gw.Do(func() error {
			d, err := open(opts, refused)
			if err == nil {
				d.Close()
				return errors.New("the verifier accepted a program that reads an unwritten register")
			}
			if !strings.Contains(err.Error(), "verifier refused the program") {
				return fmt.Errorf("not the verifier's refusal: %w", err)
			}
			return nil
		})
	}

	fresh := DefaultOptions(netns.UniqueName("t"))
	fresh.Config, fresh.Limits, fresh.MaxFlows = DefaultConfig(), tenant.DefaultLimits(), 1<<16
	t.Cleanup(func() { Remove(fresh) })
	if err := openRefused(fresh); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(fresh.PinDir()); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a first Open that failed left %s behind (%v)", fresh.PinDir(), err)
	}

	if err := openRefused(dp.Options()); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dp.Options().PinDir(), gatewayMapConntrack)); err != nil {
		t.Errorf("a failed Open over a running instance's pins removed them: %v", err)
	}
	env.apply(t, c) // the running instance still writes its maps
}

// TestPrivilegedWriterEvict: Evict cuts a backend out at once, ahead of any Apply: its
// established flows are dropped (balanced again, they pick it again from the table
// that still names it: unavailable), their replies are dropped as evicted, new flows
// that pick it are dropped as unavailable (none reaches it), and the other backend's
// flows go on.
// The writer knows what Evict wrote: applying a configuration that admits the backend
// admits it again, and its flow resumes. Ids the maps do not hold as usable are
// ignored.
func TestPrivilegedWriterEvict(t *testing.T) {
	env, dp, c := smallEnv(t, DefaultConfig())
	c1, b1 := env.ifindex["c1"], env.ifindex["b1"]
	w1 := ap("10.1.0.1")
	var w1ID uint32
	for _, b := range c.Backends {
		if b.Name == "w1" {
			w1ID = b.ID
		}
	}
	// send runs a client frame and returns its verdict and, when forwarded, the
	// backend address it went to.
	send := func(sport uint16, flags uint8) (Verdict, netip.Addr) {
		t.Helper()
		var (
			v   Verdict
			out []byte
		)
		if err := env.gw.Do(func() error { v, out = runProg(t, dp, clientFrame(6, sport, 80, flags), c1); return nil }); err != nil {
			t.Fatal(err)
		}
		if v != XDPRedirect {
			return v, netip.Addr{}
		}
		return v, netip.AddrFrom4([4]byte(out[30:34])) // the IPv4 destination after DNAT
	}
	reasons := func() [NumReasons]Traffic {
		t.Helper()
		cn, err := dp.Counters()
		if err != nil {
			t.Fatal(err)
		}
		return cn.Reasons
	}

	var onW1, onW2 uint16
	for sport := uint16(20000); onW1 == 0 || onW2 == 0; sport++ {
		if sport > 20200 {
			t.Fatal("200 flows did not reach both backends")
		}
		switch v, to := send(sport, packet.SYN); {
		case v != XDPRedirect:
			t.Fatalf("SYN from port %d: %s", sport, v)
		case to == w1 && onW1 == 0:
			onW1 = sport
		case to != w1 && onW2 == 0:
			onW2 = sport
		}
	}

	before := reasons()
	if err := dp.Writer().Evict([]uint32{w1ID}); err != nil {
		t.Fatal(err)
	}
	if v, _ := send(onW1, packet.ACK); v != XDPDrop {
		t.Errorf("the evicted backend's established flow: %s, want drop", v)
	}
	reply := packet.Frame{SrcIP: w1, DstIP: ap("10.0.0.2"), Proto: 6, SrcPort: 8080, DstPort: onW1, TCPFlags: packet.ACK}.Build()
	if err := env.gw.Do(func() error {
		if v, _ := runProg(t, dp, reply, b1); v != XDPDrop {
			t.Errorf("the evicted backend's reply: %s, want drop", v)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if v, to := send(onW2, packet.ACK); v != XDPRedirect || to == w1 {
		t.Errorf("the other backend's flow: %s to %s", v, to)
	}
	dropped := 0
	for sport := uint16(30000); sport < 30064; sport++ {
		switch v, to := send(sport, packet.SYN); {
		case v == XDPDrop:
			dropped++
		case to == w1:
			t.Fatalf("new flow from port %d reached the evicted backend", sport)
		}
	}
	after := reasons()
	if n := after[DropBackendEvicted].Packets - before[DropBackendEvicted].Packets; n != 1 {
		t.Errorf("%d drop_backend_evicted, want 1 (the reply)", n)
	}
	if n := after[DropBackendUnavailable].Packets - before[DropBackendUnavailable].Packets; n != uint64(dropped)+1 || dropped == 0 {
		t.Errorf("%d drop_backend_unavailable for the established flow and %d new flows dropped of 64 (the table still names the backend: some must be)", n, dropped)
	}

	if err := dp.Writer().Evict([]uint32{w1ID, 999, 4000}); err != nil {
		t.Errorf("evicting an evicted backend and ids the maps do not hold: %v", err)
	}
	// What a restarted daemon finds (reconcile.New keeps w1 out on an older result).
	if ids, err := dp.Writer().Evicted(); err != nil || !slices.Equal(ids, []uint32{w1ID}) {
		t.Errorf("Evicted: %v %v, want [%d]", ids, err, w1ID)
	}
	again, _ := reopen(t, env, dp)
	if ids, err := again.Writer().Evicted(); err != nil || !slices.Equal(ids, []uint32{w1ID}) {
		t.Errorf("Evicted over the pins, as a restarted daemon reads it: %v %v, want [%d]", ids, err, w1ID)
	}
	env.apply(t, c) // the configuration that admits w1
	if ids, err := dp.Writer().Evicted(); err != nil || len(ids) != 0 {
		t.Errorf("Evicted after the configuration that admits w1: %v %v", ids, err)
	}
	if v, to := send(onW1, packet.ACK); v != XDPRedirect || to != w1 {
		t.Errorf("after a configuration that admits it again: %s to %s", v, to)
	}
}
