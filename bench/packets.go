package bench

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"runtime"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/seed4c/moat/internal/netns"
	"github.com/seed4c/moat/internal/packet"
)

// Scenarios.
const (
	ScIsolationCross   = "isolation_cross_tenant"    // tenant a's network toward addresses tenant b also uses, bypassing the service
	ScIsolationUnknown = "isolation_unknown_tenant"  // frames on an interface no tenant owns
	ScNewFlows         = "new_flows"                 // every frame a new flow: Maglev pick, conntrack insert
	ScEstablished      = "established"               // conntrack hits over a set of flows
	ScReply            = "reply"                     // backend -> client on tracked flows: reverse NAT
	ScMixed            = "mixed_tenants"             // both tenants at once, with identical flows
	ScEstablishedSweep = "established_sweep"         // established, against the number of flows
	ScTCPConnections   = "tcp_connections"           // real TCP: connect, one exchange, close
	ScTCPThroughput    = "tcp_throughput"            // real TCP: one bulk stream
	ScTCPRR            = "tcp_request_response"      // real TCP: one connection, request/response in turn
	ScAdmission        = "admission_latency"         // a backend's admission decided -> its first new flow forwarded
	ScEviction         = "eviction_latency"          // a backend's eviction decided -> its established flows' last frame
	ScVerifications    = "attestation_verifications" // appraisals of TPM evidence per second and per core
	ScOverlay          = "overlay_throughput"        // one TCP stream over the WireGuard overlay against the plain link
)

// packetScenario is one packet-rate scenario.
type packetScenario struct {
	name  string
	drop  bool // moat and nftables must drop every frame (plain forwards them)
	flows int  // 0: a new flow on every frame
}

// traffic is what one generator sends.
type traffic struct {
	gen      *Generator
	template []byte
	ifname   string
	flows    GenFlows
}

func (t traffic) configure() error { return t.gen.Configure(t.template, t.ifname, t.flows) }

// frameTemplate builds a minimum-size TCP frame from src (host, eth0) to the gateway
// interface gwIface.
func (b *bencher) frameTemplate(src *netns.Host, gwIface string, saddr, daddr netip.Addr, sport, dport uint16, flags uint8) ([]byte, error) {
	smac, err := mac(src, "eth0")
	if err != nil {
		return nil, err
	}
	dmac, err := mac(b.scene.Topo.GW, gwIface)
	if err != nil {
		return nil, err
	}
	f := packet.Frame{Src: smac, Dst: dmac, SrcIP: saddr, DstIP: daddr, Proto: 6, SrcPort: sport, DstPort: dport, TCPFlags: flags}.Build()
	for len(f) < frameLen {
		f = append(f, 0)
	}
	return f, nil
}

func (b *bencher) generator(h *netns.Host) (*Generator, error) {
	if g, ok := b.gens[h]; ok {
		return g, nil
	}
	g, err := NewGenerator(h)
	if err != nil {
		return nil, err
	}
	b.gens[h] = g
	return g, nil
}

var clientBase = netip.MustParseAddr("10.0.0.2")

// clientTraffic is tenant ti's clients toward the VIP: flows over 253 addresses and
// up to 64000 ports each (16 million before a new-flow generator repeats itself).
func (b *bencher) clientTraffic(ti int, flows int, flags uint8) (traffic, error) {
	tn := b.scene.Topo.Tenants[ti]
	g, err := b.generator(tn.Client)
	if err != nil {
		return traffic{}, err
	}
	tpl, err := b.frameTemplate(tn.Client, tn.ClientIface, clientBase, b.scene.Topo.Opts.VIP, 1024, b.scene.Topo.Opts.Port, flags)
	if err != nil {
		return traffic{}, err
	}
	ports := uint16(64000)
	if flows > 0 && flows <= 64000*4 {
		// Established sets: spread over addresses too, 256 ports each.
		ports = 256
	}
	// Each run starts 2^20 flows further on: a new-flow run never meets an earlier
	// run's flows. Established sets (256 ports on each of 253 addresses) wrap around
	// their 64768 tuples, so they do meet flows earlier runs left in the tables;
	// priming makes them established again either way (a flow that lost one of its
	// two moat entries gets it back: bpf/lib/conntrack.h).
	b.offset += 1 << 20
	return traffic{gen: g, template: tpl, ifname: "eth0", flows: GenFlows{
		Mode: genSource, Flows: uint32(flows), Offset: b.offset, AddrBase: clientBase, Addrs: 253, PortBase: 1024, Ports: ports,
	}}, nil
}

