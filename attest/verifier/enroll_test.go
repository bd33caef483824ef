package verifier_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"math/big"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"

	"github.com/seed4c/moat/attest"
	"github.com/seed4c/moat/attest/agent"
	"github.com/seed4c/moat/attest/internal/tpmtmpl"
	"github.com/seed4c/moat/attest/tpm"
	"github.com/seed4c/moat/attest/tpmwire"
	"github.com/seed4c/moat/attest/verifier"
)

// testCA is a TPM manufacturer's CA, played by the test.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

func newCA(t *testing.T, name string) *testCA {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Unix(1_600_000_000, 0), NotAfter: time.Unix(2_000_000_000, 0),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &testCA{cert: cert, key: key}
}

func (ca *testCA) pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.cert)
	return p
}

// issueEK issues an EK certificate the way TPM vendors do: empty subject, the TPM's
// manufacturer, model and version in a critical subjectAltName directoryName (which
// Go's verifier does not process), and the TCG EK certificate EKU.
func (ca *testCA) issueEK(t *testing.T, ek crypto.PublicKey) []byte {
	t.Helper()
	tcgAttr := func(oid asn1.ObjectIdentifier, v string) []pkix.AttributeTypeAndValue {
		return []pkix.AttributeTypeAndValue{{Type: oid, Value: v}}
	}
	dirName, err := asn1.Marshal(pkix.RDNSequence{
		tcgAttr(asn1.ObjectIdentifier{2, 23, 133, 2, 1}, "id:4D4F4154"), // tpmManufacturer
		tcgAttr(asn1.ObjectIdentifier{2, 23, 133, 2, 2}, "moat-sim"),    // tpmModel
		tcgAttr(asn1.ObjectIdentifier{2, 23, 133, 2, 3}, "id:00010002"), // tpmVersion
	})
	if err != nil {
		t.Fatal(err)
	}
	san, err := asn1.Marshal([]asn1.RawValue{{Class: asn1.ClassContextSpecific, Tag: 4, IsCompound: true, Bytes: dirName}})
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		NotBefore:    time.Unix(1_600_000_000, 0), NotAfter: time.Unix(1_900_000_000, 0),
		KeyUsage:           x509.KeyUsageKeyAgreement,
		UnknownExtKeyUsage: []asn1.ObjectIdentifier{{2, 23, 133, 8, 1}},
		ExtraExtensions:    []pkix.Extension{{Id: asn1.ObjectIdentifier{2, 5, 29, 17}, Critical: true, Value: san}},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, ek, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func ekPublicKey(t *testing.T, se attest.SE) crypto.PublicKey {
	t.Helper()
	ek, err := se.EndorsementKey()
	if err != nil {
		t.Fatal(err)
	}
	pub, err := tpmwire.DecodePublic(ek.Public, "EK")
	if err != nil {
		t.Fatal(err)
	}
	key, err := tpmwire.EKPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return key
}

func openSimulator(t *testing.T) *tpm.SE {
	t.Helper()
	se, err := tpm.OpenSimulator(tpm.EKECC)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { se.Close() })
	return se
}

func TestGoodPathSimulator(t *testing.T) {
	r := newRig(t, verifier.Config{})
	h := newHost(t, "web-1", openSimulator(t))
	r.add(t, h)
	for i := 0; i < 3; i++ {
		mustAffirm(t)(h.attest(t, r.v))
		r.clock.Advance(2 * time.Second)
	}
}

// The EK certificate is read from the TPM's NV, where a manufacturer put it, and
// verified against the manufacturer's CA: the result is "certified".
func TestGoodPathEKCertificateFromNV(t *testing.T) {
	ca := newCA(t, "TPM Manufacturer Root")
	r := newRig(t, verifier.Config{EKRoots: ca.pool()})
	se := openSimulator(t)
	if err := se.WriteEKCertificate(ca.issueEK(t, ekPublicKey(t, se))); err != nil {
		t.Fatal(err)
	}
	h := newHost(t, "web-1", se)
	p := h.policy(t)
	p.AllowedEKs, p.MinTrust = nil, attest.TrustCertified
	r.pol[h.id] = p
	h.enroll(t, r.v)
	res := mustAffirm(t)(h.attest(t, r.v))
	if res.TrustLevel != attest.TrustCertified {
		t.Fatalf("trust %s, want certified", res.TrustLevel)
	}
}

