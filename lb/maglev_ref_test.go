package lb

import (
	"cmp"
	"math/big"
	"slices"
	"sort"
)

// This file holds slow, obviously-correct formulations of what BuildTable computes. The
// randomized tests require BuildTable to equal them slot for slot.

// sortedByID returns a copy of backends sorted by ID: both references, like BuildTable,
// give turns in ID order.
func sortedByID(backends []Backend) []Backend {
	bs := slices.Clone(backends)
	slices.SortFunc(bs, func(a, b Backend) int { return cmp.Compare(a.ID, b.ID) })
	return bs
}

// paperPopulate is the unweighted population of the Maglev paper (Eisenbud et al., NSDI
// 2016, §3.4, Pseudocode 1) transcribed literally: a materialised N×M permutation table,
// next[] counters and entry[] initialised to -1, one turn per backend per round.
func paperPopulate(backends []Backend, m uint32) []uint32 {
	bs := sortedByID(backends)
	n := len(bs)
	M := int(m)
	perm := make([][]int, n)
	for i, b := range bs {
		offset, skip := permutation(b.ID, m)
		perm[i] = make([]int, M)
		for j := range M {
			perm[i][j] = (int(offset) + j*int(skip)) % M
		}
	}
	next := make([]int, n)
	entry := make([]int, M)
	for j := range entry {
		entry[j] = -1
	}
	filled := 0
	for {
		for i := range n {
			c := perm[i][next[i]]
			for entry[c] >= 0 {
				next[i]++
				c = perm[i][next[i]]
			}
			entry[c] = i
			next[i]++
			filled++
			if filled == M {
				table := make([]uint32, M)
				for j, i := range entry {
					table[j] = bs[i].ID
				}
				return table
			}
		}
	}
}

// exactShare returns m·w/W, a backend's share of the table in slots, as an exact
// rational.
func exactShare(b Backend, backends []Backend, m uint32) *big.Rat {
	var total int64
	for _, o := range backends {
		total += int64(o.Weight)
	}
	return big.NewRat(int64(m)*int64(b.Weight), total)
}

// referenceQuotas apportions m slots by weight as BuildTable documents it, in the most
// literal way: pin to one slot every backend whose share is below one slot, re-apportion
// the rest among the others, and repeat until nothing changes; then largest remainder.
func referenceQuotas(backends []Backend, m uint32) map[uint32]uint32 {
	quota := make(map[uint32]uint32, len(backends))
	pinned := make(map[uint32]bool)
	var rest []Backend
	for {
		rest = rest[:0]
		for _, b := range backends {
			if !pinned[b.ID] {
				rest = append(rest, b)
			}
		}
		budget := m - uint32(len(pinned))
		changed := false
		for _, b := range rest {
			if exactShare(b, rest, budget).Cmp(big.NewRat(1, 1)) < 0 {
				pinned[b.ID] = true
				quota[b.ID] = 1
				changed = true
			}
		}
		if !changed {
			break
		}
	}
	budget := m - uint32(len(pinned))
	remainder := make(map[uint32]*big.Rat)
	given := uint32(0)
	for _, b := range rest {
		share := exactShare(b, rest, budget)
		floor := new(big.Int).Quo(share.Num(), share.Denom())
		quota[b.ID] = uint32(floor.Uint64())
		remainder[b.ID] = new(big.Rat).Sub(share, new(big.Rat).SetInt(floor))
		given += quota[b.ID]
	}
	sort.Slice(rest, func(i, j int) bool {
		if c := remainder[rest[i].ID].Cmp(remainder[rest[j].ID]); c != 0 {
			return c > 0
		}
		return rest[i].ID < rest[j].ID
	})
	for i := range budget - given {
		quota[rest[i].ID]++
	}
	return quota
}

// referenceBuild is the weighted population written as Katran's MaglevHashV2 loop, over
// quotas instead of raw weights: rounds 0 … qmax-1, backends in ID order, a backend
// taking a turn in round r when its next turn j satisfies floor(j·qmax/quota) == r; a
// turn walks (offset + next·skip) mod m to the first free slot.
func referenceBuild(backends []Backend, m uint32) []uint32 {
	bs := sortedByID(backends)
	quota := referenceQuotas(bs, m)
	qmax := uint64(0)
	for _, q := range quota {
		qmax = max(qmax, uint64(q))
	}
	entry := make([]int, m)
	for j := range entry {
		entry[j] = -1
	}
	taken := make([]uint64, len(bs))
	next := make([]uint64, len(bs))
	for r := range qmax {
		for i, b := range bs {
			q := uint64(quota[b.ID])
			if taken[i] == q || taken[i]*qmax/q != r {
				continue
			}
			offset, skip := permutation(b.ID, m)
			c := (uint64(offset) + next[i]*uint64(skip)) % uint64(m)
			for entry[c] >= 0 {
				next[i]++
				c = (uint64(offset) + next[i]*uint64(skip)) % uint64(m)
			}
			entry[c] = i
			next[i]++
			taken[i]++
		}
	}
	table := make([]uint32, m)
	for j, i := range entry {
		table[j] = bs[i].ID // panics on -1: the references must fill every slot too
	}
	return table
}
