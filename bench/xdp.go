package bench

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/seed4c/moat/dataplane"
	"github.com/seed4c/moat/internal/netns"
)

// frameLen is the generator's frame: Ethernet, IPv4 and TCP headers, padded to the
// Ethernet minimum (64 bytes on a wire with the FCS), the classic packet-rate frame.
const frameLen = 60

// Generator modes (enum gen_mode in bpf/bench/gen.c).
const (
	genSource uint32 = 0 // vary the source (address, port)
	genReply  uint32 = 1 // vary the destination over learnt client ends
)

// GenFlows says which flows a generator's frames belong to.
type GenFlows struct {
	Mode     uint32
	Flows    uint32 // cycle over this many flows; 0: a new flow on every frame
	Offset   uint64 // flow index of the first frame
	AddrBase netip.Addr
	Addrs    uint32
	PortBase uint16
	Ports    uint16
}

// Generator is the live-frames traffic generator (bpf/bench/gen.c), one instance per
// namespace it sends from.
type Generator struct {
	objs genObjects
	host *netns.Host
}

// NewGenerator loads a generator.
func NewGenerator(host *netns.Host) (*Generator, error) {
	g := &Generator{host: host}
	if err := loadGenObjects(&g.objs, nil); err != nil {
		return nil, fmt.Errorf("load generator: %w", err)
	}
	return g, nil
}

// Configure sets the template frame, the interface of the generator's host the frames
// leave through, and the flows.
func (g *Generator) Configure(template []byte, ifname string, f GenFlows) error {
	if len(template) > frameLen {
		return fmt.Errorf("generator template of %d bytes, at most %d", len(template), frameLen)
	}
	l, err := g.host.Link(ifname)
	if err != nil {
		return err
	}
	var c genGenConfig
	copy(c.Frame[:], template)
	c.Ifindex = uint32(l.Attrs().Index)
	c.Mode, c.Flows, c.Offset = f.Mode, f.Flows, f.Offset
	if f.AddrBase.IsValid() {
		a := f.AddrBase.As4()
		c.AddrBase = binary.BigEndian.Uint32(a[:])
	}
	c.Addrs, c.PortBase, c.Ports = f.Addrs, f.PortBase, f.Ports
	if err := g.objs.GenCfg.Put(uint32(0), &c); err != nil {
		return fmt.Errorf("configure generator: %w", err)
	}
	return g.resetSeq()
}

func (g *Generator) resetSeq() error {
	zero := make([]uint64, ebpf.MustPossibleCPU())
	return g.objs.GenSeq.Put(uint32(0), zero)
}

// SetReplyFlows gives a GEN_REPLY generator the client ends to answer.
func (g *Generator) SetReplyFlows(flows []Flow) error {
	if len(flows) > int(g.objs.ReplyFlows.MaxEntries()) {
		flows = flows[:g.objs.ReplyFlows.MaxEntries()]
	}
	for i, f := range flows {
		a := f.Addr.As4()
		v := genFlow{Addr: binary.NativeEndian.Uint32(a[:]), Port: netOrder16(f.Port)}
		if err := g.objs.ReplyFlows.Put(uint32(i), &v); err != nil {
			return fmt.Errorf("reply flow %d: %w", i, err)
		}
	}
	return nil
}

// Run sends frames from the generator's host until ctx ends or d has passed, in
// syscalls of chunk frames; it returns the frames the program ran on, as the program
// counted them (a syscall interrupted by a signal runs its chunk again from the
// start, so chunks are not a count). It locks the calling goroutine's thread in the
// host's namespace for the whole run: pin that thread before calling (the generator
// runs on the calling CPU).
func (g *Generator) Run(ctx context.Context, d time.Duration, chunk uint32, tick func(sent uint64)) (uint64, error) {
	frame := make([]byte, frameLen)
	var sent uint64
	seq0, err := g.seq()
	if err != nil {
		return 0, err
	}
	err = g.host.Do(func() error {
		end := time.Now().Add(d)
		for ctx.Err() == nil && time.Now().Before(end) {
			// Live frames mode reports no verdict: what arrived is counted downstream.
			_, err := g.objs.XdpGen.Run(&ebpf.RunOptions{
				Data:      frame,
				Repeat:    chunk,
				Flags:     unix.BPF_F_TEST_XDP_LIVE_FRAMES,
				BatchSize: 256,
			})
			if err != nil {
				return fmt.Errorf("live frames: %w", err)
			}
			sent += uint64(chunk)
			if tick != nil {
				tick(sent)
			}
		}
		return nil
	})
	seq1, serr := g.seq()
	if serr != nil {
		return 0, errors.Join(err, serr)
	}
	return seq1 - seq0, err
}

