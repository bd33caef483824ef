package bench

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/nftables"
	"golang.org/x/sys/unix"

	"github.com/seed4c/moat/attest"
	"github.com/seed4c/moat/controlapi/kv"
	"github.com/seed4c/moat/controlapi/reconcile"
	"github.com/seed4c/moat/controlapi/state"
	"github.com/seed4c/moat/internal/netns"
	"github.com/seed4c/moat/internal/packet"
	"github.com/seed4c/moat/lb"
	"github.com/seed4c/moat/tenant"
)

// Admission and eviction are measured in live traffic, from the moment the gateway
// learns the decision to its effect on the frames that reach the backend:
//   - admission: a backend that was not admitted is; new flows arrive all the time,
//     and the latency ends at the first frame that reaches the backend;
//   - eviction: an admitted backend with established flows is evicted; the latency
//     ends at the last frame of those flows that reaches it (known once the backend
//     has received nothing for evictionQuiet).
//
// A latency ends when that frame arrived, as the backend's sink stamped it in the
// kernel's monotonic clock, not when the watcher saw the sink's count change: the
// watcher's thread can pause for milliseconds on this machine.
//
// The traffic is slow and steady (pacedFrames every pacedTick, from one thread on the
// load core that also watches the backend's sink), so that the system under test has
// its core free to act on the decision: the measurement is of the decision's path, not
// of a queue behind a flood.
const (
	pacedTick     = 50 * time.Microsecond
	pacedFrames   = 2
	evictionFlows = 256 // established flows, about a third of them on the evicted backend
	evictionQuiet = 30 * time.Millisecond
	// evictionQuietCycles: frames per flow sent since the last one at the backend
	// before it counts as quiet.
	evictionQuietCycles = 3
	decisionTimeout     = 3 * time.Second  // after the decision's call returned
	decisionCap         = 30 * time.Second // for the call itself
	pacedWarmup         = 20 * time.Millisecond
)

// admitter makes a system admit or evict the scene's first backend of tenant a the
// way that system is driven in production. Both return once the decision is handed
// over; the system may act on it later (moat's reconciler does, asynchronously).
type admitter struct {
	admit, evict func() error
	// newRound, when set, puts the system back in the state every round starts from.
	newRound func() error
	close    func() error
	// how says how the decision is carried out, for the report.
	how string
	// toMaps, when set, returns the time from the last admission's decision to the
	// system's maps written, by its own account (the part of the latency that is the
	// system's work, not the traffic's), and whether there was one since the last call.
	toMaps func() (time.Duration, bool)
}

// admissionSteps is the number of progress steps of admissionPhase.
func (b *bencher) admissionSteps() int {
	if !b.opts.wantsScenario(ScAdmission) && !b.opts.wantsScenario(ScEviction) {
		return 0
	}
	n := 0
	for _, s := range []string{SysMoat, SysNft} {
		if b.opts.wants(s) {
			n += b.profile.AdmissionRounds
		}
	}
	return n
}

// admissionPhase measures admission and eviction latency (ScAdmission, ScEviction) on
// moat and on nftables: one admission and one eviction of the same backend per round.
func (b *bencher) admissionPhase(ctx context.Context) (err error) {
	if b.admissionSteps() == 0 {
		return nil
	}
	defer func() { err = errors.Join(err, b.closeSinks()) }()
	if err := b.attachSinks(b.scene.Topo.PeerHosts()); err != nil {
		return err
	}
	// The paced sender's thread spins, and keeps one of the process's Go processors
	// for itself. One more processor leaves the decisions (moat's reconciler, the nft
	// and conntrack calls) as many as they would have in a process of their own;
	// without it they shared one, and a commit's fsync held it for milliseconds.
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(runtime.GOMAXPROCS(0) + 1))
	// The decisions are the system under test's work: they run on its core (the sender
	// pins its own thread to the load core). Left to the scheduler, moat's reconciler
	// also ran on the load core, beside the sender (at nice -20), whose longest pauses
	// were then p50 1.0–2.1 ms in moat's rounds against 0.13 ms in nftables'; pinned,
	// 0.11–0.16 ms in both (four runs on one host, bench/README.md).
	restore, err := pinProcess(sutCPU)
	if err != nil {
		return err
	}
	defer restore()
	for _, system := range []string{SysMoat, SysNft} {
		if !b.opts.wants(system) {
			continue
		}
		if err := b.withSystem(system, KindPackets, func(sys *sut) error {
			return b.admissionRounds(ctx, system)
		}); err != nil {
			return err
		}
	}
	return nil
}

