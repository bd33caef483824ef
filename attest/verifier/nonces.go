package verifier

import (
	"crypto/sha256"
	"sync"
	"time"

	"github.com/seed4c/moat/attest"
)

// nonceLen is the nonce size: 256 bits, unguessable and collision-free.
const nonceLen = 32

// nonceBook issues and consumes single-use nonces. A nonce is bound to the subject and
// the TLS client key it was issued to, and usable once, before it expires. Consumed
// and expired nonces stay as tombstones for another lifetime so that a refusal can say
// "replayed" or "expired" rather than only "unknown".
type nonceBook struct {
	mu         sync.Mutex
	ttl        time.Duration
	max        int
	maxChannel int

	entries map[[nonceLen]byte]*nonceEntry
	// order is the issue order; with one TTL for all it is also expiry order, so
	// sweeping pops from the front.
	order      []*nonceEntry
	perChannel map[channel]int
}

// channel is a subject reached over one TLS key.
type channel struct {
	subject string
	tlsKey  [32]byte
}

type nonceEntry struct {
	nonce    [nonceLen]byte
	channel  channel
	issued   time.Time
	consumed bool
}

func newNonceBook(ttl time.Duration, max, maxChannel int) *nonceBook {
	return &nonceBook{ttl: ttl, max: max, maxChannel: maxChannel,
		entries: map[[nonceLen]byte]*nonceEntry{}, perChannel: map[channel]int{}}
}

// sweep forgets tombstones older than two lifetimes. Callers hold b.mu.
func (b *nonceBook) sweep(now time.Time) {
	n := 0
	for _, e := range b.order {
		if now.Sub(e.issued) < 2*b.ttl {
			break
		}
		delete(b.entries, e.nonce)
		if !e.consumed {
			b.release(e.channel)
		}
		n++
	}
	b.order = b.order[n:]
}

func (b *nonceBook) release(c channel) {
	if b.perChannel[c]--; b.perChannel[c] <= 0 {
		delete(b.perChannel, c)
	}
}

func (b *nonceBook) issue(now time.Time, nonce [nonceLen]byte, c channel) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.sweep(now)
	if len(b.entries) >= b.max {
		return refuse(attest.ReasonOverload, "%d nonces outstanding", len(b.entries))
	}
	if b.perChannel[c] >= b.maxChannel {
		return refuse(attest.ReasonOverload, "%d nonces outstanding for %q on this TLS key", b.perChannel[c], c.subject)
	}
	if _, dup := b.entries[nonce]; dup {
		// Only a broken random source gets here.
		return refuse(attest.ReasonOverload, "nonce collision")
	}
	e := &nonceEntry{nonce: nonce, channel: c, issued: now}
	b.entries[nonce] = e
	b.order = append(b.order, e)
	b.perChannel[c]++
	return nil
}

// consume marks a nonce used and checks it was issued for this subject and TLS key
// and is still fresh. Every presentation consumes the nonce, even a refused one, so a
// nonce is never checked twice.
func (b *nonceBook) consume(now time.Time, nonce []byte, c channel) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.sweep(now)
	if len(nonce) != nonceLen {
		return refuse(attest.ReasonMalformed, "nonce is %d bytes, want %d", len(nonce), nonceLen)
	}
	e := b.entries[[nonceLen]byte(nonce)]
	switch {
	case e == nil:
		return refuse(attest.ReasonNonceUnknown, "nonce was not issued by this verifier, or long ago")
	case e.consumed:
		return refuse(attest.ReasonNonceReplayed, "nonce was already used (issued %s)", e.issued.Format(time.RFC3339Nano))
	}
	e.consumed = true
	b.release(e.channel)
	switch {
	case now.Sub(e.issued) >= b.ttl:
		return refuse(attest.ReasonNonceExpired, "nonce issued %s ago, lifetime %s", now.Sub(e.issued), b.ttl)
	case e.channel.subject != c.subject:
		return refuse(attest.ReasonNonceSubject, "nonce was issued for %q, evidence is for %q", e.channel.subject, c.subject)
	case e.channel.tlsKey != c.tlsKey:
		return refuse(attest.ReasonNonceChannel, "nonce was issued to another TLS client key")
	}
	return nil
}

func channelOf(subject string, tlsKey []byte) channel {
	return channel{subject: subject, tlsKey: sha256.Sum256(tlsKey)}
}
