package attest

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"
)

// Status is an attestation result's verdict, after the IETF RATS attestation results
// vocabulary (draft-ietf-rats-ar4si).
type Status string

const (
	// StatusAffirming: fresh, authenticated evidence matched the subject's policy. The
	// subject may be admitted until the result's Expires.
	StatusAffirming Status = "affirming"
	// StatusContraindicated: authenticated evidence (signed by the subject's enrolled AK
	// over a fresh nonce) shows a state the policy refuses, or TPM counters that went
	// backwards. The subject must be evicted at once.
	StatusContraindicated Status = "contraindicated"
	// StatusExpired: the subject's last affirming result expired before fresh evidence
	// renewed it. The subject must be evicted at once.
	StatusExpired Status = "expired"
	// StatusRefused: a submission could not be authenticated as the subject's (garbage,
	// unknown or replayed nonce, wrong signing key, keys that are not the quoted ones).
	// It says nothing about the subject's state and must not change its standing;
	// otherwise anyone who can reach the verifier could evict any backend. If the real
	// subject cannot get through, its last result expires and that evicts it.
	StatusRefused Status = "refused"
)

// TrustLevel says how strongly the subject's TPM is known to be a TPM. A mission's
// "minimum backend trust" compares against it.
type TrustLevel int

const (
	// TrustNone: nothing is vouched for (refused, expired and contraindicated results).
	TrustNone TrustLevel = iota
	// TrustAllowListed: the EK is on the operator's allow-list by hash, without a
	// manufacturer certificate (swtpm, the simulator, TPMs without EK certificates).
	TrustAllowListed
	// TrustCertified: the EK certificate chains to a configured manufacturer CA.
	TrustCertified
)

var trustNames = []string{"none", "allow-listed", "certified"}

func (l TrustLevel) String() string {
	if l >= 0 && int(l) < len(trustNames) {
		return trustNames[l]
	}
	return fmt.Sprintf("TrustLevel(%d)", int(l))
}

// MarshalText encodes the level by name, so results read well in JSON and logs.
func (l TrustLevel) MarshalText() ([]byte, error) {
	if l < 0 || int(l) >= len(trustNames) {
		return nil, fmt.Errorf("marshal trust level: unknown level %d", int(l))
	}
	return []byte(trustNames[l]), nil
}

// UnmarshalText decodes a level name.
func (l *TrustLevel) UnmarshalText(b []byte) error {
	i := slices.Index(trustNames, string(b))
	if i < 0 {
		return fmt.Errorf("unmarshal trust level: unknown level %q", b)
	}
	*l = TrustLevel(i)
	return nil
}

// Result is an attestation result about one subject (a backend identity).
type Result struct {
	Subject    string     `json:"subject"`
	Status     Status     `json:"status"`
	TrustLevel TrustLevel `json:"trust_level"`
	// Reasons say why a result is not affirming; each starts with a stable code (the
	// Reason… constants) followed by ": " and details.
	Reasons []string  `json:"reasons,omitempty"`
	Issued  time.Time `json:"issued"`
	// Expires is when an affirming result stops admitting the subject. For any other
	// status it equals Issued.
	Expires time.Time `json:"expires"`

	// The claims below come from the appraised evidence; they are set on affirming
	// and contraindicated results only.

	// Policy names the policy the evidence was appraised against.
	Policy string `json:"policy,omitempty"`
	// WireGuardKey is the Curve25519 public key bound into the quote: the only key the
	// overlay may configure for this subject.
	WireGuardKey []byte `json:"wireguard_key,omitempty"`
	// OverlayKey is the SE's P-256 key-agreement public key bound into the quote (SEC 1
	// uncompressed), empty when the evidence bound none: the only key the overlay may
	// derive this subject's pre-shared keys with.
	OverlayKey []byte `json:"overlay_key,omitempty"`
	// TLSKeySHA256 is the SHA-256 of the TLS client key's SubjectPublicKeyInfo that
	// carried the evidence and was bound into the quote.
	TLSKeySHA256 []byte `json:"tls_key_sha256,omitempty"`
	// ResetCount and RestartCount are the TPM's boot counters in the quote.
	ResetCount   uint32 `json:"reset_count,omitempty"`
	RestartCount uint32 `json:"restart_count,omitempty"`
	// Rebooted is set on the first result after the TPM reported a new boot.
	Rebooted bool `json:"rebooted,omitempty"`
}

