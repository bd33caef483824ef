package agent

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"slices"

	"github.com/seed4c/moat/attest"
	"github.com/seed4c/moat/attest/mlog"
	"github.com/seed4c/moat/attest/tpmwire"
)

// VerifierClient is the agent's view of a verifier: the four agent-facing endpoints
// over one channel. HTTPClient speaks HTTPS to a remote verifier; the verifier
// package's LocalClient calls one in process.
//
// Contract: TLSKey returns the DER SubjectPublicKeyInfo of the channel's TLS client key,
// the key the verifier will see and compare with the quote; it never changes for the
// client's lifetime. A refusal by the verifier is an error for which attest.ReasonCode
// returns the reason code; other errors are transport failures, worth a retry.
type VerifierClient interface {
	TLSKey() []byte
	Enroll(context.Context, *attest.EnrollRequest) (*attest.EnrollChallenge, error)
	Activate(context.Context, *attest.ActivationProof) (*attest.Enrollment, error)
	Challenge(context.Context, *attest.ChallengeRequest) (*attest.Challenge, error)
	Submit(context.Context, *attest.Evidence) (*attest.Result, error)
}

// Enroll enrolls the SE's EK and AK under identity: it sends them, activates the
// verifier's credential in the TPM (possible only where EK and AK live together) and
// returns the MAC that proves it. ekCert overrides the EK certificate from the TPM's NV
// when non-nil.
func Enroll(ctx context.Context, se attest.SE, client VerifierClient, identity string, ekCert []byte) (*attest.Enrollment, error) {
	ek, err := se.EndorsementKey()
	if err != nil {
		return nil, fmt.Errorf("enroll %s: read EK: %w", identity, err)
	}
	if ekCert != nil {
		ek.Certificate = ekCert
	}
	ak, err := se.AttestationKey()
	if err != nil {
		return nil, fmt.Errorf("enroll %s: load AK: %w", identity, err)
	}
	ch, err := client.Enroll(ctx, &attest.EnrollRequest{
		Version: attest.ProtocolVersion, Identity: identity,
		EKPublic: ek.Public, EKCertificate: ek.Certificate, AKPublic: ak.Public,
	})
	if err != nil {
		return nil, fmt.Errorf("enroll %s: %w", identity, err)
	}
	secret, err := se.ActivateCredential(ch.Credential, ch.Secret)
	if err != nil {
		return nil, fmt.Errorf("enroll %s: activate credential: %w", identity, err)
	}
	e, err := client.Activate(ctx, &attest.ActivationProof{
		Version: attest.ProtocolVersion, ChallengeID: ch.ChallengeID,
		MAC: attest.ActivationMAC(secret, ch.ChallengeID, identity, client.TLSKey()),
	})
	if err != nil {
		return nil, fmt.Errorf("enroll %s: activation: %w", identity, err)
	}
	return e, nil
}

// ErrPCRRace means the PCRs changed between the quote and the read that reports them
// (something extended a quoted PCR meanwhile); the round should be retried.
var ErrPCRRace = errors.New("PCR values changed while quoting")

// Collect answers a challenge: it quotes the requested PCRs with qualifying data
// binding the nonce, identity, WireGuard key and TLS key, reads the PCR values and
// packs them with the measurement log. It checks its own evidence first (the PCR
// values must hash to the quoted digest), so a PCR extended mid-round yields
// ErrPCRRace rather than evidence the verifier would refuse.
func Collect(se attest.SE, ch *attest.Challenge, identity string, wireGuardKey, tlsKey []byte, log *mlog.Log) (*attest.Evidence, error) {
	return CollectOverlay(se, ch, identity, wireGuardKey, tlsKey, nil, log)
}

// CollectOverlay is Collect that also binds overlayKey, the SE's P-256 key-agreement
// public key (attest.QualifyingDataOverlay); nil binds none.
func CollectOverlay(se attest.SE, ch *attest.Challenge, identity string, wireGuardKey, tlsKey, overlayKey []byte, log *mlog.Log) (*attest.Evidence, error) {
	if len(ch.PCRs) == 0 {
		return nil, errors.New("collect evidence: challenge selects no PCR")
	}
	pcrs := slices.Sorted(slices.Values(ch.PCRs))
	q, err := se.Quote(pcrs, attest.QualifyingDataOverlay(ch.Nonce, identity, wireGuardKey, tlsKey, overlayKey))
	if err != nil {
		return nil, fmt.Errorf("collect evidence: %w", err)
	}
	values, err := se.ReadPCRs(pcrs)
	if err != nil {
		return nil, fmt.Errorf("collect evidence: %w", err)
	}
	a, err := tpmwire.Parse(q.Attest)
	if err != nil {
		return nil, fmt.Errorf("collect evidence: own quote does not parse: %w", err)
	}
	h := sha256.New()
	for _, v := range values {
		h.Write(v.Digest)
	}
	if !bytes.Equal(h.Sum(nil), a.PCRDigest) {
		return nil, ErrPCRRace
	}
	encoded, err := log.MarshalBinary()
	if err != nil {
		return nil, fmt.Errorf("collect evidence: %w", err)
	}
	return &attest.Evidence{
		Version: attest.ProtocolVersion, Identity: identity, Nonce: ch.Nonce,
		WireGuardKey: wireGuardKey, OverlayKey: overlayKey, Quote: q.Attest, Signature: q.Signature, PCRs: values, Log: encoded,
	}, nil
}
