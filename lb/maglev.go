package lb

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
)

// Backend is one entry of a Maglev table build.
//
// ID is stable for the backend's whole life (it is the dataplane's backend id): the
// permutation a backend walks is derived from its ID alone, which is what keeps a table
// almost unchanged when other backends come and go. The table's content depends only on
// the set of (ID, Weight) pairs and the table size, never on the order of the slice.
type Backend struct {
	ID     uint32
	Weight uint32
}

const (
	// DefaultTableSize is the table size (a prime) used when a service does not choose
	// one; it is Katran's default ring size and one of Cilium's table sizes. It serves up
	// to DefaultTableSize/MinSlotsPerBackend = 1024 backends.
	DefaultTableSize uint32 = 65537

	// MaxTableSize is the largest table BuildTable accepts: the largest prime below 2^20.
	// A table is one array of uint32 in a BPF map per service, so this bounds one
	// service's table to 4 MiB of kernel memory and one build to tens of milliseconds,
	// while still serving MaxTableSize/MinSlotsPerBackend = 16,383 backends (Cilium
	// stops at 131,071 slots; Katran defaults to 65,537).
	MaxTableSize uint32 = 1048573

	// MinSlotsPerBackend is the least table size per backend that BuildTable accepts.
	//
	// Slots are indivisible, so a backend's share of the table can be off its weight
	// share by up to one slot, and Maglev moves more slots on a change when the table is
	// crowded. Tables with m >= 100·N keep every evenly weighted backend within 1% of its
	// share (the bound the tests check); 64 is the floor below which the error of one
	// slot exceeds 1/64 (1.6%) of an even share. The floor is lower than 100 so that
	// the default table serves 1024 backends, including the Maglev paper's evaluation
	// point of 1000 backends over 65537 slots.
	MinSlotsPerBackend = 64
)

// Errors returned (wrapped, with the offending values) by BuildTable; test them with
// errors.Is.
var (
	// ErrNoBackends: the build was given no backend. What an empty service means (drop,
	// reject, fall back) is the caller's decision, so BuildTable does not invent a table.
	ErrNoBackends        = errors.New("no backends")
	ErrTableSizeNotPrime = errors.New("table size is not prime")
	ErrTableTooSmall     = errors.New("table too small for the number of backends")
	ErrTableTooLarge     = errors.New("table size above MaxTableSize")
	ErrZeroWeight        = errors.New("backend weight is zero")
	ErrDuplicateID       = errors.New("duplicate backend id")
)

