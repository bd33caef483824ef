package dataplane

import (
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"math/bits"
	"net/netip"
	"slices"
	"sync"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/seed4c/moat/lb"
	"github.com/seed4c/moat/tenant"
)

// maxPortIfindex is MAX_PORT_IFINDEX of bpf/lib/common.h: the size of the array that
// holds untagged attachments by ifindex (TestMapSizesMatchDefaultLimits checks it).
const maxPortIfindex = 4096

// Writer is the only code that writes the fast path's configuration maps. It applies
// a whole tenant.Compiled at a time, as the difference from what the maps hold, in an
// order chosen so that no intermediate state lets a packet reach something the old or
// the new configuration forbids (see Apply). It is safe for concurrent use; applies
// are serialised.
type Writer struct {
	mu        sync.Mutex
	m         *gatewayMaps
	innerSpec *ebpf.MapSpec
	limits    tenant.Limits
	maxFlows  uint32
	// cur is what the maps hold, as far as this writer knows; nil until the first
	// Apply, which reads the maps instead (a restarted daemon inherits pinned state).
	cur *mapState
	// slots are the inner maps behind each service's two table slots that this
	// writer created and can refill in place.
	slots map[uint32]*tableSlots
	// tableKindKnown: innerSpec says which kind of table the outer map takes
	// (learnTableKind).
	tableKindKnown bool
}

// tableSlots are one service's two Maglev table slots (bpf/lib/lb.h).
type tableSlots struct {
	active int // 0 or 1; -1 before this writer wrote one
	maps   [2]*ebpf.Map
}

func newWriter(m *gatewayMaps, inner *ebpf.MapSpec, limits tenant.Limits, maxFlows uint32) *Writer {
	return &Writer{m: m, innerSpec: inner, limits: limits, maxFlows: maxFlows, slots: map[uint32]*tableSlots{}}
}

// mapState is a configuration in the maps' own key and value types.
type mapState struct {
	attachments map[gatewayAttachmentKey]gatewayAttachment // tagged, or an ifindex beyond the port array
	ports       map[uint32]gatewayAttachment               // untagged, by ifindex below maxPortIfindex
	egress      map[gatewayEgressKey]gatewayEgress
	txPorts     map[uint32]uint32
	services    map[gatewayServiceKey]gatewayService
	tables      map[uint32][]uint32 // current table by service id; nil slice: present, content unknown
	sizes       map[uint32]uint32   // Maglev size by service id (table or not): what its slots are made for
	backends    map[uint32]gatewayBackend
	policy      map[gatewayPolicyKey]gatewayPolicyRule
	// key filter words (bpf/lib/filter.h), non-zero only
	serviceFilter map[uint32]uint64
	backendFilter map[uint32]uint64
}

// Byte order: fields the C declares __be16/__be32 hold network-order bytes; the Go
// bindings marshal integers in host order, so a network-order value is carried as the
// integer whose little-endian bytes are the network bytes.
func addrRaw(a netip.Addr) uint32 { b := a.As4(); return binary.LittleEndian.Uint32(b[:]) }
func portRaw(p uint16) uint16     { return bits.ReverseBytes16(p) }

func newMapState() *mapState {
	return &mapState{
		attachments:   map[gatewayAttachmentKey]gatewayAttachment{},
		ports:         map[uint32]gatewayAttachment{},
		egress:        map[gatewayEgressKey]gatewayEgress{},
		txPorts:       map[uint32]uint32{},
		services:      map[gatewayServiceKey]gatewayService{},
		tables:        map[uint32][]uint32{},
		sizes:         map[uint32]uint32{},
		backends:      map[uint32]gatewayBackend{},
		policy:        map[gatewayPolicyKey]gatewayPolicyRule{},
		serviceFilter: map[uint32]uint64{},
		backendFilter: map[uint32]uint64{},
	}
}