func TestEKCertificateFromUnknownCARefused(t *testing.T) {
	known, rogue := newCA(t, "TPM Manufacturer Root"), newCA(t, "Rogue CA")
	r := newRig(t, verifier.Config{EKRoots: known.pool()})
	se := newFake(t)
	se.SetEKCertificate(rogue.issueEK(t, se.EKPublicKey()))
	h := newHost(t, "web-1", se)
	p := h.policy(t)
	p.AllowedEKs = nil
	mustRefuseEnrollment(t, r, h, p, attest.ReasonEKCertificate)
}

// A genuine certificate of another TPM's EK does not vouch for this EK.
func TestEKCertificateForAnotherKeyRefused(t *testing.T) {
	ca := newCA(t, "TPM Manufacturer Root")
	r := newRig(t, verifier.Config{EKRoots: ca.pool()})
	genuine := newFake(t)
	se := newFake(t)
	se.SetEKCertificate(ca.issueEK(t, genuine.EKPublicKey()))
	h := newHost(t, "web-1", se)
	p := h.policy(t)
	p.AllowedEKs = nil
	mustRefuseEnrollment(t, r, h, p, attest.ReasonEKCertificate)
}

func TestEKWithoutCertificateNotAllowListedRefused(t *testing.T) {
	r := newRig(t, verifier.Config{})
	h := newHost(t, "web-1", newFake(t))
	p := h.policy(t)
	p.AllowedEKs = nil
	mustRefuseEnrollment(t, r, h, p, attest.ReasonEKNotAllowed)
}

// mustRefuseEnrollment enrolls h under policy p, checks the refusal's reason code, and
// that the refused subject cannot get a challenge.
func mustRefuseEnrollment(t *testing.T, r *rig, h *host, p *verifier.Policy, code string) {
	t.Helper()
	r.pol[h.id] = p
	_, err := agent.Enroll(context.Background(), h.se, h.client(r.v), h.id, nil)
	if attest.ReasonCode(err) != code {
		t.Fatalf("enrollment: err = %v, want %s", err, code)
	}
	if _, err := r.v.Challenge(context.Background(), &attest.ChallengeRequest{Version: 1, Identity: h.id}, h.tls); attest.ReasonCode(err) != attest.ReasonNotEnrolled {
		t.Fatalf("refused subject got a challenge: %v", err)
	}
}

// With pinned EKs, even a genuine, certified TPM cannot claim a backend identity it
// was not registered with.
func TestPinnedEKRefusesOtherCertifiedTPM(t *testing.T) {
	ca := newCA(t, "TPM Manufacturer Root")
	r := newRig(t, verifier.Config{EKRoots: ca.pool()})
	registered := newFake(t)
	squatter := newFake(t)
	squatter.SetEKCertificate(ca.issueEK(t, squatter.EKPublicKey()))
	h := newHost(t, "web-1", squatter)
	p := h.policy(t)
	p.AllowedEKs, p.PinEKs = [][32]byte{newHost(t, "web-1", registered).ekHash(t)}, true
	mustRefuseEnrollment(t, r, h, p, attest.ReasonEKNotAllowed)
}

func TestMinimumTrustRefusesAllowListedEK(t *testing.T) {
	r := newRig(t, verifier.Config{})
	h := newHost(t, "web-1", newFake(t))
	p := h.policy(t)
	p.MinTrust = attest.TrustCertified
	mustRefuseEnrollment(t, r, h, p, attest.ReasonEKNotAllowed)
}

// An identity, once enrolled, stays with its TPM: another TPM cannot take it over.
func TestEnrolledIdentityCannotMoveToAnotherEK(t *testing.T) {
	r := newRig(t, verifier.Config{})
	h := newHost(t, "web-1", newFake(t))
	r.add(t, h)
	thief := newHost(t, "web-1", newFake(t))
	r.pol[h.id].AllowedEKs = append(r.pol[h.id].AllowedEKs, thief.ekHash(t))
	_, err := agent.Enroll(context.Background(), thief.se, thief.client(r.v), thief.id, nil)
	if attest.ReasonCode(err) != attest.ReasonEKChanged {
		t.Fatalf("identity moved to another EK: %v", err)
	}
}

