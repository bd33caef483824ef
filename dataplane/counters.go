package dataplane

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"
	"github.com/seed4c/moat/tenant"
)

// Traffic counts packets and bytes (struct traffic).
type Traffic struct {
	Packets uint64 `json:"packets"`
	Bytes   uint64 `json:"bytes"`
}

func (t *Traffic) add(n uint32) {
	t.Packets++
	t.Bytes += uint64(n)
}

func (t Traffic) plus(o Traffic) Traffic {
	return Traffic{t.Packets + o.Packets, t.Bytes + o.Bytes}
}

// TenantCounters are one tenant's totals (struct tenant_counters).
type TenantCounters struct {
	RX      Traffic `json:"rx"`      // classified to the tenant
	Fwd     Traffic `json:"fwd"`     // forwarded, or passed to the stack
	Dropped Traffic `json:"dropped"` // dropped after classification
}

// ServiceCounters are one service's totals (struct service_counters).
type ServiceCounters struct {
	Fwd      Traffic `json:"fwd"`
	NewFlows uint64  `json:"new_flows"`
	Denied   uint64  `json:"denied"`
}

// BackendCounters are one backend's totals (struct backend_counters).
type BackendCounters struct {
	Fwd      Traffic `json:"fwd"`
	Reply    Traffic `json:"reply"`
	NewFlows uint64  `json:"new_flows"`
}

// EventCounters say what became of flow events (enum event_counter).
type EventCounters struct {
	Emitted     uint64 `json:"emitted"`
	RateLimited uint64 `json:"rate_limited"`
	RingbufFull uint64 `json:"ringbuf_full"`
}

// Lost is the number of events not delivered, whatever the cause.
func (e EventCounters) Lost() uint64 { return e.RateLimited + e.RingbufFull }

// Counters are the fast path's counters summed over CPUs. Maps hold only ids with a
// non-zero count.
type Counters struct {
	Reasons  [NumReasons]Traffic         `json:"reasons"`
	Tenants  map[uint32]*TenantCounters  `json:"tenants"`
	Services map[uint32]*ServiceCounters `json:"services"`
	Backends map[uint32]*BackendCounters `json:"backends"`
	Events   EventCounters               `json:"events"`
}

func newCounters() Counters {
	return Counters{
		Tenants:  map[uint32]*TenantCounters{},
		Services: map[uint32]*ServiceCounters{},
		Backends: map[uint32]*BackendCounters{},
	}
}

// Drops is the sum of all drop reasons.
func (c *Counters) Drops() Traffic {
	var t Traffic
	for r, v := range c.Reasons {
		if Reason(r).IsDrop() {
			t = t.plus(v)
		}
	}
	return t
}

// DropsByReason returns the packets dropped for each drop reason that has any, by
// the reason's name ("drop_no_service").
func (c *Counters) DropsByReason() map[string]uint64 {
	out := map[string]uint64{}
	for r, v := range c.Reasons {
		if Reason(r).IsDrop() && v.Packets > 0 {
			out[Reason(r).String()] = v.Packets
		}
	}
	return out
}

// tenant returns id's counters the way the array lookup does: ids past the array
// count into a scratch value that is thrown away.
func (c *Counters) tenant(id uint32, l tenant.Limits) *TenantCounters {
	if id >= l.MaxTenants {
		return &TenantCounters{}
	}
	t, ok := c.Tenants[id]
	if !ok {
		t = &TenantCounters{}
		c.Tenants[id] = t
	}
	return t
}

func (c *Counters) service(id uint32, l tenant.Limits) *ServiceCounters {
	if id >= l.MaxServices {
		return nil
	}
	s, ok := c.Services[id]
	if !ok {
		s = &ServiceCounters{}
		c.Services[id] = s
	}
	return s
}

func (c *Counters) backend(id uint32, l tenant.Limits) *BackendCounters {
	if id >= l.MaxBackends {
		return nil
	}
	b, ok := c.Backends[id]
	if !ok {
		b = &BackendCounters{}
		c.Backends[id] = b
	}
	return b
}