func toMapState(c *tenant.Compiled) *mapState {
	s := newMapState()
	for _, a := range c.Attachments {
		v := gatewayAttachment{TenantId: a.TenantID, FibTable: a.FIBTable}
		if a.VLAN == 0 && a.Ifindex < maxPortIfindex {
			s.ports[a.Ifindex] = v
		} else {
			s.attachments[gatewayAttachmentKey{Ifindex: a.Ifindex, Vlan: a.VLAN}] = v
		}
	}
	for _, e := range c.Egress {
		s.egress[gatewayEgressKey{TenantId: e.TenantID, Ifindex: e.Ifindex}] = gatewayEgress{Vlan: e.VLAN}
	}
	for _, i := range c.TxPorts {
		s.txPorts[i] = i
	}
	for _, sv := range c.Services {
		k := gatewayServiceKey{TenantId: sv.TenantID, Addr: addrRaw(sv.VIP), Port: portRaw(sv.Port), Proto: uint8(sv.Protocol)}
		s.services[k] = gatewayService{Id: sv.ID, TableSize: sv.TableSize}
		s.sizes[sv.ID] = sv.MaglevSize
		if sv.TableSize > 0 {
			s.tables[sv.ID] = sv.Table
		}
	}
	for _, b := range c.Backends {
		s.backends[b.ID] = gatewayBackend{
			Addr: addrRaw(b.Addr), Port: portRaw(b.Port), State: uint8(b.State), TenantId: b.TenantID, ServiceId: b.ServiceID,
		}
	}
	for _, p := range c.Policy {
		k := gatewayPolicyKey{
			Prefixlen: 64 + uint32(p.Source.Bits()), TenantId: p.TenantID, ServiceId: p.ServiceID, Saddr: addrRaw(p.Source.Addr()),
		}
		s.policy[k] = gatewayPolicyRule{RuleId: p.RuleID}
	}
	s.serviceFilter = serviceFilterOf(s.services)
	s.backendFilter = backendFilterOf(s.backends, s.services)
	return s
}

// readMapState reads what the maps hold now. Tables are listed, not read: they are
// rewritten whole by the first Apply anyway.
func (w *Writer) readMapState() (*mapState, error) {
	s := newMapState()
	errs := []error{
		readHash(w.m.Attachments, s.attachments),
		readHash(w.m.EgressPorts, s.egress),
		readHash(w.m.TxPorts, s.txPorts),
		readHash(w.m.Services, s.services),
		readHash(w.m.Policy, s.policy),
	}
	// A batched lookup of a map of maps yields the ids of the inner maps, and skips
	// the empty slots.
	errs = append(errs, readBatches(w.m.MaglevTables, func(slots []uint32, _ []uint32) {
		for _, slot := range slots {
			s.tables[slot/2] = nil // slots 2·id and 2·id+1 belong to service id
		}
	}))
	errs = append(errs, readArray(w.m.PortAttachments, s.ports), readArray(w.m.Backends, s.backends),
		readArray(w.m.ServiceFilter, s.serviceFilter), readArray(w.m.BackendFilter, s.backendFilter))
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("read fast path maps: %w", err)
	}
	return s, nil
}

// readArray reads the slots of an array map that are not zero (a zero slot is no
// entry: an evicted backend, an interface without an untagged attachment). It reads in
// batches, a system call per mapBatch slots, where an iterator makes two per slot: the
// backend array alone has 65536 slots, which took a restarted writer's first pass and
// every status request about 0.15 s (BenchmarkReadMapState).
func readArray[V comparable](m *ebpf.Map, into map[uint32]V) error {
	var zero V
	return readBatches(m, func(keys []uint32, values []V) {
		for i, v := range values {
			if v != zero {
				into[keys[i]] = v
			}
		}
	})
}

// mapBatch is how many entries readBatches asks the kernel for at a time.
const mapBatch = 4096

// readBatches calls f with every entry of m, a batch at a time (keys[i] holds
// values[i]; f must not keep the slices). The map must support batched lookups:
// arrays and hashes do, LPM tries do not.
func readBatches[K, V any](m *ebpf.Map, f func(keys []K, values []V)) error {
	keys, values := make([]K, mapBatch), make([]V, mapBatch)
	var cursor ebpf.MapBatchCursor
	for {
		n, err := m.BatchLookup(&cursor, keys, values, nil)
		f(keys[:n], values[:n])
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read %s: %w", m, err)
		}
	}
}

func readHash[K comparable, V any](m *ebpf.Map, into map[K]V) error {
	var (
		k K
		v V
	)
	it := m.Iterate()
	for it.Next(&k, &v) {
		into[k] = v
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("iterate %s: %w", m, err)
	}
	return nil
}

