package verifier

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/x509"
	"encoding/asn1"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"slices"
	"time"

	"github.com/google/go-tpm/tpm2"

	"github.com/seed4c/moat/attest"
	"github.com/seed4c/moat/attest/tpmwire"
)

// pendingEnrollment is a credential challenge waiting for its activation proof.
type pendingEnrollment struct {
	record  Record
	secret  []byte
	channel channel
	tlsKey  []byte
	expires time.Time
}

// Enroll starts an enrollment: it checks the EK (certificate chain or allow-list) and
// the AK's attributes, and returns a credential only the TPM holding both can
// activate. tlsKey is the DER SubjectPublicKeyInfo of the request's TLS client key;
// the activation must come over the same key.
func (v *Verifier) Enroll(ctx context.Context, req *attest.EnrollRequest, tlsKey []byte) (*attest.EnrollChallenge, error) {
	if err := validIdentity(req.Identity); err != nil {
		return nil, refuse(attest.ReasonMalformed, "enroll: %v", err)
	}
	if len(tlsKey) == 0 {
		return nil, refuse(attest.ReasonChannel, "enroll %s: no TLS client key", req.Identity)
	}
	policy, err := v.policy(req.Identity)
	if err != nil {
		return nil, fmt.Errorf("enroll %s: %w", req.Identity, err)
	}
	ekPub, err := tpmwire.DecodePublic(req.EKPublic, "EK")
	if err != nil {
		return nil, refuse(attest.ReasonMalformed, "enroll %s: %v", req.Identity, err)
	}
	ekHash, spki, err := tpmwire.EKSHA256(req.EKPublic)
	if err != nil {
		return nil, refuse(attest.ReasonMalformed, "enroll %s: %v", req.Identity, err)
	}
	trust, err := v.ekTrust(policy, ekHash, spki, req.EKCertificate)
	if err != nil {
		return nil, fmt.Errorf("enroll %s (EK sha256:%x): %w", req.Identity, ekHash, err)
	}
	if trust < policy.MinTrust {
		return nil, refuse(attest.ReasonEKNotAllowed, "enroll %s: EK trust %s below the policy's minimum %s", req.Identity, trust, policy.MinTrust)
	}
	if prev, err := v.cfg.Store.Get(ctx, req.Identity); err == nil && prev.EKSHA256 != ekHash {
		return nil, refuse(attest.ReasonEKChanged, "enroll %s: enrolled with EK sha256:%x, presented sha256:%x; delete the enrollment to move the identity to another TPM", req.Identity, prev.EKSHA256, ekHash)
	}
	akPub, err := tpmwire.DecodePublic(req.AKPublic, "AK")
	if err != nil {
		return nil, refuse(attest.ReasonMalformed, "enroll %s: %v", req.Identity, err)
	}
	if _, err := tpmwire.AKPublicKey(req.AKPublic); err != nil {
		if errors.Is(err, tpmwire.ErrAKAttributes) {
			return nil, refuse(attest.ReasonAKAttributes, "enroll %s: %v", req.Identity, err)
		}
		return nil, refuse(attest.ReasonMalformed, "enroll %s: %v", req.Identity, err)
	}
	akName, err := tpm2.ObjectName(akPub)
	if err != nil {
		return nil, refuse(attest.ReasonMalformed, "enroll %s: AK name: %v", req.Identity, err)
	}
	kem, err := tpm2.ImportEncapsulationKey(ekPub)
	if err != nil {
		return nil, refuse(attest.ReasonMalformed, "enroll %s: EK cannot make credentials: %v", req.Identity, err)
	}
	secret := make([]byte, 32)
	idBytes := make([]byte, 16)
	if _, err := io.ReadFull(v.cfg.Rand, secret); err != nil {
		return nil, fmt.Errorf("enroll %s: random secret: %w", req.Identity, err)
	}
	if _, err := io.ReadFull(v.cfg.Rand, idBytes); err != nil {
		return nil, fmt.Errorf("enroll %s: random challenge id: %w", req.Identity, err)
	}
	credential, encSecret, err := tpm2.CreateCredential(v.cfg.Rand, kem, akName.Buffer, secret)
	if err != nil {
		return nil, fmt.Errorf("enroll %s: make credential: %w", req.Identity, err)
	}
	now := v.clock.Now()
	id := hex.EncodeToString(idBytes)
	p := &pendingEnrollment{
		record: Record{
			Identity: req.Identity, EKPublic: slices.Clone(req.EKPublic), EKSHA256: ekHash,
			EKCertificate: slices.Clone(req.EKCertificate), AKPublic: slices.Clone(req.AKPublic),
			AKName: slices.Clone(akName.Buffer), TrustLevel: trust,
		},
		secret: secret, channel: channelOf(req.Identity, tlsKey), tlsKey: slices.Clone(tlsKey),
		expires: now.Add(v.cfg.EnrollTTL),
	}
	v.enrollMu.Lock()
	for k, e := range v.pending {
		if !now.Before(e.expires) {
			delete(v.pending, k)
		}
	}
	if len(v.pending) >= v.cfg.MaxPendingEnrollments {
		v.enrollMu.Unlock()
		return nil, refuse(attest.ReasonOverload, "enroll %s: %d enrollments pending", req.Identity, len(v.pending))
	}
	v.pending[id] = p
	v.enrollMu.Unlock()
	v.log.Info("enrollment challenge issued", "subject", req.Identity, "ek_sha256", hex.EncodeToString(ekHash[:]),
		"trust", trust.String(), "ak_name", hex.EncodeToString(akName.Buffer))
	return &attest.EnrollChallenge{Version: attest.ProtocolVersion, ChallengeID: id, Credential: credential, Secret: encSecret, Expires: p.expires}, nil
}

