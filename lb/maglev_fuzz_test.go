package lb

import (
	"encoding/binary"
	"errors"
	"slices"
	"testing"
)

// decodeBackends reads 8 bytes a backend: ID then weight, little-endian.
func decodeBackends(data []byte) []Backend {
	bs := make([]Backend, 0, len(data)/8)
	for ; len(data) >= 8; data = data[8:] {
		bs = append(bs, Backend{ID: binary.LittleEndian.Uint32(data), Weight: binary.LittleEndian.Uint32(data[4:])})
	}
	return bs
}

func encodeBackends(bs ...Backend) []byte {
	var data []byte
	for _, b := range bs {
		data = binary.LittleEndian.AppendUint32(data, b.ID)
		data = binary.LittleEndian.AppendUint32(data, b.Weight)
	}
	return data
}

// refusals lists, independently of BuildTable's own checks, every reason it must refuse
// the build for; it must refuse with one of them, and build when there is none.
func refusals(bs []Backend, m uint32) []error {
	var reasons []error
	if len(bs) == 0 {
		reasons = append(reasons, ErrNoBackends)
	}
	if !trialDivision(m) {
		reasons = append(reasons, ErrTableSizeNotPrime)
	}
	if m > MaxTableSize {
		reasons = append(reasons, ErrTableTooLarge)
	}
	if uint64(m) < MinSlotsPerBackend*uint64(len(bs)) {
		reasons = append(reasons, ErrTableTooSmall)
	}
	seen := make(map[uint32]bool)
	for _, b := range bs {
		if b.Weight == 0 {
			reasons = append(reasons, ErrZeroWeight)
		}
		if seen[b.ID] {
			reasons = append(reasons, ErrDuplicateID)
		}
		seen[b.ID] = true
	}
	return reasons
}

// FuzzBuildTable builds tables from arbitrary backend sets and sizes. When primeSize is
// set the size is rounded up to a prime no larger than MaxTableSize, so that most inputs
// get past the size checks. A refusal must have a reason; a table must satisfy every
// documented bound, not depend on input order and, when small enough to afford it,
// equal the reference build.
func FuzzBuildTable(f *testing.F) {
	f.Add(DefaultTableSize, false, encodeBackends(Backend{1, 1}, Backend{2, 1}, Backend{3, 1}))
	f.Add(uint32(1000), true, encodeBackends(Backend{0, 1}, Backend{0xffffffff, 0xffffffff}, Backend{7, 3}))
	f.Add(uint32(131), false, encodeBackends(Backend{5, 1}, Backend{5, 2}))
	f.Add(uint32(131), false, encodeBackends(Backend{5, 0}, Backend{6, 2}))
	f.Add(uint32(127), false, encodeBackends(Backend{5, 1}, Backend{6, 2}))
	f.Add(uint32(65536), false, encodeBackends(Backend{5, 1}))
	f.Add(MaxTableSize+2, false, encodeBackends(Backend{5, 1}))
	f.Add(uint32(4000), true, []byte{})
	f.Add(uint32(5000), true, encodeBackends(
		Backend{1, 1}, Backend{2, 1}, Backend{3, 1 << 31}, Backend{4, 2}, Backend{5, 1 << 20}))

	f.Fuzz(func(t *testing.T, size uint32, primeSize bool, data []byte) {
		m := size
		if primeSize {
			m = NextPrime(size % (MaxTableSize + 1))
		}
		bs := decodeBackends(data)
		reasons := refusals(bs, m)
		table, err := BuildTable(bs, m)
		if err != nil {
			if !slices.ContainsFunc(reasons, func(r error) bool { return errors.Is(err, r) }) {
				t.Fatalf("BuildTable(%v, %d) refused with %v; the reasons to refuse are %v", bs, m, err, reasons)
			}
			return
		}
		if len(reasons) > 0 {
			t.Fatalf("BuildTable(%v, %d) built a table despite %v", bs, m, reasons)
		}
		if uint32(len(table)) != m {
			t.Fatalf("table of %d slots, want %d", len(table), m)
		}
		known := make(map[uint32]bool)
		for _, b := range bs {
			known[b.ID] = true
		}
		for s, id := range table {
			if !known[id] {
				t.Fatalf("slot %d holds %d, which is not a backend", s, id)
			}
		}
		shares(t, bs, m, table) // every backend has a slot, and its count is within bounds

		reversed := slices.Clone(bs)
		slices.Reverse(reversed)
		if again := mustBuild(t, reversed, m); !slices.Equal(again, table) {
			t.Fatalf("reversed input gives another table: %s", firstDifference(again, table))
		}
		if m <= 20000 {
			if want := referenceBuild(bs, m); !slices.Equal(table, want) {
				t.Fatalf("table differs from the reference: %s", firstDifference(table, want))
			}
		}
	})
}