// seq sums the generator's per-CPU frame sequence: every frame it has built since it
// was configured.
func (g *Generator) seq() (uint64, error) {
	var per []uint64
	if err := g.objs.GenSeq.Lookup(uint32(0), &per); err != nil {
		return 0, fmt.Errorf("read generator sequence: %w", err)
	}
	var n uint64
	for _, v := range per {
		n += v
	}
	return n, nil
}

// Close unloads the generator.
func (g *Generator) Close() error { return g.objs.Close() }

// Flow is a flow's client end.
type Flow struct {
	Addr netip.Addr
	Port uint16
}

// Sink is the count-and-drop program on a peer host's interface (bpf/bench/sink.c).
type Sink struct {
	objs  sinkObjects
	link  link.Link
	stats *perCPUSlot[sinkCounter]
}

// AttachSink loads a sink and attaches it in native mode to ifname of host.
func AttachSink(host *netns.Host, ifname string) (*Sink, error) {
	s := &Sink{}
	if err := loadSinkObjects(&s.objs, nil); err != nil {
		return nil, fmt.Errorf("load sink: %w", err)
	}
	stats, err := newPerCPUSlot[sinkCounter](s.objs.SinkStats)
	if err != nil {
		s.objs.Close()
		return nil, fmt.Errorf("sink counters: %w", err)
	}
	s.stats = stats
	err = host.Do(func() error {
		l, err := host.Link(ifname)
		if err == nil {
			s.link, err = link.AttachXDP(link.XDPOptions{Program: s.objs.XdpSink, Interface: l.Attrs().Index, Flags: link.XDPDriverMode})
		}
		return err
	})
	if err != nil {
		s.objs.Close()
		return nil, fmt.Errorf("attach sink to %s in %s: %w", ifname, host.Name, err)
	}
	return s, nil
}

// Count returns the packets and bytes the sink has dropped. It allocates nothing: the
// paced sender polls it between frames (pacedFlows says why that matters).
func (s *Sink) Count() (packets, bytes uint64, err error) {
	per, err := s.stats.read()
	if err != nil {
		return 0, 0, fmt.Errorf("read %s: %w", s.objs.SinkStats, err)
	}
	for _, c := range per {
		packets, bytes = packets+c.Packets, bytes+c.Bytes
	}
	return packets, bytes, nil
}

// Stamp switches the recording of arrival stamps on or off; either way it forgets
// the stamps recorded before.
func (s *Sink) Stamp(on bool) error {
	v := sinkStamps{}
	if on {
		v.Armed = 1
	}
	if err := s.objs.SinkStamps.Put(uint32(0), &v); err != nil {
		return fmt.Errorf("arm %s: %w", s.objs.SinkStamps, err)
	}
	return nil
}

// Stamps returns when the first and the last frame arrived since Stamp(true), in the
// kernel's monotonic clock (monotonicNow's), or zeros when none has.
func (s *Sink) Stamps() (first, last time.Duration, err error) {
	var v sinkStamps
	if err := s.objs.SinkStamps.Lookup(uint32(0), &v); err != nil {
		return 0, 0, fmt.Errorf("read %s: %w", s.objs.SinkStamps, err)
	}
	return time.Duration(v.FirstNs), time.Duration(v.LastNs), nil
}

// monotonicNow is CLOCK_MONOTONIC, the clock of bpf_ktime_get_ns: the sink's stamps
// and a decision's start compare in it.
func monotonicNow() time.Duration {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts) // cannot fail for this clock
	return time.Duration(ts.Nano())
}

// Learn switches the recording of client ends on or off; switching it on forgets
// what was learnt before.
func (s *Sink) Learn(on bool) error {
	v := uint32(0)
	if on {
		v = 1
		var k sinkFlow
		var keys []sinkFlow
		it := s.objs.Learned.Iterate()
		var b uint8
		for it.Next(&k, &b) {
			keys = append(keys, k)
		}
		for _, k := range keys {
			_ = s.objs.Learned.Delete(&k)
		}
	}
	return s.objs.SinkLearn.Put(uint32(0), v)
}