// packetScenarios lists the packet-rate scenarios of a profile.
func (p Profile) packetScenarios() []packetScenario {
	return []packetScenario{
		{name: ScIsolationCross, drop: true},
		{name: ScIsolationUnknown, drop: true},
		{name: ScNewFlows},
		{name: ScEstablished, flows: p.Flows},
		{name: ScReply, flows: p.Flows},
		{name: ScMixed, flows: p.Flows},
	}
}

// trafficFor prepares the generators of a scenario, priming flows where it needs them.
func (b *bencher) trafficFor(ctx context.Context, sc packetScenario) ([]traffic, error) {
	topo := b.scene.Topo
	ta := topo.Tenants[0]
	switch sc.name {
	case ScIsolationCross:
		// Toward a backend address directly (10.1.1.2:8080: tenant b has the same),
		// from spread sources, as an established segment would look.
		g, err := b.generator(ta.Client)
		if err != nil {
			return nil, err
		}
		be := ta.Backends[0]
		tpl, err := b.frameTemplate(ta.Client, ta.ClientIface, clientBase, be.Addr, 1024, topo.Opts.BackendPort, packet.ACK)
		if err != nil {
			return nil, err
		}
		b.offset += 1 << 20
		return []traffic{{gen: g, template: tpl, ifname: "eth0", flows: GenFlows{
			Mode: genSource, Offset: b.offset, AddrBase: clientBase, Addrs: 253, PortBase: 1024, Ports: 64000}}}, nil
	case ScIsolationUnknown:
		g, err := b.generator(b.scene.Stranger)
		if err != nil {
			return nil, err
		}
		tpl, err := b.frameTemplate(b.scene.Stranger, strangerIface, clientBase, topo.Opts.VIP, 1024, topo.Opts.Port, packet.SYN)
		if err != nil {
			return nil, err
		}
		b.offset += 1 << 20
		return []traffic{{gen: g, template: tpl, ifname: "eth0", flows: GenFlows{
			Mode: genSource, Offset: b.offset, AddrBase: clientBase, Addrs: 253, PortBase: 1024, Ports: 64000}}}, nil
	case ScNewFlows:
		t, err := b.clientTraffic(0, 0, packet.SYN)
		return []traffic{t}, err
	case ScEstablished, ScEstablishedSweep:
		t, err := b.clientTraffic(0, sc.flows, packet.ACK)
		if err != nil {
			return nil, err
		}
		return []traffic{t}, b.prime(ctx, []traffic{t}, nil)
	case ScMixed:
		var ts []traffic
		for i := range topo.Tenants {
			t, err := b.clientTraffic(i, sc.flows, packet.ACK)
			if err != nil {
				return nil, err
			}
			ts = append(ts, t)
		}
		for i := range ts {
			ts[i].flows.Offset = ts[0].flows.Offset // the same flows in every tenant
		}
		return ts, b.prime(ctx, ts, nil)
	case ScReply:
		// Establish four times the flows, learn which of them the system sent to the
		// first backend, and answer sc.flows of those from it. Every system answers
		// the same number: the balancing ones (moat, nftables) send that backend
		// about a third of the flows, plain forwarding all of them, and a reply
		// working set of another size would not compare.
		fwd, err := b.clientTraffic(0, replyPrimeFactor*sc.flows, packet.ACK)
		if err != nil {
			return nil, err
		}
		be := ta.Backends[0]
		sink := b.sinks[be.Host]
		// A system that handles a small share of the frames offered (nftables,
		// about an eighth) needs longer to carry every flow once: prime again, twice
		// as long each time (up to maxReplyPrime), until the backend has seen enough
		// of them.
		var learnt []Flow
		for d := b.profile.Prime; ; d = min(2*d, maxReplyPrime) {
			if err := b.primeFor(ctx, []traffic{fwd}, sink, d); err != nil {
				return nil, err
			}
			if learnt, err = sink.Learned(); err != nil {
				return nil, err
			}
			if len(learnt) >= sc.flows || d >= maxReplyPrime {
				break
			}
		}
		if len(learnt) < sc.flows {
			return nil, fmt.Errorf("reply: %d of the %d flows needed reached backend %s while priming", len(learnt), sc.flows, be.Name)
		}
		learnt = learnt[:sc.flows]
		g, err := b.generator(be.Host)
		if err != nil {
			return nil, err
		}
		if err := g.SetReplyFlows(learnt); err != nil {
			return nil, err
		}
		tpl, err := b.frameTemplate(be.Host, be.GWIface, be.Addr, clientBase, topo.Opts.BackendPort, 1024, packet.ACK)
		if err != nil {
			return nil, err
		}
		return []traffic{{gen: g, template: tpl, ifname: "eth0", flows: GenFlows{Mode: genReply, Flows: uint32(len(learnt))}}}, nil
	}
	return nil, fmt.Errorf("unknown packet scenario %q", sc.name)
}