// Admits reports whether the result lets the subject be admitted at time now.
func (r Result) Admits(now time.Time) bool {
	return r.Status == StatusAffirming && now.Before(r.Expires)
}

// Evicts reports whether the result requires evicting the subject. Refused results
// never do (see StatusRefused).
func (r Result) Evicts() bool {
	return r.Status == StatusContraindicated || r.Status == StatusExpired
}

// HasReason reports whether one of the result's reasons carries the given code.
func (r Result) HasReason(code string) bool {
	for _, reason := range r.Reasons {
		if reason == code || strings.HasPrefix(reason, code+":") {
			return true
		}
	}
	return false
}

// String renders the result for logs.
func (r Result) String() string {
	b, err := json.Marshal(r)
	if err != nil {
		return fmt.Sprintf("result for %s: %s", r.Subject, r.Status)
	}
	return string(b)
}

// Reason codes. They are stable: audit queries and alerts may match on them.
const (
	ReasonMalformed          = "malformed"           // evidence or a field in it does not decode
	ReasonNotEnrolled        = "not-enrolled"        // no enrollment record for the subject
	ReasonNonceUnknown       = "nonce-unknown"       // the verifier never issued this nonce (or forgot it long ago)
	ReasonNonceExpired       = "nonce-expired"       // the nonce outlived its lifetime
	ReasonNonceReplayed      = "nonce-replayed"      // the nonce was already used once
	ReasonNonceSubject       = "nonce-subject"       // the nonce was issued for another subject
	ReasonNonceChannel       = "nonce-channel"       // the nonce was issued to another TLS key
	ReasonSignature          = "signature"           // the quote is not signed by the subject's AK
	ReasonNotAQuote          = "attest-type"         // the signed structure is not a TPM-generated quote
	ReasonBinding            = "binding"             // qualifying data is not H(nonce, identity, WireGuard key, TLS key, overlay key)
	ReasonPCRBank            = "pcr-bank"            // PCRs not from the SHA-256 bank alone
	ReasonPCRSelection       = "pcr-selection"       // the quoted PCR set is not the policy's
	ReasonPCRDigest          = "pcr-digest"          // reported PCR values do not hash to the quoted digest
	ReasonLogReplay          = "log-replay"          // the measurement log does not replay to the quoted PCR
	ReasonReference          = "reference-value"     // a measurement is not among the policy's reference values
	ReasonMissingMeasurement = "missing-measurement" // a file the policy requires was never measured
	ReasonGoldenPCR          = "golden-pcr"          // a PCR with a golden value has another value
	ReasonResetCount         = "reset-count"         // TPM resetCount went backwards (state rollback)
	ReasonRestartCount       = "restart-count"       // TPM restartCount went backwards within one boot
	ReasonClock              = "clock"               // TPM clock went backwards
	ReasonExpired            = "expired"             // no fresh evidence before the last result expired
	ReasonEKCertificate      = "ek-certificate"      // EK certificate missing, invalid or not for this EK
	ReasonEKNotAllowed       = "ek-not-allowed"      // EK neither certified nor allow-listed
	ReasonEKChanged          = "ek-changed"          // the identity is enrolled with another EK
	ReasonAKAttributes       = "ak-attributes"       // the AK is not a restricted, fixed, TPM-generated signing key
	ReasonActivation         = "activation"          // the credential was not activated: AK and EK not in one TPM
	ReasonPolicy             = "policy"              // no policy for the subject, or the policy is unusable
	ReasonChannel            = "channel"             // no TLS client key on the connection
	ReasonOverload           = "overload"            // too many outstanding nonces or challenges
)
