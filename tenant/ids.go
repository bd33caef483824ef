package tenant

import "fmt"

type idKind int

const (
	kindTenant idKind = iota
	kindService
	kindBackend
	numKinds
)

func (k idKind) String() string {
	return [...]string{"tenant", "service", "backend"}[k]
}

// NextIDs records, for each kind, the id the search for a new one starts from in the
// next compilation. It is part of IDs so that the order in which ids are handed out
// survives from one compilation to the next (see IDs).
type NextIDs struct {
	Tenant  uint32 `json:"tenant,omitempty"`
	Service uint32 `json:"service,omitempty"`
	Backend uint32 `json:"backend,omitempty"`
}

// allocator hands out ids 1..limit-1 of each kind (0 means "none" in every map).
//
// Something present in the previous compilation keeps its id (keep). Something new
// gets the first id at or after the kind's cursor, in increasing order wrapping around
// from limit-1 to 1, that is neither taken in this compilation nor held by something
// in the previous one (pass 0); only when there is none does it take an id the previous
// compilation held for something now gone (pass 1). The cursor is carried from one
// compilation to the next in IDs.Next, so ids are used in order over the whole history
// of a gateway: an id freed at some point comes back only after every id was used once,
// and a stale connection tracking entry, policy entry or counter that still names it is
// never mistaken for a new owner's while a never-used id is left.
type allocator struct {
	pools [numKinds]pool
}

type pool struct {
	kind  idKind
	limit uint32
	prev  map[string]uint32
	next  map[string]uint32
	owner map[uint32]string // ids taken in next, by key
	old   map[uint32]bool   // ids held by something in prev
	// pos[pass] is where that pass's scan resumes and seen[pass] how many ids it has
	// stepped over: every id stepped over is taken or (pass 0) old for the rest of the
	// compilation, so a whole compilation allocates in time linear in limit and the
	// pass is exhausted when it has seen limit-1 ids.
	pos    [2]uint32
	seen   [2]uint32
	cursor uint32 // where the next compilation's scan starts
}

func newAllocator(prev IDs, limits Limits) *allocator {
	a := &allocator{}
	prevMaps := [numKinds]map[string]uint32{prev.Tenants, prev.Services, prev.Backends}
	cursors := [numKinds]uint32{prev.Next.Tenant, prev.Next.Service, prev.Next.Backend}
	limitOf := [numKinds]uint32{limits.MaxTenants, limits.MaxServices, limits.MaxBackends}
	for k := range numKinds {
		p := &a.pools[k]
		p.kind, p.limit, p.prev = k, limitOf[k], prevMaps[k]
		p.next, p.owner, p.old = map[string]uint32{}, map[uint32]string{}, map[uint32]bool{}
		var highest uint32
		for _, id := range p.prev {
			p.old[id] = true
			highest = max(highest, id)
		}
		start := cursors[k]
		if start == 0 {
			// IDs written before the cursor existed: continue above every id they hold.
			start = highest + 1
		}
		if start == 0 || start >= p.limit {
			start = 1
		}
		p.pos = [2]uint32{start, start}
		p.cursor = start
	}
	return a
}

// keep reserves key's id of the previous compilation, if it had one. An id of 0, or
// one the previous IDs give to two keys (they were edited by hand, or corrupted), is
// not kept: the key gets a fresh id instead, so ids never collide.
func (a *allocator) keep(kind idKind, key string) {
	p := &a.pools[kind]
	id, ok := p.prev[key]
	if !ok || id == 0 {
		return
	}
	if owner, taken := p.owner[id]; taken && owner != key {
		return
	}
	p.next[key] = id
	p.owner[id] = key
}

// get returns key's id, allocating one when it has none.
func (a *allocator) get(kind idKind, key string) (uint32, error) {
	p := &a.pools[kind]
	if id, ok := p.next[key]; ok {
		if id >= p.limit {
			return 0, fmt.Errorf("%s id %d (kept from the previous compilation) does not fit the fast path's limit of %d", kind, id, p.limit)
		}
		return id, nil
	}
	span := max(p.limit, 1) - 1
	for pass := range 2 {
		for p.seen[pass] < span {
			id := p.pos[pass]
			p.pos[pass]++
			if p.pos[pass] >= p.limit {
				p.pos[pass] = 1
			}
			p.seen[pass]++
			if _, taken := p.owner[id]; taken || (pass == 0 && p.old[id]) {
				continue
			}
			p.owner[id] = key
			p.next[key] = id
			p.cursor = p.pos[pass]
			return id, nil
		}
	}
	return 0, fmt.Errorf("no %s id left: the fast path holds at most %d %ss", kind, span, kind)
}

func (a *allocator) result() IDs {
	return IDs{
		Tenants:  a.pools[kindTenant].next,
		Services: a.pools[kindService].next,
		Backends: a.pools[kindBackend].next,
		Next: NextIDs{
			Tenant:  a.pools[kindTenant].cursor,
			Service: a.pools[kindService].cursor,
			Backend: a.pools[kindBackend].cursor,
		},
	}
}