// attachSinks puts a sink on each of hosts (unless it has one), its NAPI thread on the
// load core.
func (b *bencher) attachSinks(hosts []*netns.Host) error {
	for _, h := range hosts {
		if _, ok := b.sinks[h]; !ok {
			s, err := AttachSink(h, "eth0")
			if err != nil {
				return err
			}
			b.sinks[h] = s
		}
		if _, err := threadNAPI(h, loadCPU, rtPrio, "eth0"); err != nil {
			return err
		}
	}
	return nil
}

func (b *bencher) closeSinks() error {
	var errs []error
	for h, s := range b.sinks {
		errs = append(errs, s.Close())
		delete(b.sinks, h)
	}
	return errors.Join(errs...)
}

// admissionRounds runs the profile's rounds on a system that is set up, and records
// them.
func (b *bencher) admissionRounds(ctx context.Context, system string) error {
	var (
		adm admitter
		err error
	)
	switch system {
	case SysMoat:
		adm, err = b.moatAdmitter(ctx)
	case SysNft:
		adm, err = b.nftAdmitter()
	}
	if err != nil {
		b.fail(fmt.Errorf("%s admission: %w", system, err))
		return nil
	}
	defer func() {
		if err := adm.close(); err != nil {
			b.fail(fmt.Errorf("%s admission: %w", system, err))
		}
	}()
	sink := b.sinks[b.scene.Topo.Tenants[0].Backends[0].Host]
	var admits, evicts, toMaps []time.Duration
	start := time.Now()
	redone, stepped := 0, -1
	atomic.StoreUint64(&b.pacedRefused, 0)
	b.pacedPauses = b.pacedPauses[:0]
	for round := 0; round < b.profile.AdmissionRounds; round++ {
		if round != stepped { // a round measured again is no step of its own
			b.prog.step(fmt.Sprintf("%-8s %-25s round %d/%d", system, "admission, eviction", round+1, b.profile.AdmissionRounds))
			stepped = round
		}
		if err := adm.evict(); err != nil { // from a known state: the backend evicted
			return fmt.Errorf("%s: evict before round %d: %w", system, round+1, err)
		}
		if adm.newRound != nil {
			if err := adm.newRound(); err != nil {
				return fmt.Errorf("%s: before round %d: %w", system, round+1, err)
			}
		}
		time.Sleep(10 * time.Millisecond)
		if adm.toMaps != nil {
			adm.toMaps() // forget a write of before this round
		}
		d, err := b.timeAdmission(ctx, sink, adm)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			b.fail(fmt.Errorf("%s %s round %d: %w", system, ScAdmission, round+1, err))
			continue
		}
		admits = append(admits, d)
		if adm.toMaps != nil {
			if tm, ok := adm.toMaps(); ok {
				toMaps = append(toMaps, tm)
			}
		}
		if d, err = b.timeEviction(ctx, sink, adm); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if errors.Is(err, errNoFrameAfterDecision) && redone < max(b.profile.AdmissionRounds, minRedoBudget) {
				redone++
				admits = admits[:len(admits)-1]
				if len(toMaps) > len(admits) { // this round's, if it had one
					toMaps = toMaps[:len(admits)]
				}
				round-- // the whole round again
				continue
			}
			b.fail(fmt.Errorf("%s %s round %d: %w", system, ScEviction, round+1, err))
			continue
		}
		evicts = append(evicts, d)
	}
	took := time.Since(start).Seconds()
	for _, m := range []struct {
		scenario, what string
		d              []time.Duration
	}{
		{ScAdmission, "from the decision to the first new flow's frame at the backend (its arrival as the backend's sink stamped it)", admits},
		{ScEviction, "from the decision to the last frame of an established flow at the backend (its arrival as the backend's sink stamped it)", evicts},
	} {
		if len(m.d) == 0 || !b.opts.wantsScenario(m.scenario) {
			continue
		}
		b.record(m.scenario, system, KindLatency, 0, Sample{Seconds: took, Latency: latencies(m.d)})
		if r := b.rep.Find(m.scenario, system, 0); r != nil {
			note := fmt.Sprintf("%d rounds, %s; %s; traffic %d frames every %v",
				len(m.d), m.what, adm.how, pacedFrames, pacedTick)
			if redone > 0 {
				note += fmt.Sprintf("; %d rounds measured again: not one frame reached the backend after the eviction decision", redone)
			}
			// q-quantile of sorted durations, to the microsecond.
			at := func(ds []time.Duration, q float64) time.Duration { return quantile(ds, q).Round(time.Microsecond) }
			if ps := slices.Sorted(slices.Values(b.pacedPauses)); len(ps) > 0 {
				note += fmt.Sprintf("; the sender's longest pause in a measurement: p50 %v, p90 %v, max %v",
					at(ps, 0.5), at(ps, 0.9), at(ps, 1))
			}
			if ds := slices.Sorted(slices.Values(toMaps)); m.scenario == ScAdmission && len(ds) > 0 {
				note += fmt.Sprintf("; from the decision to the maps written (the system's own part, timed in its map writer): p50 %v, p90 %v",
					at(ds, 0.5), at(ds, 0.9))
			}
			if refused := atomic.LoadUint64(&b.pacedRefused); refused > 0 {
				note += fmt.Sprintf("; %d frames refused by the client's full device queue (ENOBUFS), lost as on a wire", refused)
			}
			r.Notes = append(r.Notes, note)
		}
	}
	return nil
}

