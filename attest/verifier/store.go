package verifier

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/seed4c/moat/attest"
)

// Record is what the verifier remembers about an enrolled subject.
type Record struct {
	Identity string
	// EKPublic is the EK's TPMT_PUBLIC; EKSHA256 the SHA-256 of its
	// SubjectPublicKeyInfo; EKCertificate its certificate (DER) when it had one.
	EKPublic      []byte
	EKSHA256      [32]byte
	EKCertificate []byte
	// AKPublic is the AK's TPMT_PUBLIC and AKName its TPM name.
	AKPublic   []byte
	AKName     []byte
	TrustLevel attest.TrustLevel
	Enrolled   time.Time

	// The highest TPM counters seen in authenticated evidence. They persist so that a
	// TPM state rolled back while the verifier restarted is still caught.
	CountersSeen bool
	ResetCount   uint32
	RestartCount uint32
	Clock        uint64
}

// ErrNotFound is returned by Store.Get for an identity without a record.
var ErrNotFound = errors.New("no enrollment record")

// Store keeps enrollment records. The gateway puts bbolt behind it; MemStore is the
// in-memory implementation.
//
// Contract: methods are safe for concurrent use; Get returns a copy the caller may
// keep (no aliasing with the store's state) or an error wrapping ErrNotFound; Put
// replaces the whole record atomically and is durable when it returns (a verifier
// restart then sees it); Delete of an absent identity is not an error. The verifier
// calls Put on enrollment and when TPM counters advance (not on every appraisal: at
// most once per PersistInterval per subject, plus at every reboot).
type Store interface {
	Get(ctx context.Context, identity string) (Record, error)
	Put(ctx context.Context, r Record) error
	Delete(ctx context.Context, identity string) error
}

// MemStore is a Store in memory: records are lost when the process exits.
type MemStore struct {
	mu      sync.Mutex
	records map[string]Record
}

// NewMemStore returns an empty MemStore.
func NewMemStore() *MemStore { return &MemStore{records: map[string]Record{}} }

func cloneRecord(r Record) Record {
	r.EKPublic = append([]byte(nil), r.EKPublic...)
	r.EKCertificate = append([]byte(nil), r.EKCertificate...)
	r.AKPublic = append([]byte(nil), r.AKPublic...)
	r.AKName = append([]byte(nil), r.AKName...)
	return r
}

// Get implements Store.
func (s *MemStore) Get(_ context.Context, identity string) (Record, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.records[identity]
	if !ok {
		return Record{}, fmt.Errorf("get %q: %w", identity, ErrNotFound)
	}
	return cloneRecord(r), nil
}

// Put implements Store.
func (s *MemStore) Put(_ context.Context, r Record) error {
	if r.Identity == "" {
		return errors.New("put record: empty identity")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.records[r.Identity] = cloneRecord(r)
	return nil
}

// Delete implements Store.
func (s *MemStore) Delete(_ context.Context, identity string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.records, identity)
	return nil
}
