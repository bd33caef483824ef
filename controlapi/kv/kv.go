// Package kv is the control plane's storage boundary: an ordered key-value store with
// serializable transactions, in buckets. The gateway keeps its state in bbolt (Bolt);
// tests use Mem, which has the same contract; several gateways sharing one
// configuration will use etcd behind the same interface.
package kv

import "errors"

// Store is a transactional key-value store.
//
// Contract: Update runs fn in a read-write transaction that is committed only when fn
// returns nil, and is serializable with every other transaction; View runs fn in a
// read-only snapshot. A Tx must not be used after fn returns. Keys within a bucket are
// ordered bytewise. Values passed to Put are copied; values returned by Get and Scan
// are valid only during the transaction.
type Store interface {
	View(fn func(Tx) error) error
	Update(fn func(Tx) error) error
	Close() error
}

// Tx is a transaction on a Store.
type Tx interface {
	// Get returns the value of key, or ErrNotFound.
	Get(bucket, key string) ([]byte, error)
	// Put sets key to value. Read-only transactions return ErrReadOnly.
	Put(bucket, key string, value []byte) error
	// Delete removes key; deleting a missing key is not an error.
	Delete(bucket, key string) error
	// Scan calls fn for each key in bucket that starts with prefix and sorts after
	// after (all keys when after is ""), in order, until fn returns false.
	Scan(bucket, prefix, after string, fn func(key string, value []byte) bool) error
	// NextSequence returns the bucket's next sequence number, starting at 1.
	NextSequence(bucket string) (uint64, error)
}

// Errors of the package.
var (
	ErrNotFound = errors.New("not found")
	ErrReadOnly = errors.New("read-only transaction")
)