// stateTempRoot holds the moat admitter's store: /var/tmp is on disk (Debian's /tmp
// may be a tmpfs, whose fsync costs nothing), as the daemon's /var/lib/moat is.
const stateTempRoot = "/var/tmp"

// moatAdmitter drives moat as the gateway daemon does: the desired state in a store,
// the reconciler compiling it with the attestation results it is notified of and
// writing the fast path. Every backend but the measured one is admitted for the whole
// run; the measured one's results alternate.
//
// The store is the daemon's: a bbolt file, every commit fsync'ed, in a temporary
// directory on the disk (not tmpfs) that the admitter removes when it closes. Runs
// before this store was used here had an in-memory one, and hid what its commits
// cost the daemon: with the reconciler of then, which stored a changed standing
// before it wrote the maps, a bbolt store made moat's admission p50 10–29 ms and its
// eviction p50 2 ms, p90 44–55 ms, in live traffic on this machine.
func (b *bencher) moatAdmitter(ctx context.Context) (_ admitter, err error) {
	topo := b.scene.Topo
	gw := topo.GW
	dir, err := os.MkdirTemp(stateTempRoot, "moat-bench-state-")
	if err != nil {
		return admitter{}, fmt.Errorf("state directory: %w", err)
	}
	db, err := kv.OpenBolt(filepath.Join(dir, "state.db"), 5*time.Second)
	if err != nil {
		return admitter{}, errors.Join(err, os.RemoveAll(dir))
	}
	closeStore := func() error { return errors.Join(db.Close(), os.RemoveAll(dir)) }
	defer func() {
		if err != nil {
			err = errors.Join(err, closeStore())
		}
	}()
	st := state.New(db, nil, nil)
	var errs []error
	add := func(_ any, err error) { errs = append(errs, err) }
	for _, ten := range topo.Config().Tenants {
		svc := ten.Services[0]
		add(st.CreateTenant(state.Tenant{Name: ten.Name, FIBTable: ten.FIBTable, Attachments: ten.Attachments}))
		add(st.CreateService(state.Service{Tenant: ten.Name, Name: svc.Name, VIP: svc.VIP, Port: svc.Port, Protocol: svc.Protocol, MaglevSize: svc.MaglevSize}))
		add(st.CreatePolicy(state.Policy{Tenant: ten.Name, Name: "app", References: map[string][]string{"/srv/app": {strings.Repeat("ab", 32)}}}))
		for _, r := range ten.Rules {
			add(st.CreateRule(state.Rule{Tenant: ten.Name, Name: r.Name, Sources: r.Sources, Services: r.Services}))
		}
		for _, be := range svc.Backends {
			add(st.CreateBackend(state.Backend{Tenant: ten.Name, Service: svc.Name, Name: be.Name, Identity: be.Name,
				Addr: be.Addr, Port: be.Port, Weight: be.Weight, Policy: "app"}))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return admitter{}, fmt.Errorf("desired state: %w", err)
	}
	dp := b.scene.Moat()
	ta := topo.Tenants[0]
	// measuredAdmitted: whether the fast path last written admits the measured backend
	// (0 unknown, 1 no, 2 yes).
	var measuredAdmitted atomic.Int32
	// The time of the last admitting result, and from it to the maps written.
	var (
		toMapsMu sync.Mutex
		admitAt  time.Time
		toMaps   time.Duration // 0: no write since the last read
	)
	apply := func(c *tenant.Compiled) error {
		if err := gw.Do(func() error { return dp.Writer().Apply(c) }); err != nil {
			return err
		}
		admitted := int32(1)
		for _, be := range c.Backends {
			if be.Tenant == ta.Name && be.Name == ta.Backends[0].Name && be.State == lb.StateAdmitted {
				admitted = 2
			}
		}
		if admitted == 2 && measuredAdmitted.Load() != 2 {
			toMapsMu.Lock()
			if !admitAt.IsZero() {
				toMaps = max(time.Since(admitAt), 1)
			}
			toMapsMu.Unlock()
		}
		measuredAdmitted.Store(admitted)
		return nil
	}
	rec, err := reconcile.New(reconcile.Config{State: st, Compiler: tenant.NewCompiler(topo, dp.Options().Limits, tenant.IDs{}),
		Applier: writerApplier{apply: apply, evict: dp.Writer().Evict, evicted: dp.Writer().Evicted}})
	if err != nil {
		return admitter{}, err
	}
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- rec.Run(rctx) }()
	measured := ta.Name + "/" + ta.Backends[0].Name
	now := time.Now()
	for _, tn := range topo.Tenants {
		for _, be := range tn.Backends {
			if s := tn.Name + "/" + be.Name; s != measured {
				rec.Notify(attest.Result{Subject: s, Status: attest.StatusAffirming, Issued: now, Expires: now.Add(time.Hour)})
			}
		}
	}
	notify := func(status attest.Status) func() error {
		return func() error {
			now := time.Now()
			exp := now.Add(time.Hour)
			if status != attest.StatusAffirming {
				exp = now
			} else {
				toMapsMu.Lock()
				admitAt = now
				toMapsMu.Unlock()
			}
			rec.Notify(attest.Result{Subject: measured, Status: status, Issued: now, Expires: exp})
			return nil
		}
	}
	return admitter{
		admit: notify(attest.StatusAffirming),
		evict: notify(attest.StatusContraindicated),
		// The reconciler acts on a result later: a round starts once the fast path
		// no longer admits the backend (under load that took longer than the pause
		// before the round, and new flows reached the backend before its admission).
		newRound: func() error {
			for start := time.Now(); measuredAdmitted.Load() != 1; time.Sleep(time.Millisecond) {
				if time.Since(start) > decisionCap {
					return fmt.Errorf("the reconciler had not evicted %s %v after its result", measured, decisionCap)
				}
			}
			return nil
		},
		close: func() error {
			cancel()
			err := <-done
			// Back to the scene's static configuration for whatever runs next.
			return errors.Join(err, gw.Do(func() error { return dp.Writer().Apply(b.scene.compiled) }), closeStore())
		},
		toMaps: func() (time.Duration, bool) {
			toMapsMu.Lock()
			defer toMapsMu.Unlock()
			d := toMaps
			toMaps = 0
			return d, d > 0
		},
		how: "an attestation result handed to the reconciler as the gateway daemon does (a failed one evicts in the fast path as it arrives; then compile, map writes, and the commit to a bbolt store on disk)",
	}, nil
}