// ekTrust decides how far an EK is trusted: allow-listed by hash, or certified by a
// certificate that chains to the EK roots and certifies this very key.
func (v *Verifier) ekTrust(policy *Policy, ekHash [32]byte, spki, certDER []byte) (attest.TrustLevel, error) {
	if policy.PinEKs && !policy.ekAllowed(ekHash) {
		return attest.TrustNone, refuse(attest.ReasonEKNotAllowed, "policy %s pins the subject's EKs and this one is not among them", policy.Name)
	}
	var certErr error
	if len(certDER) > 0 {
		if certErr = v.verifyEKCertificate(spki, certDER); certErr == nil {
			return attest.TrustCertified, nil
		}
	}
	if policy.ekAllowed(ekHash) {
		return attest.TrustAllowListed, nil
	}
	if certErr != nil {
		return attest.TrustNone, refuse(attest.ReasonEKCertificate, "%v", certErr)
	}
	return attest.TrustNone, refuse(attest.ReasonEKNotAllowed, "EK has no certificate and is not on the policy's allow-list")
}

// Extensions EK certificates mark critical that Go's verifier does not process: the
// subject alternative name carrying the TPM manufacturer, model and version as a
// directoryName (critical when the subject is empty, TCG EK Credential Profile 3.2.9),
// and subject directory attributes (the TPM specification level).
var (
	oidSubjectAltName       = asn1.ObjectIdentifier{2, 5, 29, 17}
	oidSubjectDirAttributes = asn1.ObjectIdentifier{2, 5, 29, 9}
)