// readCounters sums the per-CPU counter maps.
func readCounters(m *gatewayMaps) (Counters, error) {
	c := newCounters()
	var errs []error

	var traffic []gatewayTraffic
	for r := range NumReasons {
		if err := m.ReasonStats.Lookup(uint32(r), &traffic); err != nil {
			errs = append(errs, fmt.Errorf("read reason_stats[%d]: %w", r, err))
			break
		}
		for _, t := range traffic {
			c.Reasons[r] = c.Reasons[r].plus(Traffic{t.Packets, t.Bytes})
		}
	}

	errs = append(errs, sumPerCPU(m.TenantStats, func(id uint32, v []gatewayTenantCounters) {
		var t TenantCounters
		for _, x := range v {
			t.RX = t.RX.plus(Traffic{x.Rx.Packets, x.Rx.Bytes})
			t.Fwd = t.Fwd.plus(Traffic{x.Fwd.Packets, x.Fwd.Bytes})
			t.Dropped = t.Dropped.plus(Traffic{x.Dropped.Packets, x.Dropped.Bytes})
		}
		if t != (TenantCounters{}) {
			c.Tenants[id] = &t
		}
	}))
	errs = append(errs, sumPerCPU(m.ServiceStats, func(id uint32, v []gatewayServiceCounters) {
		var s ServiceCounters
		for _, x := range v {
			s.Fwd = s.Fwd.plus(Traffic{x.Fwd.Packets, x.Fwd.Bytes})
			s.NewFlows += x.NewFlows
			s.Denied += x.Denied
		}
		if s != (ServiceCounters{}) {
			c.Services[id] = &s
		}
	}))
	errs = append(errs, sumPerCPU(m.BackendStats, func(id uint32, v []gatewayBackendCounters) {
		var b BackendCounters
		for _, x := range v {
			b.Fwd = b.Fwd.plus(Traffic{x.Fwd.Packets, x.Fwd.Bytes})
			b.Reply = b.Reply.plus(Traffic{x.Reply.Packets, x.Reply.Bytes})
			b.NewFlows += x.NewFlows
		}
		if b != (BackendCounters{}) {
			c.Backends[id] = &b
		}
	}))

	var ev []uint64
	for i, dst := range []*uint64{&c.Events.Emitted, &c.Events.RateLimited, &c.Events.RingbufFull} {
		if err := m.EventStats.Lookup(uint32(i), &ev); err != nil {
			errs = append(errs, fmt.Errorf("read event_stats[%d]: %w", i, err))
			break
		}
		for _, v := range ev {
			*dst += v
		}
	}
	return c, errors.Join(errs...)
}

// sumPerCPU calls f for every index of a per-CPU array with its per-CPU values, reading
// the array in batches (one system call per few thousand entries, not per entry:
// the backend array alone has 65536). Per-CPU arrays have every index; f decides what
// is worth keeping.
func sumPerCPU[V any](m *ebpf.Map, f func(id uint32, v []V)) error {
	ncpu, err := ebpf.PossibleCPU()
	if err != nil {
		return err
	}
	keys := make([]uint32, mapBatch)
	vals := make([]V, mapBatch*ncpu)
	var cursor ebpf.MapBatchCursor
	for {
		n, err := m.BatchLookup(&cursor, keys, vals, nil)
		for i := range n {
			f(keys[i], vals[i*ncpu:(i+1)*ncpu])
		}
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read %s: %w", m.String(), err)
		}
	}
}

// ConntrackLayout returns the sizes in bytes of a connection tracking key and entry as
// the fast path stores them (two per flow), so that a benchmark's floor can keep the
// same per-flow state.
func ConntrackLayout() (keySize, entrySize int) {
	return binary.Size(gatewayCtKey{}), binary.Size(gatewayCtEntry{})
}