// writerApplier is the fast path's writer as the reconciler sees it (a
// reconcile.Evicter, as dataplane.Writer is), with the bench's bookkeeping in apply.
type writerApplier struct {
	apply   func(*tenant.Compiled) error
	evict   func([]uint32) error
	evicted func() ([]uint32, error)
}

func (w writerApplier) Apply(c *tenant.Compiled) error { return w.apply(c) }
func (w writerApplier) Evict(ids []uint32) error       { return w.evict(ids) }
func (w writerApplier) Evicted() ([]uint32, error)     { return w.evicted() }

var _ reconcile.Evicter = writerApplier{}

// nftAdmitter drives the nftables baseline as fast as nftables can be driven: one
// netlink transaction per decision, from this process (google/nftables), as a
// controller would; an operator's script that forks nft pays its start-up too. The
// fastest way nftables has to cut established flows is a drop: during this phase the
// forward chain drops the frames to and from every (interface, address) in a set of
// evicted backends, so an eviction adds the backend there and deletes it from the
// tenant's map of backends (no new flow picks it), and an admission undoes both. The
// backend's conntrack entries stay and time out: deleting them (as conntrack -D does)
// dumps the whole table first, and without the drop set conntrack keeps every
// established flow on the backend for as long as the flow lasts. The set and its two
// rules exist only for this phase: the packet scenarios measure the ruleset without
// them.
func (b *bencher) nftAdmitter() (admitter, error) {
	topo := b.scene.Topo
	ta := topo.Tenants[0]
	be := ta.Backends[0]
	if _, err := b.scene.nft(strings.Join([]string{
		fmt.Sprintf("add set ip %s evicted { type ifname . ipv4_addr; }", nftTable),
		fmt.Sprintf("insert rule ip %s filter_fwd oifname . ip daddr @evicted drop", nftTable),
		fmt.Sprintf("insert rule ip %s filter_fwd iifname . ip saddr @evicted drop", nftTable),
	}, "\n")+"\n", "-f", "-"); err != nil {
		return admitter{}, fmt.Errorf("nftables set of evicted backends: %w", err)
	}
	var (
		conn             *nftables.Conn
		evictedSet, bmap *nftables.Set
	)
	err := topo.GW.Do(func() (err error) { // a lasting socket, opened in the gateway's namespace
		if conn, err = nftables.New(nftables.AsLasting()); err != nil {
			return err
		}
		table := &nftables.Table{Name: nftTable, Family: nftables.TableFamilyIPv4}
		if evictedSet, err = conn.GetSetByName(table, "evicted"); err != nil {
			return err
		}
		bmap, err = conn.GetSetByName(table, nftBackendMap(ta.Name))
		return err
	})
	if err != nil {
		if conn != nil {
			conn.CloseLasting()
		}
		return admitter{}, fmt.Errorf("nftables over netlink: %w", err)
	}
	// The evicted set's key: the interface name in IFNAMSIZ bytes, then the address.
	key := make([]byte, unix.IFNAMSIZ, unix.IFNAMSIZ+4)
	copy(key, be.GWIface)
	addr := be.Addr.As4()
	key = append(key, addr[:]...)
	slot := []byte{0, 0, 0, 0} // the backend's bucket in the jhash map: 0
	evicted := false           // the ruleset is loaded with every backend admitted
	return admitter{
		admit: func() error {
			if !evicted {
				return nil
			}
			evicted = false
			if err := conn.SetDeleteElements(evictedSet, []nftables.SetElement{{Key: key}}); err != nil {
				return err
			}
			if err := conn.SetAddElements(bmap, []nftables.SetElement{{Key: slot, Val: addr[:]}}); err != nil {
				return err
			}
			return conn.Flush()
		},
		evict: func() error {
			if evicted {
				return nil
			}
			evicted = true
			if err := conn.SetAddElements(evictedSet, []nftables.SetElement{{Key: key}}); err != nil {
				return err
			}
			if err := conn.SetDeleteElements(bmap, []nftables.SetElement{{Key: slot}}); err != nil {
				return err
			}
			return conn.Flush()
		},
		// Every round's new flows would stay in conntrack (unanswered SYNs, for
		// minutes): each round starts from an empty table, nftables' best case.
		newRound: b.scene.FlushConntrack,
		close:    conn.CloseLasting, // the set goes with the ruleset
		how:      "one netlink transaction per decision from the harness (google/nftables): eviction adds the backend to a set of evicted backends that the forward chain drops and deletes it from the map of backends, admission undoes both; every round from an empty conntrack table",
	}, nil
}

