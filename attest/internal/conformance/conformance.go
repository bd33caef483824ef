// Package conformance is the test suite every attest.SE implementation must pass: the
// simulator, swtpm and the pure-Go fake run the same checks, which is what makes the
// fake a faithful stand-in in the verifier's tests and benchmarks.
package conformance

import (
	"bytes"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/seed4c/moat/attest"
	"github.com/seed4c/moat/attest/tpmwire"
)

// PCR is the PCR the suite extends; a fresh SE must have it at zero.
const PCR = attest.DefaultMeasurementPCR

// Run runs the suite on a fresh SE from open, which must register its own cleanup.
// Subtests share the SE and run in order (extends accumulate).
func Run(t *testing.T, se attest.SE) {
	t.Run("EndorsementKey", func(t *testing.T) { testEK(t, se) })
	t.Run("AttestationKey", func(t *testing.T) { testAK(t, se) })
	t.Run("ActivateCredential", func(t *testing.T) { testActivate(t, se) })
	t.Run("PCRs", func(t *testing.T) { testPCRs(t, se) })
	t.Run("Quote", func(t *testing.T) { testQuote(t, se) })
	t.Run("Seal", func(t *testing.T) { testSeal(t, se) })
	t.Run("ECDH", func(t *testing.T) { testECDH(t, se) })
	t.Run("Sign", func(t *testing.T) { testSign(t, se) })
}

// RunClosed checks that a closed SE refuses to work; call it with an SE just closed.
func RunClosed(t *testing.T, se attest.SE) {
	if _, err := se.AttestationKey(); err == nil {
		t.Error("AttestationKey works after Close")
	}
	if _, err := se.Quote([]int{PCR}, nil); err == nil {
		t.Error("Quote works after Close")
	}
	if err := se.ExtendPCR(PCR, [32]byte{}); err == nil {
		t.Error("ExtendPCR works after Close")
	}
}

func decodePublic(t *testing.T, b []byte) *tpm2.TPMTPublic {
	t.Helper()
	pub, err := tpm2.Unmarshal[tpm2.TPMTPublic](b)
	if err != nil {
		t.Fatalf("public area does not decode: %v", err)
	}
	if !bytes.Equal(tpm2.Marshal(*pub), b) {
		t.Fatal("public area encoding is not canonical")
	}
	return pub
}

func testEK(t *testing.T, se attest.SE) {
	ek, err := se.EndorsementKey()
	if err != nil {
		t.Fatal(err)
	}
	pub := decodePublic(t, ek.Public)
	a := pub.ObjectAttributes
	if !a.Restricted || !a.Decrypt || a.SignEncrypt || !a.FixedTPM || !a.FixedParent || !a.SensitiveDataOrigin {
		t.Fatalf("EK attributes are not a restricted decryption key's: %+v", a)
	}
	again, err := se.EndorsementKey()
	if err != nil || !bytes.Equal(again.Public, ek.Public) {
		t.Fatalf("EK changed between calls (%v)", err)
	}
}

func testAK(t *testing.T, se attest.SE) {
	ak, err := se.AttestationKey()
	if err != nil {
		t.Fatal(err)
	}
	pub := decodePublic(t, ak.Public)
	a := pub.ObjectAttributes
	if !a.Restricted || !a.SignEncrypt || a.Decrypt || !a.FixedTPM || !a.FixedParent || !a.SensitiveDataOrigin {
		t.Fatalf("AK attributes are not a restricted TPM-generated signing key's: %+v", a)
	}
	if err := tpmwire.CheckAKAttributes(pub); err != nil {
		t.Fatalf("AK refused by the verifier's checks: %v", err)
	}
	again, err := se.AttestationKey()
	if err != nil || !bytes.Equal(again.Public, ak.Public) {
		t.Fatalf("AK changed between calls (%v)", err)
	}
}

func testActivate(t *testing.T, se attest.SE) {
	ek, err := se.EndorsementKey()
	if err != nil {
		t.Fatal(err)
	}
	ak, err := se.AttestationKey()
	if err != nil {
		t.Fatal(err)
	}
	ekPub := decodePublic(t, ek.Public)
	akName, err := tpm2.ObjectName(decodePublic(t, ak.Public))
	if err != nil {
		t.Fatal(err)
	}
	kem, err := tpm2.ImportEncapsulationKey(ekPub)
	if err != nil {
		t.Fatal(err)
	}
	secret := []byte("0123456789abcdef0123456789abcdef")
	cred, enc, err := tpm2.CreateCredential(rand.Reader, kem, akName.Buffer, secret)
	if err != nil {
		t.Fatal(err)
	}
	got, err := se.ActivateCredential(cred, enc)
	if err != nil {
		t.Fatalf("activation of a credential for this EK and AK failed: %v", err)
	}
	if !bytes.Equal(got, secret) {
		t.Fatalf("activation returned %x, want %x", got, secret)
	}
	// A credential naming another key must not activate: the TPM checks the name.
	otherName := append([]byte{0, 0x0b}, bytes.Repeat([]byte{7}, 32)...)
	cred, enc, err = tpm2.CreateCredential(rand.Reader, kem, otherName, secret)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := se.ActivateCredential(cred, enc); err == nil && bytes.Equal(got, secret) {
		t.Fatal("a credential for another AK name was activated")
	}
}