// Learned returns the client ends recorded while learning.
func (s *Sink) Learned() ([]Flow, error) {
	var out []Flow
	var k sinkFlow
	var b uint8
	it := s.objs.Learned.Iterate()
	for it.Next(&k, &b) {
		var a [4]byte
		binary.NativeEndian.PutUint32(a[:], k.Addr)
		out = append(out, Flow{Addr: netip.AddrFrom4(a), Port: netOrder16(k.Port)})
	}
	return out, it.Err()
}

// Close detaches and unloads the sink.
func (s *Sink) Close() error {
	return errors.Join(s.link.Close(), s.objs.Close())
}

func sumCounters[V any](m *ebpf.Map, f func(V) (uint64, uint64)) (uint64, uint64, error) {
	var per []V
	if err := m.Lookup(uint32(0), &per); err != nil {
		return 0, 0, fmt.Errorf("read %s: %w", m, err)
	}
	var p, b uint64
	for _, v := range per {
		pp, bb := f(v)
		p, b = p+pp, b+bb
	}
	return p, b, nil
}

// progOnIfaces is one loaded program attached to several interfaces of one host.
type progOnIfaces struct {
	links []link.Link
}

func (p *progOnIfaces) attach(host *netns.Host, prog *ebpf.Program, ifnames []string) error {
	for _, n := range ifnames {
		l, err := host.Link(n)
		if err != nil {
			return err
		}
		var xl link.Link
		err = host.Do(func() (err error) {
			xl, err = link.AttachXDP(link.XDPOptions{Program: prog, Interface: l.Attrs().Index, Flags: link.XDPDriverMode})
			return err
		})
		if err != nil {
			return fmt.Errorf("attach %s to %s in %s: %w", prog, n, host.Name, err)
		}
		p.links = append(p.links, xl)
	}
	return nil
}

func (p *progOnIfaces) close() error {
	var errs []error
	for _, l := range p.links {
		errs = append(errs, l.Close())
	}
	p.links = nil
	return errors.Join(errs...)
}

// Forwarder is the object of bpf/bench/fwd.c on every gateway interface: plain XDP
// forwarding by FIB with no policy (the ceiling), or one of the bounds made from it.
type Forwarder struct {
	objs fwdObjects
	progOnIfaces
}

// ForwarderMode is what a Forwarder does with each frame.
type ForwarderMode int

const (
	// ForwardPlain forwards by FIB, with no policy and no state: SysPlain.
	ForwardPlain ForwarderMode = iota
	// ForwardTracked keeps one LRU entry per TCP/UDP flow, of moat's conntrack size
	// and entry layout, with the flow's route in it: a known flow's frame costs a
	// lookup, a new flow's a lookup, a FIB lookup and an insert. The cheapest
	// stateful forwarder (SysPlainCT).
	ForwardTracked
	// DropAll counts every frame and drops it: the cheapest isolation (SysXDPDrop).
	DropAll
)