// pacedFlows are the flows paced traffic cycles through (n of them from first), or
// with n = 0 a new flow for every frame. The sender writes each frame into one buffer
// it reuses: it must not allocate, or the Go runtime drafts it into garbage collection
// work (mark assists) whenever the system under test allocates, and the traffic stops
// for milliseconds at the very moment being measured.
type pacedFlows struct {
	template []byte // flow 0's frame: tenant a's client to the VIP
	first, n uint64
}

// Offsets in the template (untagged Ethernet, IPv4 without options, TCP).
const (
	pacedIPOff  = 14
	pacedTCPOff = pacedIPOff + 20
)

// frameInto writes the i-th frame sent into buf (grown if it is too small) and
// returns it: flow k = first + (i mod n), or first + i with n = 0, comes from
// clientBase + k/64000 mod 253, port 1024 + k mod 64000, with both checksums
// recomputed.
func (p pacedFlows) frameInto(buf []byte, i uint64) []byte {
	if p.n > 0 {
		i %= p.n
	}
	k := p.first + i
	buf = append(buf[:0], p.template...)
	ip, tcp := buf[pacedIPOff:pacedTCPOff], buf[pacedTCPOff:pacedTCPOff+20]
	ip[15] += byte(k / 64000 % 253)
	binary.BigEndian.PutUint16(tcp[0:], uint16(1024+k%64000))
	binary.BigEndian.PutUint16(ip[10:], 0)
	binary.BigEndian.PutUint16(ip[10:], packet.Checksum(ip, 0))
	binary.BigEndian.PutUint16(tcp[16:], 0)
	binary.BigEndian.PutUint16(tcp[16:], packet.Checksum(tcp, packet.PseudoSum([4]byte(ip[12:16]), [4]byte(ip[16:20]), 6, len(tcp))))
	return buf
}

