package state

import (
	"context"
	"encoding/json"
	"errors"

	"github.com/seed4c/moat/attest/verifier"
	"github.com/seed4c/moat/controlapi/kv"
)

const enrollmentsBucket = "enrollments"

// Enrollments keeps the verifier's enrollment records in the gateway's store (it
// implements verifier.Store), so that a restarted gateway knows its backends' TPMs and
// the TPM counters they last showed.
type Enrollments struct{ KV kv.Store }

// Get implements verifier.Store.
func (e Enrollments) Get(_ context.Context, identity string) (verifier.Record, error) {
	var r verifier.Record
	err := e.KV.View(func(tx kv.Tx) error {
		raw, err := tx.Get(enrollmentsBucket, identity)
		if err != nil {
			return err
		}
		return json.Unmarshal(raw, &r)
	})
	if errors.Is(err, kv.ErrNotFound) {
		return verifier.Record{}, verifier.ErrNotFound
	}
	return r, err
}

// Put implements verifier.Store.
func (e Enrollments) Put(_ context.Context, r verifier.Record) error {
	raw, err := json.Marshal(r)
	if err != nil {
		return err
	}
	return e.KV.Update(func(tx kv.Tx) error { return tx.Put(enrollmentsBucket, r.Identity, raw) })
}

// Delete implements verifier.Store.
func (e Enrollments) Delete(_ context.Context, identity string) error {
	return e.KV.Update(func(tx kv.Tx) error { return tx.Delete(enrollmentsBucket, identity) })
}

// Enrolled reports whether identity has an enrollment record.
func (e Enrollments) Enrolled(identity string) bool {
	_, err := e.Get(context.Background(), identity)
	return err == nil
}

var _ verifier.Store = Enrollments{}
