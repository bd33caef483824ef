package state

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/seed4c/moat/attest"
	"github.com/seed4c/moat/controlapi/kv"
	"github.com/seed4c/moat/tenant"
)

// What the gateway learns and remembers, beside the desired state.

const (
	resultsBucket     = "results"
	standingsBucket   = "standings"
	transitionsBucket = "transitions"
	metaBucket        = "meta"
	idsKey            = "ids"
)

// ResultsKept is how many results of one subject the history keeps.
const ResultsKept = 100

func decodeJSON(raw []byte, v any) error { return json.Unmarshal(raw, v) }

func seqKey(n uint64) string { return fmt.Sprintf("%020d", n) }

// AppendResult records an attestation result in its subject's history, dropping the
// oldest beyond ResultsKept.
func (s *Store) AppendResult(r attest.Result) error {
	return s.SaveResults(nil, []attest.Result{r})
}

func appendResult(tx kv.Tx, r attest.Result) error {
	n, err := tx.NextSequence(resultsBucket)
	if err != nil {
		return err
	}
	raw, err := json.Marshal(ResultRecord{Seq: n, Result: r})
	if err != nil {
		return err
	}
	prefix := r.Subject + "|"
	if err := tx.Put(resultsBucket, prefix+seqKey(n), raw); err != nil {
		return err
	}
	var keys []string
	if err := tx.Scan(resultsBucket, prefix, "", func(k string, _ []byte) bool { keys = append(keys, k); return true }); err != nil {
		return err
	}
	for _, k := range keys[:max(0, len(keys)-ResultsKept)] {
		if err := tx.Delete(resultsBucket, k); err != nil {
			return err
		}
	}
	return nil
}

// SaveResults stores, in one transaction, the latest result of some subjects (what a
// restarted gateway admits them on until they attest again) and results to append to
// their histories.
func (s *Store) SaveResults(latest, history []attest.Result) error {
	return s.SaveOutcome(latest, history, nil)
}

// SaveOutcome stores in one transaction (one commit) what SaveResults stores and
// transitions to append, in order: what the reconciler learnt and did since its last
// commit.
func (s *Store) SaveOutcome(latest, history []attest.Result, transitions []Transition) error {
	return s.kv.Update(func(tx kv.Tx) error {
		for _, t := range transitions {
			if _, err := appendTransition(tx, t); err != nil {
				return err
			}
		}
		for _, r := range latest {
			raw, err := json.Marshal(r)
			if err != nil {
				return err
			}
			if err := tx.Put(standingsBucket, r.Subject, raw); err != nil {
				return err
			}
		}
		for _, r := range history {
			if err := appendResult(tx, r); err != nil {
				return err
			}
		}
		return nil
	})
}

// LoadStandings returns the latest result stored for every subject.
func (s *Store) LoadStandings() (map[string]attest.Result, error) {
	out := map[string]attest.Result{}
	err := s.kv.View(func(tx kv.Tx) error {
		var derr error
		err := tx.Scan(standingsBucket, "", "", func(k string, raw []byte) bool {
			var r attest.Result
			if derr = json.Unmarshal(raw, &r); derr != nil {
				return false
			}
			out[k] = r
			return true
		})
		return errors.Join(err, derr)
	})
	return out, err
}

// ListResults returns a subject's results, oldest first, after seq after.
func (s *Store) ListResults(subject string, after uint64, limit int) ([]ResultRecord, uint64, error) {
	var (
		out  []ResultRecord
		next uint64
	)
	prefix := subject + "|"
	start := ""
	if after > 0 {
		start = prefix + seqKey(after)
	}
	err := s.kv.View(func(tx kv.Tx) error {
		var derr error
		err := tx.Scan(resultsBucket, prefix, start, func(_ string, raw []byte) bool {
			if limit > 0 && len(out) == limit {
				next = out[len(out)-1].Seq
				return false
			}
			var r ResultRecord
			if derr = json.Unmarshal(raw, &r); derr != nil {
				return false
			}
			out = append(out, r)
			return true
		})
		return errors.Join(err, derr)
	})
	return out, next, err
}

// AppendTransition records a backend state transition and returns it with its
// sequence number.
func (s *Store) AppendTransition(t Transition) (Transition, error) {
	err := s.kv.Update(func(tx kv.Tx) error {
		var err error
		t, err = appendTransition(tx, t)
		return err
	})
	return t, err
}

func appendTransition(tx kv.Tx, t Transition) (Transition, error) {
	n, err := tx.NextSequence(transitionsBucket)
	if err != nil {
		return t, err
	}
	t.Seq = n
	raw, err := json.Marshal(t)
	if err != nil {
		return t, err
	}
	return t, tx.Put(transitionsBucket, seqKey(n), raw)
}

// ListTransitions returns transitions after seq after, oldest first; tenantName ""
// means every tenant's.
func (s *Store) ListTransitions(tenantName string, after uint64, limit int) ([]Transition, uint64, error) {
	var (
		out  []Transition
		next uint64
	)
	start := ""
	if after > 0 {
		start = seqKey(after)
	}
	err := s.kv.View(func(tx kv.Tx) error {
		var derr error
		err := tx.Scan(transitionsBucket, "", start, func(_ string, raw []byte) bool {
			var t Transition
			if derr = json.Unmarshal(raw, &t); derr != nil {
				return false
			}
			if tenantName != "" && t.Tenant != tenantName {
				return true
			}
			if limit > 0 && len(out) == limit {
				next = out[len(out)-1].Seq
				return false
			}
			out = append(out, t)
			return true
		})
		return errors.Join(err, derr)
	})
	return out, next, err
}

// LoadIDs returns the ids of the configuration last applied (zero before the first).
func (s *Store) LoadIDs() (tenant.IDs, error) {
	var ids tenant.IDs
	err := s.kv.View(func(tx kv.Tx) error {
		raw, err := tx.Get(metaBucket, idsKey)
		if errors.Is(err, kv.ErrNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		return json.Unmarshal(raw, &ids)
	})
	return ids, err
}

// SaveIDs records the ids of the configuration about to be applied. Ids the store
// already holds cost a read, not a commit: most passes change no id (an admission,
// an eviction), and a commit is fsync'ed.
func (s *Store) SaveIDs(ids tenant.IDs) error {
	raw, err := json.Marshal(ids) // maps marshal in key order: equal ids, equal bytes
	if err != nil {
		return err
	}
	var same bool
	if err := s.kv.View(func(tx kv.Tx) error {
		held, err := tx.Get(metaBucket, idsKey)
		same = err == nil && bytes.Equal(held, raw)
		if errors.Is(err, kv.ErrNotFound) {
			return nil
		}
		return err
	}); err != nil {
		return err
	}
	if same {
		return nil
	}
	return s.kv.Update(func(tx kv.Tx) error { return tx.Put(metaBucket, idsKey, raw) })
}