// clientFlows returns tenant a's flows: flow k comes from 10.0.0.(2 + k/64000 mod 253),
// port 1024 + k mod 64000; every call starts past the flows of the calls before.
func (b *bencher) clientFlows(n uint64, flags uint8) (pacedFlows, error) {
	topo := b.scene.Topo
	ta := topo.Tenants[0]
	smac, err := mac(ta.Client, "eth0")
	if err != nil {
		return pacedFlows{}, err
	}
	dmac, err := mac(topo.GW, ta.ClientIface)
	if err != nil {
		return pacedFlows{}, err
	}
	first := b.pacedNext
	if n == 0 {
		b.pacedNext += 1 << 20 // new flows: room for every frame of a round
	} else {
		b.pacedNext += n
	}
	return newPacedFlows(smac, dmac, topo.Opts.VIP, topo.Opts.Port, flags, first, n), nil
}

// newPacedFlows makes the flows from clientBase to vip:port.
func newPacedFlows(smac, dmac net.HardwareAddr, vip netip.Addr, port uint16, flags uint8, first, n uint64) pacedFlows {
	f := packet.Frame{Src: smac, Dst: dmac, SrcIP: clientBase, DstIP: vip, Proto: 6, SrcPort: 1024, DstPort: port, TCPFlags: flags}.Build()
	for len(f) < frameLen {
		f = append(f, 0)
	}
	return pacedFlows{template: f, first: first, n: n}
}

// timeAdmission checks that no new flow reaches the (evicted) backend, admits it, and
// returns how long until the first frame of a new flow reaches it.
func (b *bencher) timeAdmission(ctx context.Context, sink *Sink, adm admitter) (time.Duration, error) {
	flows, err := b.clientFlows(0, packet.SYN)
	if err != nil {
		return 0, err
	}
	var (
		base time.Time
		c0   uint64
		dec  *decision
		seen bool
	)
	if err := sink.Stamp(true); err != nil {
		return 0, err
	}
	err = b.paced(ctx, flows, func(now time.Time, _ uint64) (bool, error) {
		n, _, err := sink.Count()
		if err != nil {
			return false, err
		}
		switch {
		case base.IsZero():
			base, c0 = now, n
		case dec == nil && n != c0:
			return false, fmt.Errorf("%d frames reached the backend before its admission", n-c0)
		case dec == nil && now.Sub(base) >= pacedWarmup:
			dec = startDecision(adm.admit)
		case dec != nil && n != c0:
			seen = true
			return true, nil
		case dec != nil:
			if err := dec.overdue(now); err != nil {
				return false, fmt.Errorf("no new flow reached the backend: %w", err)
			}
		}
		return false, nil
	})
	if dec != nil {
		err = errors.Join(err, dec.wait())
	}
	if err != nil || !seen {
		return 0, err
	}
	return dec.sinceStart(sink, firstStamp)
}

