package verifier

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"
	"unicode"

	"github.com/seed4c/moat/attest"
	"github.com/seed4c/moat/attest/tpmwire"
)

// Defaults for Config's zero values.
const (
	// DefaultNonceTTL: long enough for a slow hardware TPM to quote (hundreds of
	// milliseconds) and a round trip, short enough that a nonce cannot wait for a
	// better moment.
	DefaultNonceTTL = 10 * time.Second
	// DefaultResultTTL: an affirming result lives three default agent intervals (2 s),
	// so one lost round does not evict a healthy backend, and a stopped or compromised
	// agent is evicted within 6 s.
	DefaultResultTTL = 6 * time.Second
	// DefaultEnrollTTL bounds how long a credential challenge may wait for activation.
	DefaultEnrollTTL = time.Minute
	// DefaultPersistInterval bounds how often an advancing TPM clock is written to the
	// store (boot counters are written at every change).
	DefaultPersistInterval = 30 * time.Second
	// DefaultMaxNonces bounds outstanding nonces (and their tombstones) in memory.
	DefaultMaxNonces = 1 << 16
	// DefaultMaxNoncesPerChannel bounds outstanding nonces per subject and TLS key. It is
	// per TLS key so that a stranger asking nonces in a subject's name cannot starve the
	// subject's own agent.
	DefaultMaxNoncesPerChannel = 8
	// DefaultMaxPendingEnrollments bounds outstanding credential challenges.
	DefaultMaxPendingEnrollments = 4096
	// maxIdentityLen bounds subject identities.
	maxIdentityLen = 253
)

// Config configures a Verifier. Only Policies is required.
type Config struct {
	// Policies gives each subject's appraisal policy; a subject without one cannot
	// enroll or attest.
	Policies PolicySource
	// Store keeps enrollment records; default a new MemStore.
	Store Store
	// EKRoots are the TPM manufacturers' CAs that EK certificates must chain to;
	// EKIntermediates holds intermediate CAs that TPMs do not ship. Nil roots: no EK
	// certificate is accepted, only allow-listed EKs.
	EKRoots         *x509.CertPool
	EKIntermediates *x509.CertPool
	// Subscriber receives every result (see Subscriber); may be nil.
	Subscriber Subscriber
	// Timings; zero means the Default… constant.
	NonceTTL        time.Duration
	ResultTTL       time.Duration
	EnrollTTL       time.Duration
	PersistInterval time.Duration
	// Bounds; zero means the Default… constant.
	MaxNonces             int
	MaxNoncesPerChannel   int
	MaxPendingEnrollments int
	// Clock defaults to the system clock.
	Clock Clock
	// Rand defaults to crypto/rand.
	Rand io.Reader
	// Logger defaults to slog.Default().
	Logger *slog.Logger
}

// Subscriber receives the verifier's results: every appraisal's result (affirming,
// contraindicated, refused) and every expiry, as the verifier issues them.
//
// Contract: Notify is called from one goroutine, in issue order, never concurrently
// with itself; it must not block for long (queue work elsewhere), or it delays every
// later result. The verifier queues affirming, contraindicated and expired results
// without bound (they decide admission and must never be lost) and drops refused
// results when the queue is long (they change nothing; the drop is counted in Stats).
type Subscriber interface {
	Notify(attest.Result)
}

// SubscriberFunc adapts a function to a Subscriber.
type SubscriberFunc func(attest.Result)

// Notify implements Subscriber.
func (f SubscriberFunc) Notify(r attest.Result) { f(r) }

// Subscribers fans results out to several subscribers, in order (the gateway's
// reconciler, which admits backends, and the overlay, which configures peers, hear of
// every result from the same goroutine, one after the other). Each must honour the
// Subscriber contract: the slowest delays the others.
type Subscribers []Subscriber

// Notify implements Subscriber.
func (s Subscribers) Notify(r attest.Result) {
	for _, sub := range s {
		sub.Notify(r)
	}
}

// Error is a refused request. Code is one of attest's Reason… codes.
type Error struct {
	Code string
	Err  error
}

func (e *Error) Error() string { return e.Code + ": " + e.Err.Error() }
func (e *Error) Unwrap() error { return e.Err }

// ReasonCode implements the interface attest.ReasonCode looks for.
func (e *Error) ReasonCode() string { return e.Code }

func refuse(code, format string, args ...any) *Error {
	return &Error{Code: code, Err: fmt.Errorf(format, args...)}
}

// Verifier enrolls subjects and appraises their evidence. Its methods are safe for
// concurrent use; appraisals of one subject are serialized (the TPM counters must be
// checked in order), those of different subjects run in parallel.
type Verifier struct {
	cfg    Config
	log    *slog.Logger
	clock  Clock
	nonces *nonceBook
	pub    *publisher

	enrollMu sync.Mutex
	pending  map[string]*pendingEnrollment

	mu       sync.RWMutex
	subjects map[string]*subject
	closed   bool

	stats stats
}

