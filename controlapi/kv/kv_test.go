package kv

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func stores(t *testing.T) map[string]func() Store {
	return map[string]func() Store{
		"mem": func() Store { return NewMem() },
		"bolt": func() Store {
			b, err := OpenBolt(filepath.Join(t.TempDir(), "state.db"), time.Second)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { b.Close() })
			return b
		},
	}
}

func TestContract(t *testing.T) {
	for name, open := range stores(t) {
		t.Run(name, func(t *testing.T) {
			s := open()
			if err := s.View(func(tx Tx) error {
				if _, err := tx.Get("b", "x"); !errors.Is(err, ErrNotFound) {
					t.Errorf("get in a missing bucket: %v", err)
				}
				if err := tx.Put("b", "x", []byte("1")); !errors.Is(err, ErrReadOnly) {
					t.Errorf("put in a read-only transaction: %v", err)
				}
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			must(t, s.Update(func(tx Tx) error {
				for _, k := range []string{"a/2", "a/1", "b/1", "a/10", "ab"} {
					if err := tx.Put("b", k, []byte("v"+k)); err != nil {
						return err
					}
				}
				v, err := tx.Get("b", "a/1") // reads its own writes
				if err != nil || string(v) != "va/1" {
					t.Errorf("read own write: %q %v", v, err)
				}
				return nil
			}))
			// A failed update changes nothing, sequence numbers included.
			boom := errors.New("boom")
			if err := s.Update(func(tx Tx) error {
				tx.Put("b", "a/1", []byte("changed"))
				tx.Delete("b", "a/2")
				tx.NextSequence("seq")
				return boom
			}); !errors.Is(err, boom) {
				t.Fatalf("update error: %v", err)
			}
			must(t, s.View(func(tx Tx) error {
				if v, _ := tx.Get("b", "a/1"); string(v) != "va/1" {
					t.Errorf("rolled-back put visible: %q", v)
				}
				if _, err := tx.Get("b", "a/2"); err != nil {
					t.Errorf("rolled-back delete visible: %v", err)
				}
				var got []string
				tx.Scan("b", "a/", "", func(k string, _ []byte) bool { got = append(got, k); return true })
				if !slices.Equal(got, []string{"a/1", "a/10", "a/2"}) {
					t.Errorf("scan a/: %v", got)
				}
				got = nil
				tx.Scan("b", "a/", "a/10", func(k string, _ []byte) bool { got = append(got, k); return true })
				if !slices.Equal(got, []string{"a/2"}) {
					t.Errorf("scan a/ after a/10: %v", got)
				}
				got = nil
				tx.Scan("b", "", "", func(k string, _ []byte) bool { got = append(got, k); return len(got) < 2 })
				if !slices.Equal(got, []string{"a/1", "a/10"}) {
					t.Errorf("scan stopped early: %v", got)
				}
				return nil
			}))
			var seqs []uint64
			for range 3 {
				must(t, s.Update(func(tx Tx) error {
					n, err := tx.NextSequence("seq")
					seqs = append(seqs, n)
					return err
				}))
			}
			if !slices.Equal(seqs, []uint64{1, 2, 3}) {
				t.Errorf("sequences %v (the failed update must not have used one)", seqs)
			}
		})
	}
}

func TestBoltPersists(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	b, err := OpenBolt(path, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	must(t, b.Update(func(tx Tx) error { return tx.Put("b", "k", []byte("v")) }))
	if _, err := OpenBolt(path, 100*time.Millisecond); err == nil {
		t.Error("a second opener got the database the first one holds")
	}
	b.Close()
	b, err = OpenBolt(path, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	must(t, b.View(func(tx Tx) error {
		v, err := tx.Get("b", "k")
		if err != nil || string(v) != "v" {
			t.Errorf("after reopen: %q %v", v, err)
		}
		return nil
	}))
}

// TestRandomAgainstMap drives both stores with random operations and compares them
// with a plain map after every transaction, committed or rolled back.
func TestRandomAgainstMap(t *testing.T) {
	for name, open := range stores(t) {
		t.Run(name, func(t *testing.T) {
			s := open()
			ref := map[string]string{}
			r := rand.New(rand.NewPCG(3, 4))
			for round := range 300 {
				next := maps(ref)
				fail := r.IntN(5) == 0
				err := s.Update(func(tx Tx) error {
					for range 1 + r.IntN(6) {
						k := fmt.Sprintf("%c/%d", 'a'+r.IntN(3), r.IntN(20))
						if r.IntN(3) == 0 {
							tx.Delete("b", k)
							delete(next, k)
						} else {
							v := fmt.Sprint(round)
							tx.Put("b", k, []byte(v))
							next[k] = v
						}
					}
					if fail {
						return errors.New("rollback")
					}
					return nil
				})
				if !fail {
					must(t, err)
					ref = next
				}
				must(t, s.View(func(tx Tx) error {
					var got []string
					tx.Scan("b", "", "", func(k string, v []byte) bool { got = append(got, k+"="+string(v)); return true })
					keys := make([]string, 0, len(ref))
					for k := range ref {
						keys = append(keys, k)
					}
					slices.Sort(keys)
					var want []string
					for _, k := range keys {
						want = append(want, k+"="+ref[k])
					}
					if !slices.Equal(got, want) {
						t.Fatalf("round %d: store %s\nmap   %s", round, strings.Join(got, " "), strings.Join(want, " "))
					}
					return nil
				}))
			}
		})
	}
}

func maps(m map[string]string) map[string]string {
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