// timeEviction establishes flows over every backend, checks that the measured one
// receives its share, evicts it, and returns how long until the last frame reached it.
func (b *bencher) timeEviction(ctx context.Context, sink *Sink, adm admitter) (time.Duration, error) {
	flows, err := b.clientFlows(evictionFlows, packet.ACK)
	if err != nil {
		return 0, err
	}
	var (
		base, last     time.Time
		c0, sentAtLast uint64
		cAtDecision    uint64
		dec            *decision
	)
	if err := sink.Stamp(true); err != nil {
		return 0, err
	}
	err = b.paced(ctx, flows, func(now time.Time, sent uint64) (bool, error) {
		n, _, err := sink.Count()
		if err != nil {
			return false, err
		}
		switch {
		case base.IsZero():
			base, c0 = now, n
		case dec == nil && now.Sub(base) >= pacedWarmup:
			if n == c0 {
				return false, fmt.Errorf("no established flow reached the backend in %v before its eviction", pacedWarmup)
			}
			c0, cAtDecision, sentAtLast = n, n, sent
			dec = startDecision(adm.evict)
		case dec == nil:
		case n != c0:
			c0, last, sentAtLast = n, now, sent
		// Quiet: long enough, and every flow sent evictionQuietCycles more frames
		// (the sender may have been preempted meanwhile: time alone proves nothing).
		case now.Sub(latest(last, dec.start)) >= evictionQuiet && sent-sentAtLast >= evictionQuietCycles*evictionFlows:
			return true, nil
		}
		if dec == nil {
			return false, nil
		}
		if err := dec.overdue(now); err != nil {
			return false, fmt.Errorf("the backend still received frames (%d since the decision, the last %v ago): %w",
				n-cAtDecision, now.Sub(latest(last, dec.start)).Round(time.Microsecond), err)
		}
		return false, nil
	})
	if dec == nil {
		return 0, err
	}
	if err = errors.Join(err, dec.wait()); err != nil {
		return 0, err
	}
	return dec.sinceStart(sink, lastStamp)
}

// decision is an admission or eviction handed to the system under test, from the
// moment it is made (start) to the return of the call that makes it, which some
// systems act on later (moat's reconciler does).
type decision struct {
	start time.Time
	mono  time.Duration // start in CLOCK_MONOTONIC, the clock of the sink's stamps
	took  atomic.Int64  // nanoseconds, once the call has returned
	err   chan error
}

// startDecision makes the call f from another goroutine, so that the traffic and the
// clock of the measurement go on meanwhile.
func startDecision(f func() error) *decision {
	d := &decision{start: time.Now(), mono: monotonicNow(), err: make(chan error, 1)}
	go func() {
		err := f()
		d.took.Store(int64(max(time.Since(d.start), 1)))
		d.err <- err
	}()
	return d
}

// overdue says why the decision's effect is overdue at now, or nil if it is not:
// decisionTimeout after its call returned (a system's own asynchronous work counts in
// it), or decisionCap after it was made when the call has not returned. The call's own
// time does not count against decisionTimeout: an operator's nft and conntrack calls
// take seconds on a loaded machine (under CI's parallel tests they took over 3 s), and
// that is their latency to measure, not a failure of the system.
func (d *decision) overdue(now time.Time) error {
	took := time.Duration(d.took.Load())
	switch {
	case took == 0 && now.Sub(d.start) > decisionCap:
		return fmt.Errorf("the call that makes the decision had not returned after %v", decisionCap)
	case took > 0 && now.Sub(d.start) > took+decisionTimeout:
		return fmt.Errorf("%v after the call that makes the decision returned (it took %v)", decisionTimeout, took.Round(time.Microsecond))
	}
	return nil
}

// wait returns the call's error once it has returned.
func (d *decision) wait() error { return <-d.err }

// Which of a sink's stamps ends a latency.
const (
	firstStamp = iota // admission: the first frame since the decision
	lastStamp         // eviction: the last one
)