// Apply makes the maps hold c. The order of writes:
//
//  1. attachments, egress ports and policy entries that go away, and services whose
//     key goes away, are deleted first: nothing new is reachable through something
//     old;
//  2. the backend filter bits of new backends are set, then backends are written (new
//     ones, and state changes: an eviction takes effect here, before any table
//     changes); removed backends are zeroed, which is the evicted state;
//  3. each changed Maglev table is written into its service's slot not in use (a new
//     service gets both slots now);
//  4. the service filter bits of new services are set, then services (each pointing
//     at its freshly written slot: one atomic flip), then policy entries, then
//     redirect ports, egress ports, and finally attachments are written: a tenant's
//     traffic is classified only once everything it may reach is in place;
//  5. the table slots of removed services are dropped, and the filter bits that only
//     removed services or backends needed are cleared.
//
// The configuration generation is bumped before and after, so that flows re-check the
// routes, egress and policy they cached. On error the writer tries to restore the
// previous configuration, and reports both.
func (w *Writer) Apply(c *tenant.Compiled) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if err := w.checkCapacity(c); err != nil {
		return err
	}
	next := toMapState(c)
	if err := w.knowMaps(); err != nil {
		return err
	}
	// Flows re-check their cached routes, egress and policy against every state the
	// maps pass through, and against the final one (bpf/lib/route.h).
	if err := w.bumpGeneration(); err != nil {
		return err
	}
	err := w.applyOrRestore(next)
	if gerr := w.bumpGeneration(); gerr != nil {
		err = errors.Join(err, gerr)
	}
	return err
}

// Evict makes the backends ids unusable at once, ahead of the next Apply
// (reconcile.Evicter): it writes each one's state as evicted, which the fast path
// checks on every packet (so established flows stop: their replies as
// drop_backend_evicted, their client packets, balanced again, as below), and changes
// nothing else. Ids the maps do not hold as usable are left alone. The Maglev
// tables keep naming the backends until the next Apply rebuilds them, so a new flow
// that picks one meanwhile is dropped (drop_backend_unavailable), not balanced to
// another backend: an untrusted host gets nothing while its table is rebuilt. The
// next Apply writes what its configuration says, evicted backends included.
func (w *Writer) Evict(ids []uint32) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if err := w.knowMaps(); err != nil {
		return err
	}
	var errs []error
	for _, id := range ids {
		b, ok := w.cur.backends[id]
		if !ok || lb.State(b.State) == lb.StateEvicted {
			continue
		}
		b.State = uint8(lb.StateEvicted)
		if err := w.m.Backends.Put(id, b); err != nil {
			errs = append(errs, fmt.Errorf("evict backend %d: %w", id, err))
			continue
		}
		w.cur.backends[id] = b
	}
	return errors.Join(errs...)
}

