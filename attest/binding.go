package attest

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"hash"
)

// Domain-separation labels: a digest computed for one purpose can never be presented
// as one computed for another.
const (
	qualifyingDataLabel = "moat attest v1 qualifying data"
	activationLabel     = "moat attest v1 activation"
)

// QualifyingData is what the agent asks the TPM to sign into the quote and what the
// verifier recomputes, for a subject without an overlay key: QualifyingDataOverlay with
// an empty overlay key.
func QualifyingData(nonce []byte, identity string, wireGuardKey, tlsKey []byte) []byte {
	return QualifyingDataOverlay(nonce, identity, wireGuardKey, tlsKey, nil)
}

// QualifyingDataOverlay is
//
//	SHA-256(label ‖ nonce ‖ identity ‖ wireGuardKey ‖ tlsKey ‖ overlayKey)
//
// every field preceded by its length as a 32-bit big-endian integer, so no field's
// bytes can be moved into a neighbour (identity "ab" with key "c…" never collides with
// identity "a" with key "bc…"); the overlay key field is always present, empty when the
// subject has none. tlsKey is the DER SubjectPublicKeyInfo of the TLS client key that
// carries the evidence: a relay that terminates TLS with its own key cannot present the
// quote as its own. overlayKey is the SE's P-256 key-agreement public key (SEC 1
// uncompressed point), from which the overlay derives each peer pair's pre-shared key
// (dataplane/overlay): a peer uses only the one the subject's own quote vouched for.
func QualifyingDataOverlay(nonce []byte, identity string, wireGuardKey, tlsKey, overlayKey []byte) []byte {
	h := sha256.New()
	writeField(h, []byte(qualifyingDataLabel))
	writeField(h, nonce)
	writeField(h, []byte(identity))
	writeField(h, wireGuardKey)
	writeField(h, tlsKey)
	writeField(h, overlayKey)
	return h.Sum(nil)
}

// ActivationMAC proves that the agent recovered the credential secret, without sending
// it: HMAC-SHA256(secret, label ‖ challengeID ‖ identity ‖ tlsKey), length-prefixed as
// in QualifyingData. It binds the activation to the TLS key that asked for the
// challenge.
func ActivationMAC(secret []byte, challengeID, identity string, tlsKey []byte) []byte {
	m := hmac.New(sha256.New, secret)
	writeField(m, []byte(activationLabel))
	writeField(m, []byte(challengeID))
	writeField(m, []byte(identity))
	writeField(m, tlsKey)
	return m.Sum(nil)
}

func writeField(h hash.Hash, b []byte) {
	var n [4]byte
	binary.BigEndian.PutUint32(n[:], uint32(len(b)))
	h.Write(n[:])
	h.Write(b)
}