// sinceStart is the time from the decision to the arrival of the frame the sink
// stamped (which: firstStamp or lastStamp). The sink stamps a frame as it arrives, so
// the latency does not include the time the watcher took to notice (a pause of the
// sender's thread, which is also the watcher, used to count in it).
func (d *decision) sinceStart(sink *Sink, which int) (time.Duration, error) {
	first, last, err := sink.Stamps()
	if err != nil {
		return 0, err
	}
	at := first
	if which == lastStamp {
		at = last
	}
	switch {
	case which == lastStamp && at < d.mono:
		return 0, errNoFrameAfterDecision
	case at < d.mono:
		return 0, fmt.Errorf("a frame reached the backend %v before the decision", d.mono-at)
	}
	return at - d.mono, nil
}

// errNoFrameAfterDecision: not one frame reached the backend after the eviction
// decision (by the sink's stamps), so the round cannot time the eviction, and it is
// measured again. Either the sender was stalled while the eviction took effect (it
// used to be, whenever the system under test made the Go runtime collect garbage: the
// sender drew the collector's work until it stopped allocating; its thread still
// pauses for milliseconds now and then, and the report gives the longest pauses), or
// no frame for this backend left before the eviction took effect (flows cycle, and
// about a third go to it).
var errNoFrameAfterDecision = errors.New("not one frame reached the backend after the decision")

// minRedoBudget is the least number of rounds a run may measure again: a profile of
// few rounds (the smoke profile's two) gave up after two redos, and an eviction that
// takes effect between two of the backend's frames (about 75 µs apart) is common, for
// moat's and for nftables' over netlink alike.
const minRedoBudget = 10

// paced sends flows' frames from tenant a's client through a raw socket, pacedFrames
// every pacedTick, from a thread pinned to the load core, and calls watch after every
// send and between sends (busy: watch is the clock of the measurement), until watch is
// done or fails, or ctx ends. (The live-frames generator cannot pace: one run of the
// program costs milliseconds of set-up, whatever its number of frames.)
func (b *bencher) paced(ctx context.Context, flows pacedFlows, watch func(now time.Time, sent uint64) (bool, error)) error {
	client := b.scene.Topo.Tenants[0].Client
	errc := make(chan error, 1)
	// A goroutine of its own: lockToLoadCore ties its thread to the load core for
	// good. The sender's longest pause is recorded before its error is sent: the
	// caller reads the pauses once this returns.
	go func() { errc <- b.sendPaced(ctx, client, flows, watch) }()
	return <-errc
}

// sendPaced is paced's sender, on its own goroutine; it records its longest pause in
// b.pacedPauses before it returns.
func (b *bencher) sendPaced(ctx context.Context, client *netns.Host, flows pacedFlows, watch func(now time.Time, sent uint64) (bool, error)) error {
	if err := lockToLoadCore(); err != nil {
		return err
	}
	sock, err := client.OpenRaw("eth0")
	if err != nil {
		return err
	}
	defer sock.Close()
	var (
		sent     uint64
		longest  time.Duration
		buf      = make([]byte, 0, 2*frameLen)
		next     = time.Now()
		lastTurn = next
	)
	defer func() { b.pacedPauses = append(b.pacedPauses, longest) }()
	for ctx.Err() == nil {
		now := time.Now()
		longest = max(longest, now.Sub(lastTurn))
		lastTurn = now
		if !now.Before(next) {
			for range pacedFrames {
				buf = flows.frameInto(buf, sent)
				err := sock.Send(buf)
				if errors.Is(err, unix.ENOBUFS) {
					// The veth's queue to the gateway is full, as a NIC's
					// ring can be: the frame is lost on the wire, not the
					// round. The next send carries the same flow number.
					atomic.AddUint64(&b.pacedRefused, 1)
					break
				}
				if err != nil {
					return fmt.Errorf("send frame %d: %w", sent, err)
				}
				sent++
			}
			if next = next.Add(pacedTick); next.Before(now) {
				next = now.Add(pacedTick) // late (preempted): do not burst to catch up
			}
		}
		if done, err := watch(time.Now(), sent); done || err != nil {
			return err
		}
	}
	return ctx.Err()
}

func latest(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}
