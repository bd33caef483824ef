package attest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"
)

// ProtocolVersion is the version of the agent–verifier messages below. A message with
// another version is refused rather than guessed at.
const ProtocolVersion = 1

// MaxMessageSize bounds every agent–verifier message; larger bodies are refused before
// they are parsed.
const MaxMessageSize = 1 << 20

// Paths of the verifier's agent-facing endpoints, relative to where the handler is
// mounted. Every request is a POST of one JSON message over mutual TLS.
const (
	PathEnroll    = "/v1/enroll"
	PathActivate  = "/v1/activate"
	PathChallenge = "/v1/challenge"
	PathEvidence  = "/v1/evidence"
)

// EnrollRequest starts enrollment: the agent presents its TPM's EK and AK.
type EnrollRequest struct {
	Version  int    `json:"version"`
	Identity string `json:"identity"`
	// EKPublic is the EK's TPMT_PUBLIC.
	EKPublic []byte `json:"ek_public"`
	// EKCertificate is the EK certificate (DER), absent for TPMs without one.
	EKCertificate []byte `json:"ek_certificate,omitempty"`
	// AKPublic is the AK's TPMT_PUBLIC.
	AKPublic []byte `json:"ak_public"`
}

// EnrollChallenge is the verifier's MakeCredential output: a secret only the TPM that
// holds both the EK and the AK can recover.
type EnrollChallenge struct {
	Version     int       `json:"version"`
	ChallengeID string    `json:"challenge_id"`
	Credential  []byte    `json:"credential"` // TPM2B_ID_OBJECT contents
	Secret      []byte    `json:"secret"`     // TPM2B_ENCRYPTED_SECRET contents
	Expires     time.Time `json:"expires"`
}

// ActivationProof answers an EnrollChallenge with ActivationMAC over the recovered
// secret; the secret itself never travels back.
type ActivationProof struct {
	Version     int    `json:"version"`
	ChallengeID string `json:"challenge_id"`
	MAC         []byte `json:"mac"`
}

// Enrollment confirms that the subject is enrolled.
type Enrollment struct {
	Version    int        `json:"version"`
	Identity   string     `json:"identity"`
	TrustLevel TrustLevel `json:"trust_level"`
	// EKSHA256 is the SHA-256 of the EK's SubjectPublicKeyInfo (the allow-list form).
	EKSHA256 []byte `json:"ek_sha256"`
	// AKName is the AK's TPM name (nameAlg ‖ H(TPMT_PUBLIC)).
	AKName []byte `json:"ak_name"`
}

// ChallengeRequest asks for a nonce for one appraisal round.
type ChallengeRequest struct {
	Version  int    `json:"version"`
	Identity string `json:"identity"`
}

// Challenge is a single-use nonce bound to one subject and one TLS client key.
type Challenge struct {
	Version int       `json:"version"`
	Nonce   []byte    `json:"nonce"`
	Expires time.Time `json:"expires"`
	// PCRs is the SHA-256 PCR selection the quote must cover, ascending.
	PCRs []int `json:"pcrs"`
}

// Evidence is one appraisal round's answer.
type Evidence struct {
	Version  int    `json:"version"`
	Identity string `json:"identity"`
	Nonce    []byte `json:"nonce"`
	// WireGuardKey is the agent's Curve25519 public key (32 bytes).
	WireGuardKey []byte `json:"wireguard_key"`
	// OverlayKey is the SE's P-256 key-agreement public key (SEC 1 uncompressed, 65
	// bytes), absent when the agent binds none (QualifyingDataOverlay).
	OverlayKey []byte `json:"overlay_key,omitempty"`
	// Quote is the TPMS_ATTEST the AK signed; Signature its TPMT_SIGNATURE.
	Quote     []byte `json:"quote"`
	Signature []byte `json:"signature"`
	// PCRs are the SHA-256 values of the quoted PCRs.
	PCRs []PCRValue `json:"pcrs"`
	// Log is the measurement log (package attest/mlog's binary encoding).
	Log []byte `json:"log"`
}

// Problem is an RFC 9457 problem document; the verifier answers every refused request
// with one.
type Problem struct {
	Type    string   `json:"type"`
	Title   string   `json:"title"`
	Status  int      `json:"status"`
	Detail  string   `json:"detail,omitempty"`
	Reasons []string `json:"reasons,omitempty"`
}

// ProblemTypePrefix prefixes the Type of every Problem; the reason code follows it.
const ProblemTypePrefix = "urn:moat:attest:"

// ErrMalformed marks a message that does not decode.
var ErrMalformed = errors.New("malformed message")

// versioned is implemented by every message so the decoder can check the version.
type versioned interface {
	version() int
}

func (m *EnrollRequest) version() int    { return m.Version }
func (m *EnrollChallenge) version() int  { return m.Version }
func (m *ActivationProof) version() int  { return m.Version }
func (m *Enrollment) version() int       { return m.Version }
func (m *ChallengeRequest) version() int { return m.Version }
func (m *Challenge) version() int        { return m.Version }
func (m *Evidence) version() int         { return m.Version }

// Message is any agent–verifier message.
type Message interface {
	*EnrollRequest | *EnrollChallenge | *ActivationProof | *Enrollment |
		*ChallengeRequest | *Challenge | *Evidence
	versioned
}

// Decode reads exactly one message from r, strictly: at most MaxMessageSize bytes, no
// unknown fields, no trailing data, and the expected ProtocolVersion. Errors wrap
// ErrMalformed.
func Decode[M Message](r io.Reader, m M) error {
	body, err := io.ReadAll(io.LimitReader(r, MaxMessageSize+1))
	if err != nil {
		return fmt.Errorf("%w: read: %v", ErrMalformed, err)
	}
	return DecodeBytes(body, m)
}

// DecodeBytes is Decode over a byte slice.
func DecodeBytes[M Message](body []byte, m M) error {
	if len(body) > MaxMessageSize {
		return fmt.Errorf("%w: larger than %d bytes", ErrMalformed, MaxMessageSize)
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(m); err != nil {
		return fmt.Errorf("%w: %T: %v", ErrMalformed, m, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return fmt.Errorf("%w: %T: trailing data after the message", ErrMalformed, m)
	}
	if v := m.version(); v != ProtocolVersion {
		return fmt.Errorf("%w: %T: protocol version %d, want %d", ErrMalformed, m, v, ProtocolVersion)
	}
	return nil
}

// RemoteError is a request the verifier refused, as the agent sees it.
type RemoteError struct {
	Problem Problem
}

func (e *RemoteError) Error() string {
	msg := fmt.Sprintf("verifier refused (%d %s): %s", e.Problem.Status, e.Problem.Title, e.Problem.Detail)
	return msg
}

// ReasonCode is the reason code the problem's type carries.
func (e *RemoteError) ReasonCode() string {
	if len(e.Problem.Type) > len(ProblemTypePrefix) && e.Problem.Type[:len(ProblemTypePrefix)] == ProblemTypePrefix {
		return e.Problem.Type[len(ProblemTypePrefix):]
	}
	return ""
}

// ReasonCode returns the attest Reason… code an error carries (a verifier refusal,
// local or remote), or "" when it carries none.
func ReasonCode(err error) string {
	var coded interface{ ReasonCode() string }
	if errors.As(err, &coded) {
		return coded.ReasonCode()
	}
	return ""
}