// FlushConntrack deletes every flow, both entries of each; it returns how many entries
// it deleted. Each flow's next packet is balanced again (to the same backend while its
// service's Maglev table is unchanged; a TCP segment sent to another backend is
// answered with a reset) and a reply whose flow is gone is dropped as no_service.
// Entries the fast path writes meanwhile may survive.
func (d *Dataplane) FlushConntrack() (int, error) {
	n, err := ClearMap[gatewayCtKey, gatewayCtEntry](d.objs.Conntrack)
	if err != nil {
		return n, fmt.Errorf("flush conntrack: %w", err)
	}
	return n, nil
}

// FlushPinnedConntrack deletes every flow of a running instance through its pinned
// conntrack map, as FlushConntrack does for an open one (an operator's last resort:
// every flow is balanced again by its next packet). It refuses a map whose layout is
// not this version's.
func FlushPinnedConntrack(opts Options) (int, error) {
	p := filepath.Join(opts.PinDir(), gatewayMapConntrack)
	m, err := ebpf.LoadPinnedMap(p, nil)
	if errors.Is(err, os.ErrNotExist) {
		return 0, fmt.Errorf("%w: %s: no conntrack map pinned at %s", ErrNoInstance, opts.Instance, p)
	}
	if err != nil {
		return 0, fmt.Errorf("open pinned conntrack map %s: %w", p, err)
	}
	defer m.Close()
	keySize, entrySize := ConntrackLayout()
	if m.Type() != ebpf.LRUHash || int(m.KeySize()) != keySize || int(m.ValueSize()) != entrySize {
		return 0, fmt.Errorf("pinned conntrack map %s is a %s of %d-byte keys and %d-byte entries, not this version's %d and %d",
			p, m.Type(), m.KeySize(), m.ValueSize(), keySize, entrySize)
	}
	n, err := ClearMap[gatewayCtKey, gatewayCtEntry](m)
	if err != nil {
		return n, fmt.Errorf("flush conntrack of %s: %w", opts.Instance, err)
	}
	return n, nil
}

// ClearMap deletes every element of a hash map whose keys are K and values V, a batch
// of elements per system call, and returns how many it deleted. The benchmark clears
// its own flow tables with it, as moat's conntrack is flushed.
func ClearMap[K, V any](m *ebpf.Map) (int, error) {
	var (
		cursor ebpf.MapBatchCursor
		keys   = make([]K, mapBatch)
		values = make([]V, mapBatch)
		total  int
	)
	for {
		n, err := m.BatchLookupAndDelete(&cursor, keys, values, nil)
		total += n
		switch {
		case errors.Is(err, ebpf.ErrKeyNotExist):
			return total, nil
		case err != nil:
			return total, fmt.Errorf("clear %s: %w", m, err)
		}
	}
}

// ConntrackEntries reads the whole connection tracking map (for tests and status; it
// walks every entry).
func (d *Dataplane) ConntrackEntries() (map[CTKey]CTEntry, error) {
	out := map[CTKey]CTEntry{}
	var (
		k gatewayCtKey
		v gatewayCtEntry
	)
	it := d.objs.Conntrack.Iterate()
	for it.Next(&k, &v) {
		key := CTKey{Tenant: k.TenantId, Sport: portRaw(k.Sport), Dport: portRaw(k.Dport), Proto: k.Proto, Dir: k.Dir}
		binary.LittleEndian.PutUint32(key.Saddr[:], k.Saddr)
		binary.LittleEndian.PutUint32(key.Daddr[:], k.Daddr)
		e := CTEntry{LastSeen: uint64(v.LastSeen), BackendID: v.BackendId, ServiceID: v.ServiceId, VPort: portRaw(v.Vport), Flags: v.Flags, Ifindex: v.Ifindex,
			Route: Route{Time: uint64(v.Route.Time), Gen: v.Route.Gen, Ifindex: v.Route.Ifindex, VLAN: v.Route.Vlan, LenOK: v.Route.LenOk, SMAC: v.Route.Smac, DMAC: v.Route.Dmac}}
		binary.LittleEndian.PutUint32(e.VIP[:], v.Vip)
		out[key] = e
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read conntrack: %w", err)
	}
	return out, nil
}