// churn floods the system under test with new flows for one measurement's duration,
// unmeasured.
func (b *bencher) churn(ctx context.Context) error {
	ts, err := b.trafficFor(ctx, packetScenario{name: ScNewFlows})
	if err != nil {
		return err
	}
	_, err = b.runTraffic(ctx, ts, b.profile.Duration)
	return err
}

// replyPrimeFactor: the reply scenario establishes this many times its flows, so that
// the first of three backends receives at least its flows (a third of them, give or
// take the hash's spread) on every system.
const replyPrimeFactor = 4

// maxReplyPrime caps the reply scenario's priming.
const maxReplyPrime = 5 * time.Second

// prime sends the traffic once through every flow, plus a little, unmeasured; with a
// sink, that sink learns the client ends it receives meanwhile.
func (b *bencher) prime(ctx context.Context, ts []traffic, learn *Sink) error {
	return b.primeFor(ctx, ts, learn, b.profile.Prime)
}

// primeFor is prime for d.
func (b *bencher) primeFor(ctx context.Context, ts []traffic, learn *Sink, d time.Duration) error {
	if learn != nil {
		if err := learn.Learn(true); err != nil {
			return err
		}
		defer learn.Learn(false)
	}
	_, err := b.runTraffic(ctx, ts, d)
	time.Sleep(20 * time.Millisecond)
	return err
}

// runTraffic runs every traffic at once for d, each generator on its own thread
// pinned to the load CPU, and returns the frames sent.
func (b *bencher) runTraffic(ctx context.Context, ts []traffic, d time.Duration) (uint64, error) {
	for _, t := range ts {
		if err := t.configure(); err != nil {
			return 0, err
		}
	}
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		sent uint64
		errs []error
	)
	for _, t := range ts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := lockToLoadCore()
			var n uint64
			if err == nil {
				n, err = t.gen.Run(ctx, d, 1<<16, nil)
			}
			mu.Lock()
			sent += n
			errs = append(errs, err)
			mu.Unlock()
		}()
	}
	wg.Wait()
	return sent, errors.Join(errs...)
}

// freshTraffic empties the system's flow table and returns sc's traffic, primed. Every
// burst of traffic, measured or profiled, starts from an empty conntrack table on
// every system alike: nftables' must be emptied (full of the new-flow scenario's
// unanswered SYNs, it drops new flows), and moat's and plain_ct's would otherwise
// hold every flow of the scenarios before where nftables' holds none.
func (b *bencher) freshTraffic(ctx context.Context, sys *sut, sc packetScenario) ([]traffic, error) {
	if sys.flush != nil {
		if err := sys.flush(); err != nil {
			return nil, fmt.Errorf("%s: flush flows: %w", sys.name, err)
		}
	}
	return b.trafficFor(ctx, sc)
}