func (v *Verifier) verifyEKCertificate(spki, der []byte) error {
	if v.cfg.EKRoots == nil {
		return fmt.Errorf("EK certificate presented but no EK roots configured")
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return fmt.Errorf("parse EK certificate: %w", err)
	}
	if !bytes.Equal(cert.RawSubjectPublicKeyInfo, spki) {
		return fmt.Errorf("EK certificate (subject %q) certifies another key than the EK presented", cert.Subject)
	}
	unhandled := cert.UnhandledCriticalExtensions[:0]
	for _, oid := range cert.UnhandledCriticalExtensions {
		if !oid.Equal(oidSubjectAltName) && !oid.Equal(oidSubjectDirAttributes) {
			unhandled = append(unhandled, oid)
		}
	}
	cert.UnhandledCriticalExtensions = unhandled
	// EK certificates carry the TCG EK EKU (2.23.133.8.1), which Go does not know:
	// hence ExtKeyUsageAny.
	_, err = cert.Verify(x509.VerifyOptions{
		Roots:         v.cfg.EKRoots,
		Intermediates: v.cfg.EKIntermediates,
		CurrentTime:   v.clock.Now(),
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	})
	if err != nil {
		return fmt.Errorf("EK certificate (issuer %q) does not chain to a configured TPM manufacturer CA: %w", cert.Issuer, err)
	}
	return nil
}

// Activate completes an enrollment: the MAC proves the agent's TPM recovered the
// credential secret, so the AK is in the same TPM as the EK. The challenge is single
// use and must come over the TLS key that asked for it.
func (v *Verifier) Activate(ctx context.Context, proof *attest.ActivationProof, tlsKey []byte) (*attest.Enrollment, error) {
	v.enrollMu.Lock()
	p := v.pending[proof.ChallengeID]
	delete(v.pending, proof.ChallengeID)
	v.enrollMu.Unlock()
	now := v.clock.Now()
	switch {
	case p == nil:
		return nil, refuse(attest.ReasonActivation, "unknown or used enrollment challenge %q", proof.ChallengeID)
	case !now.Before(p.expires):
		return nil, refuse(attest.ReasonActivation, "enrollment challenge for %s expired at %s", p.record.Identity, p.expires.Format(time.RFC3339))
	case channelOf(p.record.Identity, tlsKey) != p.channel:
		return nil, refuse(attest.ReasonActivation, "activation for %s over another TLS key than its enrollment", p.record.Identity)
	}
	want := attest.ActivationMAC(p.secret, proof.ChallengeID, p.record.Identity, p.tlsKey)
	if !hmac.Equal(want, proof.MAC) {
		return nil, refuse(attest.ReasonActivation, "activation proof for %s does not match: the AK is not in the TPM that holds the EK", p.record.Identity)
	}
	rec := p.record
	rec.Enrolled = now
	// Same TPM enrolling again (an agent restart): the counters seen so far stay the
	// baseline, or a rollback could be laundered through a re-enrollment.
	if prev, err := v.cfg.Store.Get(ctx, rec.Identity); err == nil && prev.EKSHA256 == rec.EKSHA256 {
		rec.CountersSeen, rec.ResetCount, rec.RestartCount, rec.Clock = prev.CountersSeen, prev.ResetCount, prev.RestartCount, prev.Clock
	}
	if err := v.cfg.Store.Put(ctx, rec); err != nil {
		return nil, fmt.Errorf("activate %s: store enrollment: %w", rec.Identity, err)
	}
	ak, err := tpmwire.AKPublicKey(rec.AKPublic)
	if err != nil {
		return nil, fmt.Errorf("activate %s: %w", rec.Identity, err)
	}
	v.mu.Lock()
	s := v.subjects[rec.Identity]
	if s == nil {
		s = &subject{}
		v.subjects[rec.Identity] = s
	}
	v.mu.Unlock()
	s.mu.Lock()
	s.record, s.ak = rec, ak
	s.mu.Unlock()
	v.log.Info("subject enrolled", "subject", rec.Identity, "trust", rec.TrustLevel.String(),
		"ek_sha256", hex.EncodeToString(rec.EKSHA256[:]))
	return &attest.Enrollment{Version: attest.ProtocolVersion, Identity: rec.Identity, TrustLevel: rec.TrustLevel,
		EKSHA256: slices.Clone(rec.EKSHA256[:]), AKName: slices.Clone(rec.AKName)}, nil
}