// The AK is enrolled with the EK of one TPM but lives in another (an attacker pairs a
// genuine EK with a key it controls): the credential, encrypted to the EK and bound to
// the AK's name, cannot be activated, and a guessed proof is refused.
func TestAKFromDifferentTPMThanEKRefused(t *testing.T) {
	r := newRig(t, verifier.Config{})
	se := openSimulator(t)
	genuineEK, err := se.EndorsementKey()
	if err != nil {
		t.Fatal(err)
	}
	h := newHost(t, "web-1", se)
	r.pol[h.id] = h.policy(t) // allow-lists the genuine EK
	if err := se.ReplaceTPM(); err != nil {
		t.Fatal(err)
	}
	otherAK, err := se.AttestationKey()
	if err != nil {
		t.Fatal(err)
	}
	ch, err := r.v.Enroll(context.Background(), &attest.EnrollRequest{Version: 1, Identity: h.id, EKPublic: genuineEK.Public, AKPublic: otherAK.Public}, h.tls)
	if err != nil {
		t.Fatalf("enroll: %v", err)
	}
	if secret, err := se.ActivateCredential(ch.Credential, ch.Secret); err == nil {
		t.Fatalf("a TPM without the enrolled EK activated the credential (%x)", secret)
	}
	_, err = r.v.Activate(context.Background(), &attest.ActivationProof{Version: 1, ChallengeID: ch.ChallengeID,
		MAC: attest.ActivationMAC(randomBytes(t, 32), ch.ChallengeID, h.id, h.tls)}, h.tls)
	if attest.ReasonCode(err) != attest.ReasonActivation {
		t.Fatalf("guessed activation proof: err = %v", err)
	}
	if _, err := r.v.Challenge(context.Background(), &attest.ChallengeRequest{Version: 1, Identity: h.id}, h.tls); attest.ReasonCode(err) != attest.ReasonNotEnrolled {
		t.Fatalf("subject enrolled despite failed activation: %v", err)
	}
}

func TestActivationIsSingleUseAndBoundToTLSKey(t *testing.T) {
	r := newRig(t, verifier.Config{})
	h := newHost(t, "web-1", newFake(t))
	r.pol[h.id] = h.policy(t)
	ek, _ := h.se.EndorsementKey()
	ak, _ := h.se.AttestationKey()
	ch, err := r.v.Enroll(context.Background(), &attest.EnrollRequest{Version: 1, Identity: h.id, EKPublic: ek.Public, AKPublic: ak.Public}, h.tls)
	if err != nil {
		t.Fatal(err)
	}
	secret, err := h.se.ActivateCredential(ch.Credential, ch.Secret)
	if err != nil {
		t.Fatal(err)
	}
	proof := &attest.ActivationProof{Version: 1, ChallengeID: ch.ChallengeID, MAC: attest.ActivationMAC(secret, ch.ChallengeID, h.id, h.tls)}
	if _, err := r.v.Activate(context.Background(), proof, newTLSKey(t)); attest.ReasonCode(err) != attest.ReasonActivation {
		t.Fatalf("activation over another TLS key: %v", err)
	}
	// The failed attempt consumed the challenge: the proof is now worthless.
	if _, err := r.v.Activate(context.Background(), proof, h.tls); attest.ReasonCode(err) != attest.ReasonActivation {
		t.Fatalf("challenge reused: %v", err)
	}
}

// AKs that could sign something the TPM did not generate, or that could have left the
// TPM, are refused, whatever else is right.
func TestAKWithWrongAttributesRefused(t *testing.T) {
	r := newRig(t, verifier.Config{})
	h := newHost(t, "web-1", newFake(t))
	r.pol[h.id] = h.policy(t)
	ek, _ := h.se.EndorsementKey()
	ak, _ := h.se.AttestationKey()
	for name, flip := range map[string]func(a *tpm2.TPMAObject){
		"unrestricted":          func(a *tpm2.TPMAObject) { a.Restricted = false },
		"not fixedTPM":          func(a *tpm2.TPMAObject) { a.FixedTPM = false },
		"not fixedParent":       func(a *tpm2.TPMAObject) { a.FixedParent = false },
		"imported (no sDO)":     func(a *tpm2.TPMAObject) { a.SensitiveDataOrigin = false },
		"decryption key":        func(a *tpm2.TPMAObject) { a.Decrypt, a.SignEncrypt = true, false },
		"sign and decrypt both": func(a *tpm2.TPMAObject) { a.Decrypt = true },
	} {
		pub, err := tpm2.Unmarshal[tpm2.TPMTPublic](ak.Public)
		if err != nil {
			t.Fatal(err)
		}
		flip(&pub.ObjectAttributes)
		_, err = r.v.Enroll(context.Background(), &attest.EnrollRequest{Version: 1, Identity: h.id, EKPublic: ek.Public, AKPublic: tpm2.Marshal(*pub)}, h.tls)
		if attest.ReasonCode(err) != attest.ReasonAKAttributes {
			t.Errorf("%s AK: err = %v, want %s", name, err, attest.ReasonAKAttributes)
		}
	}
}