func testPCRs(t *testing.T, se attest.SE) {
	vals, err := se.ReadPCRs([]int{PCR, 0})
	if err != nil {
		t.Fatal(err)
	}
	if len(vals) != 2 || vals[0].Index != PCR || vals[1].Index != 0 {
		t.Fatalf("ReadPCRs returned %+v, want PCR %d then 0", vals, PCR)
	}
	if !bytes.Equal(vals[0].Digest, make([]byte, 32)) {
		t.Fatalf("PCR %d of a fresh SE is %x, want zeros", PCR, vals[0].Digest)
	}
	d := sha256.Sum256([]byte("measurement"))
	if err := se.ExtendPCR(PCR, d); err != nil {
		t.Fatal(err)
	}
	want := sha256.Sum256(append(make([]byte, 32), d[:]...))
	vals, err = se.ReadPCRs([]int{PCR})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(vals[0].Digest, want[:]) {
		t.Fatalf("PCR after extend = %x, want SHA-256(0…0 ‖ d) = %x", vals[0].Digest, want)
	}
}

func testQuote(t *testing.T, se attest.SE) {
	ak, err := se.AttestationKey()
	if err != nil {
		t.Fatal(err)
	}
	key, err := tpmwire.AKPublicKey(ak.Public)
	if err != nil {
		t.Fatalf("AK refused by the verifier's checks: %v", err)
	}
	qd := sha256.Sum256([]byte("qualifying data"))
	pcrs := []int{0, PCR}
	q, err := se.Quote(pcrs, qd[:])
	if err != nil {
		t.Fatal(err)
	}
	a, err := tpmwire.Parse(q.Attest)
	if err != nil {
		t.Fatalf("quote does not parse: %v", err)
	}
	sig, err := tpmwire.ParseSignature(q.Signature)
	if err != nil {
		t.Fatalf("signature does not parse: %v", err)
	}
	if err := tpmwire.Verify(key, q.Attest, sig); err != nil {
		t.Fatalf("quote not signed by the AK: %v", err)
	}
	if !bytes.Equal(a.ExtraData, qd[:]) {
		t.Fatalf("extraData %x, want %x", a.ExtraData, qd)
	}
	got, err := a.SHA256PCRs()
	if err != nil || !tpmwire.SameSet(got, pcrs) {
		t.Fatalf("quoted PCRs %v (%v), want %v", got, err, pcrs)
	}
	vals, err := se.ReadPCRs(pcrs)
	if err != nil {
		t.Fatal(err)
	}
	raw := [][]byte{vals[0].Digest, vals[1].Digest}
	if d := tpmwire.PCRDigest(raw); !bytes.Equal(d[:], a.PCRDigest) {
		t.Fatalf("pcrDigest %x, want %x", a.PCRDigest, d)
	}
	q2, err := se.Quote(pcrs, qd[:])
	if err != nil {
		t.Fatal(err)
	}
	a2, err := tpmwire.Parse(q2.Attest)
	if err != nil {
		t.Fatal(err)
	}
	if a2.Clock < a.Clock || a2.ResetCount != a.ResetCount {
		t.Fatalf("clock went from %d/%d to %d/%d between two quotes", a.ResetCount, a.Clock, a2.ResetCount, a2.Clock)
	}
}

func testSeal(t *testing.T, se attest.SE) {
	blob, err := se.Seal([]byte("wireguard private key"), []int{PCR})
	if err != nil {
		t.Fatal(err)
	}
	got, err := se.Unseal(blob)
	if err != nil || string(got) != "wireguard private key" {
		t.Fatalf("Unseal = %q, %v", got, err)
	}
	if err := se.ExtendPCR(PCR, sha256.Sum256([]byte("state change"))); err != nil {
		t.Fatal(err)
	}
	if got, err := se.Unseal(blob); err == nil {
		t.Fatalf("unsealed %q after the sealed PCR changed", got)
	}
	if _, err := se.Unseal([]byte("not a blob")); err == nil {
		t.Fatal("garbage unsealed")
	}
	if _, err := se.Seal(make([]byte, 129), []int{PCR}); err == nil {
		t.Fatal("sealed more than a TPM seals")
	}
}

func testECDH(t *testing.T, se attest.SE) {
	pub, err := se.ECDHPublicKey()
	if err != nil {
		t.Fatal(err)
	}
	peer, err := ecdh.P256().GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	want, err := peer.ECDH(pub)
	if err != nil {
		t.Fatal(err)
	}
	got, err := se.ECDH(peer.PublicKey())
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("Z from the SE %x, from software %x", got, want)
	}
	x, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := se.ECDH(x.PublicKey()); err == nil {
		t.Fatal("ECDH accepted an X25519 key")
	}
}

func testSign(t *testing.T, se attest.SE) {
	pub, err := se.SigningPublicKey()
	if err != nil {
		t.Fatal(err)
	}
	d := sha256.Sum256([]byte("audit checkpoint"))
	sig, err := se.Sign(d[:])
	if err != nil {
		t.Fatal(err)
	}
	if !ecdsa.VerifyASN1(pub, d[:], sig) {
		t.Fatal("checkpoint signature does not verify")
	}
	if _, err := se.Sign([]byte("short")); err == nil {
		t.Fatal("signed something that is not a SHA-256 digest")
	}
}