// New returns a Verifier; Close it to stop its timers and its publisher.
func New(cfg Config) (*Verifier, error) {
	if cfg.Policies == nil {
		return nil, errors.New("new verifier: no PolicySource")
	}
	if cfg.Store == nil {
		cfg.Store = NewMemStore()
	}
	setDefault(&cfg.NonceTTL, DefaultNonceTTL)
	setDefault(&cfg.ResultTTL, DefaultResultTTL)
	setDefault(&cfg.EnrollTTL, DefaultEnrollTTL)
	setDefault(&cfg.PersistInterval, DefaultPersistInterval)
	setDefault(&cfg.MaxNonces, DefaultMaxNonces)
	setDefault(&cfg.MaxNoncesPerChannel, DefaultMaxNoncesPerChannel)
	setDefault(&cfg.MaxPendingEnrollments, DefaultMaxPendingEnrollments)
	if cfg.Clock == nil {
		cfg.Clock = realClock{}
	}
	if cfg.Rand == nil {
		cfg.Rand = rand.Reader
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	v := &Verifier{
		cfg:      cfg,
		log:      cfg.Logger,
		clock:    cfg.Clock,
		pending:  map[string]*pendingEnrollment{},
		subjects: map[string]*subject{},
	}
	v.nonces = newNonceBook(cfg.NonceTTL, cfg.MaxNonces, cfg.MaxNoncesPerChannel)
	v.pub = newPublisher(cfg.Subscriber, &v.stats)
	return v, nil
}

func setDefault[T comparable](p *T, def T) {
	var zero T
	if *p == zero {
		*p = def
	}
}

// Close stops expiry timers and delivers the results already issued. Results issued
// after Close are not delivered.
func (v *Verifier) Close() error {
	v.mu.Lock()
	if v.closed {
		v.mu.Unlock()
		return nil
	}
	v.closed = true
	subjects := v.subjects
	v.mu.Unlock()
	for _, s := range subjects {
		s.mu.Lock()
		if s.timer != nil {
			s.timer.Stop()
		}
		s.mu.Unlock()
	}
	v.pub.close()
	return nil
}

// Standing returns the last result issued about a subject.
func (v *Verifier) Standing(identity string) (attest.Result, bool) {
	v.mu.RLock()
	s := v.subjects[identity]
	v.mu.RUnlock()
	if s == nil {
		return attest.Result{}, false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.last, s.hasResult
}

// Stats counts what the verifier did since New.
type Stats struct {
	Affirming, Contraindicated, Refused, Expired uint64
	// DroppedRefused counts refused results not delivered because the subscriber was
	// behind.
	DroppedRefused uint64
}

type stats struct {
	mu sync.Mutex
	s  Stats
}

func (s *stats) count(r attest.Result) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch r.Status {
	case attest.StatusAffirming:
		s.s.Affirming++
	case attest.StatusContraindicated:
		s.s.Contraindicated++
	case attest.StatusRefused:
		s.s.Refused++
	case attest.StatusExpired:
		s.s.Expired++
	}
}

// Stats returns the counters.
func (v *Verifier) Stats() Stats {
	v.stats.mu.Lock()
	defer v.stats.mu.Unlock()
	return v.stats.s
}

// validIdentity refuses identities that would be ambiguous in logs and keys: empty,
// too long, or with control or space characters.
func validIdentity(id string) error {
	if id == "" || len(id) > maxIdentityLen {
		return fmt.Errorf("identity length %d outside 1..%d", len(id), maxIdentityLen)
	}
	for _, r := range id {
		if !unicode.IsPrint(r) || unicode.IsSpace(r) {
			return fmt.Errorf("identity %q has a space or non-printable character", id)
		}
	}
	return nil
}

// subject is the verifier's live state for one enrolled identity.
type subject struct {
	mu     sync.Mutex
	record Record
	ak     *rsa.PublicKey

	last      attest.Result
	hasResult bool
	timer     Timer
	// generation increments with every result, so an expiry timer that fires after a
	// newer result was issued knows it is stale.
	generation  uint64
	persistedAt time.Time
}

// loadSubject returns the live state of an enrolled identity, reading the store the
// first time.
func (v *Verifier) loadSubject(ctx context.Context, identity string) (*subject, error) {
	v.mu.RLock()
	s := v.subjects[identity]
	v.mu.RUnlock()
	if s != nil {
		return s, nil
	}
	rec, err := v.cfg.Store.Get(ctx, identity)
	if err != nil {
		if errors.Is(err, ErrNotFound) {
			return nil, refuse(attest.ReasonNotEnrolled, "subject %q is not enrolled", identity)
		}
		return nil, fmt.Errorf("load enrollment of %q: %w", identity, err)
	}
	ak, err := tpmwire.AKPublicKey(rec.AKPublic)
	if err != nil {
		return nil, fmt.Errorf("stored AK of %q: %w", identity, err)
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if s := v.subjects[identity]; s != nil {
		return s, nil
	}
	s = &subject{record: rec, ak: ak}
	v.subjects[identity] = s
	return s, nil
}

// keySHA256 is how results name a TLS key.
func keySHA256(spki []byte) []byte {
	d := sha256.Sum256(spki)
	return d[:]
}