// BuildTable returns the weighted Maglev lookup table of m slots, each holding a backend
// ID. Every backend gets at least one slot, and otherwise a number of slots proportional
// to its weight, to within one slot (see below). The input slice is not modified.
//
// Only backends that accept new flows (StateAdmitted) belong in a build: draining and
// evicted backends are left out by the caller, and conntrack carries the flows a
// draining backend keeps.
//
// # Permutations
//
// As in the Maglev paper (Eisenbud et al., NSDI 2016, §3.4), backend b walks the slots
// offset(b), offset(b)+skip(b), offset(b)+2·skip(b), … (mod m), with
//
//	offset(b) = h(b.ID, offsetSeed) mod m
//	skip(b)   = h(b.ID, skipSeed) mod (m-1) + 1
//
// Since m is prime and 1 <= skip < m, the walk visits every slot exactly once. h is
// SplitMix64's output function (Steele, Lea, Flood, OOPSLA 2014) applied to ID xor a
// fixed 64-bit seed; it is written out below so that the tables are the same in every
// process, on every platform and with every Go version (no hash/maphash, no map order).
//
// # Weights
//
// Each backend first gets a quota of slots by the largest-remainder method (Hamilton):
// floor(m·w/W) slots each, and the slots left over to the largest remainders m·w mod W
// (ties to the smaller ID). A backend whose exact share m·w/W is below one slot is
// raised to one slot, taken from the others, and the rest are apportioned among them
// again, so that no backend with a weight is left without traffic. Quotas therefore sum
// to m, and whenever every backend's exact share is at least one slot, each quota is
// less than one slot away from its exact share.
//
// Backends then take turns, as in Katran's MaglevHashV2: in round r = 0, 1, … each
// backend, in ID order, takes a turn if one of its turns falls in that round; backend
// i's j-th turn (j = 0 … quota-1) falls in round floor(j·qmax/quota(i)), where qmax is
// the largest quota. A turn claims the next free slot of the backend's walk. Katran
// counts turns in raw weights and stops mid-round when the table is full, so rounding
// leaves its counts off the weights by up to N slots in all; counting in quotas makes
// the table fill exactly at the end of round qmax-1 with every backend holding exactly
// its quota. With equal weights this is exactly the paper's unweighted population over
// backends in ID order.
//
// # Cost
//
// The walks probe about m·ln(m) slots in all, which is most of a build: about 3 ms for
// 1000 backends over 65537 slots on one core of the team's 2-core EPYC. A build
// allocates three times (working state, one scratch buffer, the table), however large m.
func BuildTable(backends []Backend, m uint32) ([]uint32, error) {
	if err := checkBuild(backends, m); err != nil {
		return nil, err
	}
	ms := make([]member, len(backends))
	for i, b := range backends {
		ms[i] = member{id: b.ID, weight: b.Weight}
	}
	// Sorting by ID is what makes the table independent of slice order: turn order
	// within a round and the quotas' tie-breaks both follow it.
	slices.SortFunc(ms, func(a, b member) int { return cmp.Compare(a.id, b.id) })
	for i := 1; i < len(ms); i++ {
		if ms[i].id == ms[i-1].id {
			return nil, fmt.Errorf("lb: build maglev table: backend id %d: %w", ms[i].id, ErrDuplicateID)
		}
	}
	qmax := apportion(ms, m)
	for i := range ms {
		ms[i].next, ms[i].skip = permutation(ms[i].id, m)
	}

	// One allocation for the scratch: the turn sequence, its per-round counts, and a
	// bitmap of the slots taken. Walks probe the bitmap rather than the table: at one
	// bit a slot it stays in cache where the table does not (128 KiB against 4 MiB at
	// MaxTableSize, where this made builds about 30% faster).
	words := (m + 31) / 32
	scratch := make([]uint32, int(m)+int(qmax)+1+int(words))
	turns, roundStart, taken := scratch[:m], scratch[m:m+qmax+1], scratch[m+qmax+1:]
	schedule(ms, qmax, turns, roundStart)

	table := make([]uint32, m)
	for _, t := range turns {
		b := &ms[t]
		s := b.next
		for taken[s/32]&(1<<(s%32)) != 0 {
			s = advance(s, b.skip, m)
		}
		taken[s/32] |= 1 << (s % 32)
		table[s] = b.id
		b.next = advance(s, b.skip, m)
	}
	return table, nil
}

// member is a backend's working state during one build.
type member struct {
	id, weight uint32
	quota      uint32 // slots this backend will hold
	rem        uint64 // remainder of its exact share, for the largest-remainder step
	next, skip uint32 // the next slot its walk will try, and the walk's stride
}

func checkBuild(backends []Backend, m uint32) error {
	if len(backends) == 0 {
		return fmt.Errorf("lb: build maglev table of %d slots: %w", m, ErrNoBackends)
	}
	if m > MaxTableSize {
		return fmt.Errorf("lb: build maglev table: size %d: %w (%d)", m, ErrTableTooLarge, MaxTableSize)
	}
	if !IsPrime(m) {
		return fmt.Errorf("lb: build maglev table: size %d: %w (next prime is %d)", m, ErrTableSizeNotPrime, NextPrime(m))
	}
	if need := uint64(MinSlotsPerBackend) * uint64(len(backends)); uint64(m) < need {
		return fmt.Errorf("lb: build maglev table: size %d for %d backends (at least %d·%d = %d needed): %w",
			m, len(backends), MinSlotsPerBackend, len(backends), need, ErrTableTooSmall)
	}
	for _, b := range backends {
		if b.Weight == 0 {
			return fmt.Errorf("lb: build maglev table: backend id %d: %w", b.ID, ErrZeroWeight)
		}
	}
	return nil
}

