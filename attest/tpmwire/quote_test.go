package tpmwire

import (
	"bytes"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"errors"
	"sync"
	"testing"

	"github.com/google/go-tpm/tpm2"
)

func sampleAttest(hash tpm2.TPMAlgID, pcrs ...uint) tpm2.TPMSAttest {
	return tpm2.TPMSAttest{
		Magic:           tpm2.TPMGeneratedValue,
		Type:            tpm2.TPMSTAttestQuote,
		QualifiedSigner: tpm2.TPM2BName{Buffer: bytes.Repeat([]byte{1}, 34)},
		ExtraData:       tpm2.TPM2BData{Buffer: bytes.Repeat([]byte{2}, 32)},
		ClockInfo:       tpm2.TPMSClockInfo{Clock: 123456, ResetCount: 3, RestartCount: 1, Safe: true},
		FirmwareVersion: 0x2019,
		Attested: tpm2.NewTPMUAttest(tpm2.TPMSTAttestQuote, &tpm2.TPMSQuoteInfo{
			PCRSelect: tpm2.TPMLPCRSelection{PCRSelections: []tpm2.TPMSPCRSelection{
				{Hash: hash, PCRSelect: tpm2.PCClientCompatible.PCRs(pcrs...)},
			}},
			PCRDigest: tpm2.TPM2BDigest{Buffer: bytes.Repeat([]byte{3}, 32)},
		}),
	}
}

func TestParseMatchesGoTPM(t *testing.T) {
	b := tpm2.Marshal(sampleAttest(tpm2.TPMAlgSHA256, 0, 7, 15))
	a, err := Parse(b)
	if err != nil {
		t.Fatalf("parse: %v", err)
	}
	if a.Clock != 123456 || a.ResetCount != 3 || a.RestartCount != 1 || !a.Safe || a.FirmwareVersion != 0x2019 {
		t.Fatalf("clock info decoded wrong: %+v", a)
	}
	if !bytes.Equal(a.ExtraData, bytes.Repeat([]byte{2}, 32)) || len(a.QualifiedSigner) != 34 {
		t.Fatalf("sized fields decoded wrong: %+v", a)
	}
	pcrs, err := a.SHA256PCRs()
	if err != nil || !SameSet(pcrs, []int{0, 7, 15}) {
		t.Fatalf("SHA256PCRs = %v, %v", pcrs, err)
	}
}

func TestParseRefusesSHA1Bank(t *testing.T) {
	a, err := Parse(tpm2.Marshal(sampleAttest(tpm2.TPMAlgSHA1, 15)))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.SHA256PCRs(); !errors.Is(err, ErrBank) {
		t.Fatalf("SHA-1 bank accepted: %v", err)
	}
}

func TestParseRefusesOtherAttestationTypes(t *testing.T) {
	att := sampleAttest(tpm2.TPMAlgSHA256, 15)
	b := tpm2.Marshal(att)
	b[5] = 0x17 // TPM_ST_ATTEST_CERTIFY
	if _, err := Parse(b); !errors.Is(err, ErrNotQuote) {
		t.Fatalf("certify structure accepted as quote: %v", err)
	}
	b = tpm2.Marshal(att)
	b[0] = 0 // not TPM_GENERATED_VALUE: a structure the TPM did not produce
	if _, err := Parse(b); !errors.Is(err, ErrNotQuote) {
		t.Fatalf("foreign magic accepted: %v", err)
	}
}

func TestParseRefusesTruncationAndTrailingBytes(t *testing.T) {
	b := tpm2.Marshal(sampleAttest(tpm2.TPMAlgSHA256, 15))
	for n := 0; n < len(b); n++ {
		if _, err := Parse(b[:n]); err == nil {
			t.Fatalf("truncated quote (%d/%d bytes) accepted", n, len(b))
		}
	}
	if _, err := Parse(append(b, 0)); !errors.Is(err, ErrMalformed) {
		t.Fatalf("trailing byte accepted: %v", err)
	}
}