// Evicted returns, sorted, the ids of the backends the maps hold as evicted
// (reconcile.Evicter): after a restart over pinned maps, those the previous run
// evicted last, whether or not its store recorded why.
func (w *Writer) Evicted() ([]uint32, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if err := w.knowMaps(); err != nil {
		return nil, err
	}
	var ids []uint32
	for id, b := range w.cur.backends {
		if lb.State(b.State) == lb.StateEvicted {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	return ids, nil
}

// knowMaps makes sure w.cur says what the maps hold: the first call that needs it
// reads them (a restarted daemon inherits pinned state). Call it with w.mu held.
func (w *Writer) knowMaps() error {
	if w.cur != nil {
		return nil
	}
	cur, err := w.readMapState()
	if err != nil {
		return err
	}
	w.cur = cur
	return nil
}

func (w *Writer) applyOrRestore(next *mapState) error {
	prev := w.cur
	if err := w.apply(prev, next); err != nil {
		// What the maps hold is now unknown: read them back and aim for prev.
		w.cur = nil
		if now, rerr := w.readMapState(); rerr != nil {
			return fmt.Errorf("%w (and reading the maps back failed: %v)", err, rerr)
		} else if rerr := w.apply(now, prev); rerr != nil {
			return fmt.Errorf("%w (and restoring the previous configuration failed: %v)", err, rerr)
		}
		w.cur = prev
		return fmt.Errorf("%w (previous configuration restored)", err)
	}
	w.cur = next
	return nil
}

func (w *Writer) bumpGeneration() error {
	var gen uint32
	if err := w.m.ConfigGen.Lookup(uint32(0), &gen); err != nil {
		return fmt.Errorf("read configuration generation: %w", err)
	}
	if err := w.m.ConfigGen.Put(uint32(0), gen+1); err != nil {
		return fmt.Errorf("bump configuration generation: %w", err)
	}
	return nil
}

func (w *Writer) checkCapacity(c *tenant.Compiled) error {
	l := w.limits
	switch {
	case uint32(len(c.Attachments)) > l.MaxAttachments:
		return fmt.Errorf("%d attachments: the fast path holds %d", len(c.Attachments), l.MaxAttachments)
	case uint32(len(c.Policy)) > l.MaxPolicy:
		return fmt.Errorf("%d policy entries: the fast path holds %d", len(c.Policy), l.MaxPolicy)
	case uint32(len(c.Services)) >= l.MaxServices:
		return fmt.Errorf("%d services: the fast path holds %d", len(c.Services), l.MaxServices-1)
	}
	for _, s := range c.Services {
		if s.ID >= l.MaxServices || s.TenantID >= l.MaxTenants {
			return fmt.Errorf("service %s/%s: id %d or tenant id %d beyond the fast path's maps", s.Tenant, s.Name, s.ID, s.TenantID)
		}
	}
	for _, b := range c.Backends {
		if b.ID >= l.MaxBackends {
			return fmt.Errorf("backend %s/%s/%s: id %d beyond the fast path's %d backends", b.Tenant, b.Service, b.Name, b.ID, l.MaxBackends)
		}
	}
	return nil
}

func (w *Writer) apply(prev, next *mapState) error {
	m := w.m
	// 1. withdraw
	if err := deleteGone(m.Attachments, prev.attachments, next.attachments); err != nil {
		return err
	}
	for ifindex := range prev.ports {
		if _, ok := next.ports[ifindex]; !ok {
			if err := m.PortAttachments.Put(ifindex, gatewayAttachment{}); err != nil {
				return fmt.Errorf("withdraw the attachment of interface %d: %w", ifindex, err)
			}
		}
	}
	if err := deleteGone(m.EgressPorts, prev.egress, next.egress); err != nil {
		return err
	}
	if err := deleteGone(m.Policy, prev.policy, next.policy); err != nil {
		return err
	}
	for k, v := range prev.services {
		if nv, ok := next.services[k]; !ok || nv.Id != v.Id {
			if err := deleteKey(m.Services, k); err != nil {
				return err
			}
		}
	}
	// 2. backends: their filter bits first (before any table can pick them), then
	// write changed and new, zero removed
	if err := setFilterBits(m.BackendFilter, prev.backendFilter, next.backendFilter); err != nil {
		return err
	}
	for id, b := range next.backends {
		if old, ok := prev.backends[id]; !ok || old != b {
			if err := m.Backends.Put(id, b); err != nil {
				return fmt.Errorf("write backend %d: %w", id, err)
			}
		}
	}
	for id := range prev.backends {
		if _, ok := next.backends[id]; !ok {
			if err := m.Backends.Put(id, gatewayBackend{}); err != nil {
				return fmt.Errorf("evict removed backend %d: %w", id, err)
			}
		}
	}
	// 3. tables: each written into its service's unused slot, then published with the
	// service entry below (one atomic update flips to it).
	for id, table := range next.tables {
		if old, ok := prev.tables[id]; ok && old != nil && slices.Equal(old, table) && w.slots[id] != nil {
			continue
		}
		if err := w.writeTable(id, table); err != nil {
			return err
		}
	}
	// A service without a table yet gets its two slots now, so that admitting its
	// first backend refills a slot instead of waiting for an RCU grace period.
	for _, v := range next.services {
		if size := next.sizes[v.Id]; v.TableSize == 0 && w.slots[v.Id] == nil && size > 0 {
			if err := w.prepareSlots(v.Id, size); err != nil {
				return err
			}
		}
	}
	for k, v := range next.services {
		v.Table = 0
		if st := w.slots[v.Id]; v.TableSize > 0 && st != nil && st.active >= 0 {
			v.Table = 2*v.Id + uint32(st.active)
		}
		next.services[k] = v
	}
	// 4. publish: a service's filter bit before the service
	if err := setFilterBits(m.ServiceFilter, prev.serviceFilter, next.serviceFilter); err != nil {
		return err
	}
	if err := putChanged(m.Services, prev.services, next.services); err != nil {
		return err
	}
	if err := putChanged(m.Policy, prev.policy, next.policy); err != nil {
		return err
	}
	if err := putChanged(m.TxPorts, prev.txPorts, next.txPorts); err != nil {
		return err
	}
	if err := putChanged(m.EgressPorts, prev.egress, next.egress); err != nil {
		return err
	}
	if err := putChanged(m.Attachments, prev.attachments, next.attachments); err != nil {
		return err
	}
	if err := putChanged(m.PortAttachments, prev.ports, next.ports); err != nil {
		return err
	}
	// 5. tidy: tables of services that are gone (a service left without admitted
	// backends keeps its slots, ready to be refilled in place)
	live := map[uint32]bool{}
	for _, v := range next.services {
		live[v.Id] = true
	}
	gone := map[uint32]bool{}
	for id := range prev.tables {
		gone[id] = !live[id]
	}
	for id := range w.slots {
		gone[id] = !live[id]
	}
	for id, g := range gone {
		if g {
			if err := w.dropTables(id); err != nil {
				return err
			}
		}
	}
	if err := clearFilterBits(m.ServiceFilter, prev.serviceFilter, next.serviceFilter); err != nil {
		return err
	}
	if err := clearFilterBits(m.BackendFilter, prev.backendFilter, next.backendFilter); err != nil {
		return err
	}
	return deleteGone(m.TxPorts, prev.txPorts, next.txPorts)
}

// writeTable writes table into service id's slot that is not in use, and makes it the
// slot in use (the caller publishes it in the service entry). The slot's inner map is
// refilled in place when it has the right size; otherwise a new one is made and put in
// the slot, which costs an RCU grace period but happens only when a service first gets
// a table or changes its table size. (A packet that read the service entry just before
// the previous flip may still be reading this slot while it is rewritten: it then picks
// a backend of the same service from a mixed table, and backend states are checked
// after every pick anyway.)
func (w *Writer) writeTable(id uint32, table []uint32) error {
	st := w.slots[id]
	if st == nil {
		st = &tableSlots{active: -1}
		w.slots[id] = st
	}
	target := 0
	if st.active == 0 {
		target = 1
	}
	inner := st.maps[target]
	if inner == nil || inner.MaxEntries() != uint32(len(table)) {
		fresh, err := w.newTable(fmt.Sprintf("maglev_%d_%d", id, target), uint32(len(table)))
		if err != nil {
			return fmt.Errorf("create Maglev table of service %d (%d slots): %w", id, len(table), err)
		}
		if err := fillTable(fresh, table); err != nil {
			fresh.Close()
			return fmt.Errorf("fill Maglev table of service %d: %w", id, err)
		}
		if err := w.m.MaglevTables.Put(2*id+uint32(target), fresh); err != nil {
			fresh.Close()
			return fmt.Errorf("install Maglev table of service %d: %w", id, err)
		}
		if inner != nil {
			inner.Close()
		}
		st.maps[target] = fresh
	} else if err := fillTable(inner, table); err != nil {
		return fmt.Errorf("refill Maglev table of service %d: %w", id, err)
	}
	st.active = target
	return nil
}

// newTable makes an empty Maglev table map of size slots. Tables are mmapable
// (bpf/lib/lb.h), but an outer map pinned by an older version holds (and accepts)
// tables of the older kind only: the writer then makes those for as long as it runs.
func (w *Writer) newTable(name string, size uint32) (*ebpf.Map, error) {
	if err := w.learnTableKind(); err != nil {
		return nil, err
	}
	spec := w.innerSpec.Copy()
	spec.MaxEntries, spec.Name = size, name
	return ebpf.NewMap(spec)
}

// learnTableKind finds, once, which kind of table the outer map takes: that of a table
// it holds, or else what a trial insertion in its last slot says (no service uses a
// slot while the outer map holds no table; the trial costs an RCU grace period, once).
func (w *Writer) learnTableKind() error {
	if w.tableKindKnown || w.innerSpec.Flags&unix.BPF_F_MMAPABLE == 0 {
		return nil
	}
	var (
		slot  uint32
		inner *ebpf.Map
	)
	it := w.m.MaglevTables.Iterate()
	if it.Next(&slot, &inner) {
		mmapable := inner.Flags()&unix.BPF_F_MMAPABLE != 0
		inner.Close()
		w.setTableKind(mmapable)
		return nil
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("read the Maglev tables' map: %w", err)
	}
	spec := w.innerSpec.Copy()
	spec.MaxEntries, spec.Name = 1, "maglev_probe"
	m, err := ebpf.NewMap(spec)
	if err != nil {
		return fmt.Errorf("create a Maglev table: %w", err)
	}
	defer m.Close()
	last := w.m.MaglevTables.MaxEntries() - 1
	switch err := w.m.MaglevTables.Put(last, m); {
	case err == nil:
		w.setTableKind(true)
		return deleteKey(w.m.MaglevTables, last)
	case errors.Is(err, unix.EINVAL):
		w.setTableKind(false)
		return nil
	default:
		return fmt.Errorf("try a table in the Maglev tables' map: %w", err)
	}
}

func (w *Writer) setTableKind(mmapable bool) {
	w.tableKindKnown = true
	if !mmapable {
		w.innerSpec = w.innerSpec.Copy()
		w.innerSpec.Flags &^= unix.BPF_F_MMAPABLE
	}
}

// fillTable writes table into m: one copy into the map's memory when it is mmapable,
// one batched update otherwise. Either way each slot is written whole (4 aligned
// bytes), so that a reader sees the old or the new backend of a slot, never a mix.
func fillTable(m *ebpf.Map, table []uint32) error {
	if m.Flags()&unix.BPF_F_MMAPABLE == 0 {
		keys := make([]uint32, len(table))
		for i := range keys {
			keys[i] = uint32(i)
		}
		_, err := m.BatchUpdate(keys, table, nil)
		return err
	}
	mem, err := m.Memory()
	if err != nil {
		return err
	}
	// An array map lays its values out 8-byte aligned: slot i at 8·i.
	const stride = 8
	if int(mem.Size()) < stride*len(table) {
		return fmt.Errorf("table memory of %d bytes for %d slots", mem.Size(), len(table))
	}
	buf := make([]byte, stride*len(table))
	for i, v := range table {
		binary.NativeEndian.PutUint32(buf[stride*i:], v)
	}
	_, err = mem.WriteAt(buf, 0)
	return err
}

// prepareSlots makes both table slots of a service that has no table yet (they hold
// zeros, which no service entry points at).
func (w *Writer) prepareSlots(id, size uint32) error {
	st := &tableSlots{active: -1}
	for slot := range st.maps {
		m, err := w.newTable(fmt.Sprintf("maglev_%d_%d", id, slot), size)
		if err == nil {
			err = w.m.MaglevTables.Put(2*id+uint32(slot), m)
		}
		if err != nil {
			m.Close()
			for _, made := range st.maps {
				made.Close()
			}
			return fmt.Errorf("prepare Maglev table slots of service %d (%d slots): %w", id, size, err)
		}
		st.maps[slot] = m
	}
	w.slots[id] = st
	return nil
}

// dropTables removes both table slots of a service that is gone.
func (w *Writer) dropTables(id uint32) error {
	if st := w.slots[id]; st != nil {
		for _, m := range st.maps {
			m.Close()
		}
		delete(w.slots, id)
	}
	for _, slot := range []uint32{2 * id, 2*id + 1} {
		if err := deleteKey(w.m.MaglevTables, slot); err != nil {
			return err
		}
	}
	return nil
}

// close releases the writer's handles on table maps (the outer map keeps them alive).
func (w *Writer) close() {
	w.mu.Lock()
	defer w.mu.Unlock()
	for id := range w.slots {
		for _, m := range w.slots[id].maps {
			m.Close()
		}
	}
	w.slots = map[uint32]*tableSlots{}
}

func deleteKey(m *ebpf.Map, k any) error {
	if err := m.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("delete %+v from %s: %w", k, m, err)
	}
	return nil
}

func deleteGone[K comparable, V any](m *ebpf.Map, prev, next map[K]V) error {
	for _, k := range slices.Collect(maps.Keys(prev)) {
		if _, ok := next[k]; !ok {
			if err := deleteKey(m, k); err != nil {
				return err
			}
		}
	}
	return nil
}

func putChanged[K, V comparable](m *ebpf.Map, prev, next map[K]V) error {
	for k, v := range next {
		if old, ok := prev[k]; ok && old == v {
			continue
		}
		if err := m.Put(k, v); err != nil {
			return fmt.Errorf("write %+v to %s: %w", k, m, err)
		}
	}
	return nil
}