// The real attack behind the attribute check: an unrestricted signing key created in
// the genuine TPM, beside the genuine EK, would pass activation and could then sign
// any forged TPMS_ATTEST. Only the attribute check stops it.
func TestUnrestrictedKeyInGenuineTPMRefused(t *testing.T) {
	r := newRig(t, verifier.Config{})
	se := openSimulator(t)
	h := newHost(t, "web-1", se)
	r.pol[h.id] = h.policy(t)
	tmpl := tpmtmpl.AK
	tmpl.ObjectAttributes.Restricted = false
	created, err := tpm2.CreatePrimary{PrimaryHandle: tpm2.TPMRHEndorsement, InPublic: tpm2.New2B(tmpl)}.Execute(se.Transport())
	if err != nil {
		t.Fatal(err)
	}
	defer tpm2.FlushContext{FlushHandle: created.ObjectHandle}.Execute(se.Transport())
	pub, err := created.OutPublic.Contents()
	if err != nil {
		t.Fatal(err)
	}
	ek, _ := se.EndorsementKey()
	_, err = r.v.Enroll(context.Background(), &attest.EnrollRequest{Version: 1, Identity: h.id, EKPublic: ek.Public, AKPublic: tpm2.Marshal(*pub)}, h.tls)
	if attest.ReasonCode(err) != attest.ReasonAKAttributes {
		t.Fatalf("unrestricted TPM key enrolled as AK: %v", err)
	}
}

// A quote of the SHA-1 bank, genuinely signed by the enrolled AK over a fresh nonce,
// is still refused: SHA-1 PCRs can be forged by collision.
func TestSHA1PCRsOnlyContraindicated(t *testing.T) {
	r := newRig(t, verifier.Config{})
	se := openSimulator(t)
	h := newHost(t, "web-1", se)
	r.add(t, h)
	ch, err := r.v.Challenge(context.Background(), &attest.ChallengeRequest{Version: 1, Identity: h.id}, h.tls)
	if err != nil {
		t.Fatal(err)
	}
	sha1 := tpm2.TPMLPCRSelection{PCRSelections: []tpm2.TPMSPCRSelection{{Hash: tpm2.TPMAlgSHA1, PCRSelect: tpm2.PCClientCompatible.PCRs(attest.DefaultMeasurementPCR)}}}
	q, err := se.QuoteSelection(sha1, attest.QualifyingData(ch.Nonce, h.id, h.wg, h.tls))
	if err != nil {
		t.Fatal(err)
	}
	vals, _ := se.ReadPCRs([]int{attest.DefaultMeasurementPCR})
	log, _ := h.measurer.Log().MarshalBinary()
	ev := &attest.Evidence{Version: 1, Identity: h.id, Nonce: ch.Nonce, WireGuardKey: h.wg, Quote: q.Attest, Signature: q.Signature, PCRs: vals, Log: log}
	res, err := r.v.Appraise(context.Background(), ev, h.tls)
	mustContraindicate(t, res, err, attest.ReasonPCRBank)
}

func TestRebootOnSimulatorIsLegal(t *testing.T) {
	r := newRig(t, verifier.Config{})
	se := openSimulator(t)
	h := newHost(t, "web-1", se)
	r.add(t, h)
	before := mustAffirm(t)(h.attest(t, r.v))
	if err := se.Reboot(); err != nil {
		t.Fatal(err)
	}
	res, err := h.attest(t, r.v)
	mustContraindicate(t, res, err, attest.ReasonLogReplay)
	h.remeasure(t)
	after := mustAffirm(t)(h.attest(t, r.v))
	if after.ResetCount != before.ResetCount+1 {
		t.Fatalf("resetCount %d after reboot, want %d", after.ResetCount, before.ResetCount+1)
	}
}

func TestUnenrollEvictsAndFreesTheIdentity(t *testing.T) {
	r := newRig(t, verifier.Config{})
	h := newHost(t, "web-1", newFake(t))
	r.add(t, h)
	mustAffirm(t)(h.attest(t, r.v))
	if err := r.v.Unenroll(context.Background(), h.id); err != nil {
		t.Fatal(err)
	}
	if exp := r.rec.waitFor(t, h.id, attest.StatusExpired); !exp.HasReason(attest.ReasonNotEnrolled) {
		t.Fatalf("unenroll result %+v", exp)
	}
	if _, err := r.v.Challenge(context.Background(), &attest.ChallengeRequest{Version: 1, Identity: h.id}, h.tls); attest.ReasonCode(err) != attest.ReasonNotEnrolled {
		t.Fatalf("unenrolled subject still gets challenges: %v", err)
	}
	h.enroll(t, r.v) // the identity is free again
	mustAffirm(t)(h.attest(t, r.v))
}