func TestSignatureVerify(t *testing.T) {
	key := testKey(t)
	msg := tpm2.Marshal(sampleAttest(tpm2.TPMAlgSHA256, 15))
	sigBytes := signTPM(t, key, msg)
	sig, err := ParseSignature(sigBytes)
	if err != nil {
		t.Fatalf("parse signature: %v", err)
	}
	if err := Verify(&key.PublicKey, msg, sig); err != nil {
		t.Fatalf("good signature refused: %v", err)
	}
	other := testKey(t)
	if err := Verify(&other.PublicKey, msg, sig); !errors.Is(err, ErrSignature) {
		t.Fatalf("signature verified under another key: %v", err)
	}
	msg[len(msg)-1] ^= 1
	if err := Verify(&key.PublicKey, msg, sig); !errors.Is(err, ErrSignature) {
		t.Fatalf("signature verified over altered quote: %v", err)
	}
	ecdsaSig := tpm2.Marshal(tpm2.TPMTSignature{SigAlg: tpm2.TPMAlgECDSA, Signature: tpm2.NewTPMUSignature(tpm2.TPMAlgECDSA, &tpm2.TPMSSignatureECC{Hash: tpm2.TPMAlgSHA256})})
	if _, err := ParseSignature(ecdsaSig); !errors.Is(err, ErrMalformed) {
		t.Fatalf("ECDSA signature accepted where the AK signs RSASSA: %v", err)
	}
	for n := 0; n < len(sigBytes); n++ {
		if _, err := ParseSignature(sigBytes[:n]); err == nil {
			t.Fatalf("truncated signature accepted")
		}
	}
}

var (
	keyOnce sync.Once
	keys    []*rsa.PrivateKey
)

// testKey returns one of two RSA-2048 keys generated once per process (key generation
// is slow, and the tests only need two distinct keys).
func testKey(t testing.TB) *rsa.PrivateKey {
	keyOnce.Do(func() {
		for range 2 {
			k, err := rsa.GenerateKey(rand.Reader, 2048)
			if err != nil {
				panic(err)
			}
			keys = append(keys, k)
		}
	})
	keys[0], keys[1] = keys[1], keys[0]
	return keys[0]
}

func signTPM(t testing.TB, key *rsa.PrivateKey, msg []byte) []byte {
	d := sha256.Sum256(msg)
	sig, err := rsa.SignPKCS1v15(nil, key, crypto.SHA256, d[:])
	if err != nil {
		t.Fatal(err)
	}
	return tpm2.Marshal(tpm2.TPMTSignature{
		SigAlg: tpm2.TPMAlgRSASSA,
		Signature: tpm2.NewTPMUSignature(tpm2.TPMAlgRSASSA, &tpm2.TPMSSignatureRSA{
			Hash: tpm2.TPMAlgSHA256,
			Sig:  tpm2.TPM2BPublicKeyRSA{Buffer: sig},
		}),
	})
}

// FuzzParse is differential: whatever Parse accepts, go-tpm's reflection decoder must
// decode to the same fields, and go-tpm's encoding of those fields must be the input
// (Parse accepts canonical encodings only).
func FuzzParse(f *testing.F) {
	f.Add(tpm2.Marshal(sampleAttest(tpm2.TPMAlgSHA256, 15)))
	f.Add(tpm2.Marshal(sampleAttest(tpm2.TPMAlgSHA1, 0, 1)))
	f.Fuzz(func(t *testing.T, b []byte) {
		a, err := Parse(b)
		if err != nil {
			return
		}
		ref, err := tpm2.Unmarshal[tpm2.TPMSAttest](b)
		if err != nil {
			t.Fatalf("Parse accepted what go-tpm refuses: %v", err)
		}
		if !bytes.Equal(tpm2.Marshal(*ref), b) {
			t.Fatalf("Parse accepted a non-canonical encoding")
		}
		q, err := ref.Attested.Quote()
		if err != nil {
			t.Fatalf("go-tpm sees no quote: %v", err)
		}
		if ref.ClockInfo.Clock != a.Clock || ref.ClockInfo.ResetCount != a.ResetCount ||
			ref.ClockInfo.RestartCount != a.RestartCount || !bytes.Equal(ref.ExtraData.Buffer, a.ExtraData) ||
			!bytes.Equal(q.PCRDigest.Buffer, a.PCRDigest) || len(q.PCRSelect.PCRSelections) != len(a.Selections) {
			t.Fatalf("Parse and go-tpm disagree: %+v vs %+v", a, ref)
		}
	})
}

func FuzzParseSignature(f *testing.F) {
	key := testKey(f)
	f.Add(signTPM(f, key, []byte("x")))
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := ParseSignature(b)
		if err != nil {
			return
		}
		_ = Verify(&key.PublicKey, []byte("x"), s) // must not panic on any r, s
	})
}

func BenchmarkParse(b *testing.B) {
	enc := tpm2.Marshal(sampleAttest(tpm2.TPMAlgSHA256, 15))
	for b.Loop() {
		if _, err := Parse(enc); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkParseGoTPM(b *testing.B) {
	enc := tpm2.Marshal(sampleAttest(tpm2.TPMAlgSHA256, 15))
	for b.Loop() {
		if _, err := tpm2.Unmarshal[tpm2.TPMSAttest](enc); err != nil {
			b.Fatal(err)
		}
	}
}
