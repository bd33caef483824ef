package overlay

import (
	"bytes"
	"crypto/ecdh"
	"crypto/hkdf"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"time"

	"github.com/seed4c/moat/attest"
)

// pskLabel separates the pre-shared key derivation from every other use of the SEs'
// shared secret.
const pskLabel = "moat overlay v1 pre-shared key"

// Party is one side of a peer pair as the PSK derivation sees it: its WireGuard public
// key and its SE's P-256 key-agreement public key (SEC 1 uncompressed), both taken from
// its attestation.
type Party struct {
	WireGuard Key
	ECDH      []byte
}

// Epoch numbers the PSK periods: floor(unix time / period). Both ends of a pair
// compute it from their own clock; see Node for what a skew costs.
func Epoch(now time.Time, period time.Duration) uint64 {
	return uint64(now.Unix()) / uint64(period/time.Second)
}

// EpochStart is when epoch e starts.
func EpochStart(e uint64, period time.Duration) time.Time {
	return time.Unix(int64(e*uint64(period/time.Second)), 0)
}

// DerivePSK computes a peer pair's pre-shared key for an epoch:
//
//	Z   = x(d_self · Q_peer), computed inside self's SE (TPM2_ECDH_ZGen); the peer's SE
//	      computes the same Z as x(d_peer · Q_self)
//	PSK = HKDF-SHA256(ikm = Z, salt = label,
//	                  info = len‖epoch ‖ len‖lowWG ‖ len‖highWG ‖ len‖lowECDH ‖ len‖highECDH)
//
// where low/high order the two parties by WireGuard key, so both ends feed the same
// info. An attacker needs one of the two TPMs' private keys to compute it; a captured
// WireGuard static key alone does not suffice to impersonate a peer, and a PSK learnt
// once is worthless an epoch later.
func DerivePSK(se attest.SE, self, peer Party, epoch uint64) (Key, error) {
	q, err := ecdh.P256().NewPublicKey(peer.ECDH)
	if err != nil {
		return Key{}, fmt.Errorf("derive the pre-shared key: peer's overlay key: %w", err)
	}
	z, err := se.ECDH(q)
	if err != nil {
		return Key{}, fmt.Errorf("derive the pre-shared key: ECDH in the SE: %w", err)
	}
	lo, hi := self, peer
	if bytes.Compare(lo.WireGuard[:], hi.WireGuard[:]) > 0 {
		lo, hi = hi, lo
	}
	var info []byte
	field := func(b []byte) {
		info = binary.BigEndian.AppendUint32(info, uint32(len(b)))
		info = append(info, b...)
	}
	field(binary.BigEndian.AppendUint64(nil, epoch))
	field(lo.WireGuard[:])
	field(hi.WireGuard[:])
	field(lo.ECDH)
	field(hi.ECDH)
	out, err := hkdf.Key(sha256.New, z, []byte(pskLabel), string(info), 32)
	if err != nil {
		return Key{}, fmt.Errorf("derive the pre-shared key: %w", err)
	}
	return ParseKey(out)
}
