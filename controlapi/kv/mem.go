package kv

import (
	"bytes"
	"slices"
	"strings"
	"sync"
)

// Mem is a Store in memory with Bolt's contract: transactions are serialised by one
// lock (writers) and see a snapshot (readers); an Update whose fn fails changes
// nothing.
type Mem struct {
	mu      sync.RWMutex
	buckets map[string]map[string][]byte
	seqs    map[string]uint64
}

// NewMem returns an empty Mem.
func NewMem() *Mem {
	return &Mem{buckets: map[string]map[string][]byte{}, seqs: map[string]uint64{}}
}

// View implements Store.
func (m *Mem) View(fn func(Tx) error) error {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return fn(&memTx{m: m})
}

// Update implements Store: writes go to an overlay applied only on success.
func (m *Mem) Update(fn func(Tx) error) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	tx := &memTx{m: m, writable: true, puts: map[string]map[string][]byte{}, dels: map[string]map[string]bool{}, seqs: map[string]uint64{}}
	if err := fn(tx); err != nil {
		return err
	}
	for b, kvs := range tx.puts {
		if m.buckets[b] == nil {
			m.buckets[b] = map[string][]byte{}
		}
		for k, v := range kvs {
			m.buckets[b][k] = v
		}
	}
	for b, keys := range tx.dels {
		for k := range keys {
			delete(m.buckets[b], k)
		}
	}
	for b, s := range tx.seqs {
		m.seqs[b] = s
	}
	return nil
}

// Close implements Store.
func (m *Mem) Close() error { return nil }

type memTx struct {
	m        *Mem
	writable bool
	puts     map[string]map[string][]byte
	dels     map[string]map[string]bool
	seqs     map[string]uint64
}

func (t *memTx) Get(bucket, key string) ([]byte, error) {
	if t.writable {
		if v, ok := t.puts[bucket][key]; ok {
			return v, nil
		}
		if t.dels[bucket][key] {
			return nil, ErrNotFound
		}
	}
	v, ok := t.m.buckets[bucket][key]
	if !ok {
		return nil, ErrNotFound
	}
	return v, nil
}

func (t *memTx) Put(bucket, key string, value []byte) error {
	if !t.writable {
		return ErrReadOnly
	}
	if t.puts[bucket] == nil {
		t.puts[bucket] = map[string][]byte{}
	}
	t.puts[bucket][key] = bytes.Clone(value)
	delete(t.dels[bucket], key)
	return nil
}

func (t *memTx) Delete(bucket, key string) error {
	if !t.writable {
		return ErrReadOnly
	}
	if t.dels[bucket] == nil {
		t.dels[bucket] = map[string]bool{}
	}
	t.dels[bucket][key] = true
	delete(t.puts[bucket], key)
	return nil
}

func (t *memTx) Scan(bucket, prefix, after string, fn func(string, []byte) bool) error {
	var keys []string
	seen := map[string]bool{}
	add := func(k string) {
		if !seen[k] && strings.HasPrefix(k, prefix) && k > after {
			seen[k] = true
			keys = append(keys, k)
		}
	}
	for k := range t.m.buckets[bucket] {
		if !t.writable || !t.dels[bucket][k] {
			add(k)
		}
	}
	if t.writable {
		for k := range t.puts[bucket] {
			add(k)
		}
	}
	slices.Sort(keys)
	for _, k := range keys {
		v, _ := t.Get(bucket, k)
		if !fn(k, v) {
			return nil
		}
	}
	return nil
}

func (t *memTx) NextSequence(bucket string) (uint64, error) {
	if !t.writable {
		return 0, ErrReadOnly
	}
	s, ok := t.seqs[bucket]
	if !ok {
		s = t.m.seqs[bucket]
	}
	s++
	t.seqs[bucket] = s
	return s, nil
}