// sinkTotal sums what every sink has received.
func (b *bencher) sinkTotal() (uint64, error) {
	var sum uint64
	for _, s := range b.sinks {
		p, _, err := s.Count()
		if err != nil {
			return 0, err
		}
		sum += p
	}
	return sum, nil
}

// measurePackets runs one packet scenario on one system and returns the sample.
func (b *bencher) measurePackets(ctx context.Context, sys *sut, sc packetScenario) (Sample, error) {
	ts, err := b.freshTraffic(ctx, sys, sc)
	if err != nil {
		return Sample{}, err
	}
	type counts struct {
		sinks, drops, refusedIn, refusedOut uint64
		cpu                                 int64
	}
	snap := func() (c counts, err error) {
		if c.sinks, err = b.sinkTotal(); err != nil {
			return
		}
		if c.drops, err = sys.drops(); err != nil {
			return
		}
		if c.refusedIn, c.refusedOut, err = b.scene.InterfaceDrops(); err != nil {
			return
		}
		if sys.refused != nil {
			var q uint64
			if q, err = sys.refused(); err != nil {
				return
			}
			c.refusedIn += q
		}
		c.cpu, err = sys.cpuTime()
		return
	}
	c0, err := snap()
	if err != nil {
		return Sample{}, err
	}
	var r0 map[string]uint64
	if sys.dropReasons != nil {
		if r0, err = sys.dropReasons(); err != nil {
			return Sample{}, err
		}
	}
	t0 := time.Now()
	sent, err := b.runTraffic(ctx, ts, b.profile.Duration)
	if err != nil {
		return Sample{}, err
	}
	time.Sleep(30 * time.Millisecond) // let the queues drain
	el := time.Since(t0).Seconds()
	c1, err := snap()
	if err != nil {
		return Sample{}, err
	}
	var reasons map[string]uint64
	if sys.dropReasons != nil {
		r1, err := sys.dropReasons()
		if err != nil {
			return Sample{}, err
		}
		reasons = countersSince(r0, r1)
	}
	ledger := &FrameLedger{Sent: sent, Delivered: c1.sinks - c0.sinks, Dropped: c1.drops - c0.drops,
		RefusedIn: c1.refusedIn - c0.refusedIn, RefusedOut: c1.refusedOut - c0.refusedOut}
	delivered, dropped := float64(ledger.Delivered), float64(ledger.Dropped)
	cpu := float64(c1.cpu-c0.cpu) / 1e9
	smp := Sample{
		Seconds:      el,
		OfferedPPS:   float64(sent) / el,
		DeliveredPPS: delivered / el,
		CPU:          cpu / el,
		DropReasons:  reasons,
		Frames:       ledger,
	}
	handled := delivered
	if sc.drop && sys.name != SysPlain {
		handled = dropped
		smp.Leaked = ledger.Delivered
	} else {
		smp.SUTDrops = ledger.Dropped
	}
	smp.PPS = handled / el
	if cpu > 0 {
		smp.PPSPerCore = handled / cpu
	}
	return smp, nil
}

// countersSince returns the counters of after that grew since before (nil: none).
func countersSince(before, after map[string]uint64) map[string]uint64 {
	var out map[string]uint64
	for k, v := range after {
		if v > before[k] {
			if out == nil {
				out = map[string]uint64{}
			}
			out[k] = v - before[k]
		}
	}
	return out
}

// lockToLoadCore locks the calling goroutine to its thread for good (the thread is
// retired when the goroutine ends, so its affinity and priority are this goroutine's
// alone) and puts the thread on the load core at nice -20: how traffic senders run.
func lockToLoadCore() error {
	runtime.LockOSThread()
	var set unix.CPUSet
	set.Set(loadCPU)
	if err := unix.SchedSetaffinity(0, &set); err != nil {
		return err
	}
	return unix.SchedSetAttr(0, &unix.SchedAttr{Size: unix.SizeofSchedAttr, Policy: unix.SCHED_NORMAL, Nice: -20}, 0)
}
