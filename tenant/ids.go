package tenant

import "fmt"

type idKind int

const (
	kindTenant idKind = iota
	kindService
	kindBackend
)

// allocator hands out ids 1..limit-1 (0 means "none" in every map). An id that the
// previous compilation used for something now gone is given out again only when no
// never-used id is left, so a stale connection tracking entry or policy entry is not
// mistaken for the new owner's within one transition.
type allocator struct {
	prev [3]map[string]uint32
	next [3]map[string]uint32
	used [3]map[uint32]bool // taken in next
	old  [3]map[uint32]bool // held by something in prev
	// cursor[kind][pass]: ids below it are known taken for that pass, so a whole
	// compilation allocates in linear time.
	cursor [3][2]uint32
}

func newAllocator(prev IDs) *allocator {
	a := &allocator{}
	for k, m := range []map[string]uint32{prev.Tenants, prev.Services, prev.Backends} {
		a.prev[k] = m
		a.next[k] = map[string]uint32{}
		a.used[k] = map[uint32]bool{}
		a.old[k] = map[uint32]bool{}
		for _, id := range m {
			a.old[k][id] = true
		}
	}
	return a
}

// keep reserves the previous id of key, if it had one.
func (a *allocator) keep(kind idKind, key string) {
	if id, ok := a.prev[kind][key]; ok {
		a.next[kind][key] = id
		a.used[kind][id] = true
	}
}

// get returns key's id, allocating one below limit when it has none.
func (a *allocator) get(kind idKind, key string, limit uint32) (uint32, error) {
	if id, ok := a.next[kind][key]; ok {
		if id >= limit {
			return 0, fmt.Errorf("id %d does not fit the fast path's limit of %d", id, limit)
		}
		return id, nil
	}
	for pass := 0; pass < 2; pass++ {
		for id := max(1, a.cursor[kind][pass]); id < limit; id++ {
			if a.used[kind][id] || (pass == 0 && a.old[kind][id]) {
				continue
			}
			a.cursor[kind][pass] = id + 1
			a.used[kind][id] = true
			a.next[kind][key] = id
			return id, nil
		}
	}
	return 0, fmt.Errorf("no id left: the fast path holds at most %d", limit-1)
}

func (a *allocator) result() IDs {
	return IDs{Tenants: a.next[kindTenant], Services: a.next[kindService], Backends: a.next[kindBackend]}
}