// AttachForwarder loads the forwarder in mode, lets it redirect to every interface of
// ifnames and attaches it to each of them. maxFlows sizes the flow table of
// ForwardTracked (moat's MaxFlows); the other modes ignore it.
func AttachForwarder(gw *netns.Host, ifnames []string, mode ForwarderMode, maxFlows uint32) (*Forwarder, error) {
	spec, err := loadFwd()
	if err != nil {
		return nil, fmt.Errorf("load forwarder: %w", err)
	}
	if mode == ForwardTracked {
		if err := trackLikeMoat(spec, maxFlows); err != nil {
			return nil, err
		}
	}
	f := &Forwarder{}
	if err := spec.LoadAndAssign(&f.objs, nil); err != nil {
		return nil, fmt.Errorf("load forwarder: %w", err)
	}
	err = gw.Do(func() error {
		for _, n := range ifnames {
			l, err := gw.Link(n)
			if err != nil {
				return err
			}
			idx := uint32(l.Attrs().Index)
			if err := f.objs.FwdPorts.Put(idx, idx); err != nil {
				return fmt.Errorf("forwarder port %s: %w", n, err)
			}
		}
		return nil
	})
	if err == nil {
		prog := f.objs.XdpFwd
		if mode == DropAll {
			prog = f.objs.XdpDropAll
		}
		err = f.attach(gw, prog, ifnames)
	}
	if err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// trackLikeMoat turns on the forwarder's flow tracking with maxFlows entries, after
// checking that its keys and entries are the size of moat's: the bound must keep the
// same state per entry, or it measures something cheaper.
func trackLikeMoat(spec *ebpf.CollectionSpec, maxFlows uint32) error {
	if maxFlows == 0 {
		return errors.New("tracking forwarder: no flow table size")
	}
	keySize, entrySize := dataplane.ConntrackLayout()
	m := spec.Maps[fwdMapFwdFlows]
	if int(m.KeySize) != keySize || int(m.ValueSize) != entrySize {
		return fmt.Errorf("tracking forwarder: flow key/entry of %d/%d bytes, moat's conntrack has %d/%d: keep bpf/bench/fwd.c in step with bpf/lib/conntrack.h",
			m.KeySize, m.ValueSize, keySize, entrySize)
	}
	m.MaxEntries = maxFlows
	return spec.Variables["track_flows"].Set(uint8(1))
}

// Handled returns the frames the forwarder redirected, or in DropAll mode dropped.
func (f *Forwarder) Handled() (uint64, error) {
	p, _, err := sumCounters(f.objs.FwdStats, func(c fwdCounter) (uint64, uint64) { return c.Packets, c.Bytes })
	return p, err
}

// Close detaches and unloads the forwarder.
func (f *Forwarder) Close() error { return errors.Join(f.close(), f.objs.Close()) }

// CPURedirector hands every frame of some interfaces to a CPUMAP entry: the receive
// side of the kernel-stack baseline (bpf/bench/cpumap.c).
type CPURedirector struct {
	objs    cpumapObjects
	mapID   ebpf.MapID
	refused link.Link // counts the CPUMAP queue's refusals
	progOnIfaces
}

// AttachCPURedirector loads the redirector toward cpu (queue of qsize frames) and
// attaches it to ifnames of host.
func AttachCPURedirector(host *netns.Host, ifnames []string, cpu int, qsize uint32) (_ *CPURedirector, err error) {
	spec, err := loadCpumap()
	if err != nil {
		return nil, fmt.Errorf("load CPUMAP redirector: %w", err)
	}
	if err := spec.Variables["target_cpu"].Set(uint32(cpu)); err != nil {
		return nil, err
	}
	r := &CPURedirector{}
	if err := spec.LoadAndAssign(&r.objs, nil); err != nil {
		return nil, fmt.Errorf("load CPUMAP redirector: %w", err)
	}
	defer func() {
		if err != nil {
			r.Close()
		}
	}()
	val := cpumapBpfCpumapVal{Qsize: qsize}
	if err := r.objs.Cpus.Put(uint32(cpu), &val); err != nil {
		return nil, fmt.Errorf("CPUMAP entry for CPU %d: %w", cpu, err)
	}
	info, err := r.objs.Cpus.Info()
	if err != nil {
		return nil, fmt.Errorf("CPUMAP's id: %w", err)
	}
	id, ok := info.ID()
	if !ok {
		return nil, errors.New("CPUMAP's id: the kernel gave none")
	}
	r.mapID = id
	if err := r.objs.CpusMapId.Set(uint32(id)); err != nil {
		return nil, fmt.Errorf("CPUMAP's id for its refusal counter: %w", err)
	}
	if r.refused, err = link.AttachTracing(link.TracingOptions{Program: r.objs.CountCpumapRefused}); err != nil {
		return nil, fmt.Errorf("attach the CPUMAP refusal counter: %w", err)
	}
	if err := r.attach(host, r.objs.XdpToCpu, ifnames); err != nil {
		return nil, err
	}
	return r, nil
}

// MapID is the CPUMAP's id, which names its kthread.
func (r *CPURedirector) MapID() ebpf.MapID { return r.mapID }

// Refused returns the frames the CPUMAP's queue refused (full): the redirector handed
// them over, the CPU behind the queue never saw them.
func (r *CPURedirector) Refused() (uint64, error) {
	p, _, err := sumCounters(r.objs.CpumapRefused, func(c cpumapCounter) (uint64, uint64) { return c.Packets, c.Bytes })
	return p, err
}

// Close detaches and unloads the redirector; the CPUMAP's kthread goes with the map.
func (r *CPURedirector) Close() error {
	err := r.close()
	if r.refused != nil {
		err = errors.Join(err, r.refused.Close())
	}
	return errors.Join(err, r.objs.Close())
}

// netOrder16 swaps between a port's value and its network-order bytes read natively
// (the same swap both ways).
func netOrder16(v uint16) uint16 {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], v)
	return binary.NativeEndian.Uint16(b[:])
}