// apportion sets every member's quota, as documented on BuildTable, and returns the
// largest quota. ms is sorted by ID on entry and is again on return. The checks done
// before guarantee m >= len(ms) and weights > 0.
func apportion(ms []member, m uint32) (qmax uint32) {
	var total uint64
	for _, b := range ms {
		total += uint64(b.weight)
	}
	// Members whose exact share is below one slot are pinned to one slot. Raising the
	// smallest weights first, one at a time, and re-testing against what remains reaches
	// the same set as re-apportioning after every pass: pinning a member only lowers the
	// others' shares, and lower weights always have the lower shares. The loop cannot pin
	// everyone, since the heaviest remaining member's share is at least budget/remaining,
	// which m >= len(ms) keeps at or above one slot.
	slices.SortFunc(ms, func(a, b member) int {
		return cmp.Or(cmp.Compare(a.weight, b.weight), cmp.Compare(a.id, b.id))
	})
	pinned := 0
	budget := uint64(m)
	for pinned < len(ms)-1 && uint64(ms[pinned].weight)*budget < total {
		ms[pinned].quota = 1
		total -= uint64(ms[pinned].weight)
		budget--
		pinned++
	}
	// Largest remainder over the rest. budget·weight < 2^20·2^32 cannot overflow.
	rest := ms[pinned:]
	left := budget
	for i := range rest {
		share := budget * uint64(rest[i].weight)
		rest[i].quota = uint32(share / total)
		rest[i].rem = share % total
		left -= uint64(rest[i].quota)
	}
	if left > 0 {
		slices.SortFunc(rest, func(a, b member) int {
			return cmp.Or(cmp.Compare(b.rem, a.rem), cmp.Compare(a.id, b.id))
		})
		for i := range left {
			rest[i].quota++
		}
	}
	slices.SortFunc(ms, func(a, b member) int { return cmp.Compare(a.id, b.id) })
	for _, b := range ms {
		qmax = max(qmax, b.quota)
	}
	return qmax
}

// schedule writes into turns the member indices in the order they take their turns:
// round by round, and by ID within a round (a stable counting sort on the round).
// turns has one entry per slot; roundStart has qmax+1 entries and is clobbered.
func schedule(ms []member, qmax uint32, turns, roundStart []uint32) {
	clear(roundStart)
	for i := range ms {
		for r := range turnRounds(ms[i].quota, qmax) {
			roundStart[r+1]++
		}
	}
	for r := 1; r < len(roundStart); r++ {
		roundStart[r] += roundStart[r-1]
	}
	for i := range ms {
		for r := range turnRounds(ms[i].quota, qmax) {
			turns[roundStart[r]] = uint32(i)
			roundStart[r]++
		}
	}
}

// turnRounds yields floor(j·qmax/quota) for j = 0 … quota-1: the rounds in which a
// member with that quota takes its turns. They are distinct because quota <= qmax.
// Computed incrementally (Bresenham) to keep a division out of the per-slot work.
func turnRounds(quota, qmax uint32) func(yield func(uint32) bool) {
	return func(yield func(uint32) bool) {
		step, stepRem := qmax/quota, qmax%quota
		r, frac := uint32(0), uint32(0)
		for range quota {
			if !yield(r) {
				return
			}
			r += step
			frac += stepRem
			if frac >= quota {
				frac -= quota
				r++
			}
		}
	}
}

// advance returns (s + skip) mod m for s, skip < m, without a division.
func advance(s, skip, m uint32) uint32 {
	s += skip // < 2m <= 2·MaxTableSize: no overflow
	if s >= m {
		s -= m
	}
	return s
}

// Seeds of the two hashes of a backend ID: the ASCII of "moat-off" and "moat-skp".
// Arbitrary, but fixed forever: changing either reshuffles every table of every
// service on upgrade, and any flow whose conntrack entry expires meanwhile moves.
const (
	offsetSeed uint64 = 0x6d6f61742d6f6666
	skipSeed   uint64 = 0x6d6f61742d736b70
)

// permutation returns the start (offset) and stride (skip) of the backend's walk over
// a table of m slots.
func permutation(id, m uint32) (offset, skip uint32) {
	offset = uint32(splitmix64(uint64(id)^offsetSeed) % uint64(m))
	skip = uint32(splitmix64(uint64(id)^skipSeed)%uint64(m-1)) + 1
	return offset, skip
}

// splitmix64 is SplitMix64's output function: a golden-ratio increment and Stafford's
// "mix13" finaliser. It is a bijection on uint64 with full avalanche, so seeds that
// differ in many bits give hashes of one ID that are, for table building, independent.
func splitmix64(x uint64) uint64 {
	x += 0x9e3779b97f4a7c15
	x = (x ^ x>>30) * 0xbf58476d1ce4e5b9
	x = (x ^ x>>27) * 0x94d049bb133111eb
	return x ^ x>>31
}
