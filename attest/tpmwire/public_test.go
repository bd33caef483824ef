package tpmwire

import (
	"errors"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/seed4c/moat/attest/internal/tpmtmpl"
)

func akPublic(t testing.TB) []byte {
	pub := tpmtmpl.AK
	n := testKey(t).N.FillBytes(make([]byte, 256))
	pub.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgRSA, &tpm2.TPM2BPublicKeyRSA{Buffer: n})
	return tpm2.Marshal(pub)
}

func TestAKPublicKeyChecks(t *testing.T) {
	good := akPublic(t)
	if _, err := AKPublicKey(good); err != nil {
		t.Fatalf("moat's AK template refused: %v", err)
	}
	pub, _ := tpm2.Unmarshal[tpm2.TPMTPublic](good)
	pub.ObjectAttributes.Restricted = false
	if _, err := AKPublicKey(tpm2.Marshal(*pub)); !errors.Is(err, ErrAKAttributes) {
		t.Fatalf("unrestricted AK: %v", err)
	}
	if _, err := AKPublicKey(append(good, 0)); err == nil {
		t.Fatal("trailing byte accepted")
	}
	short := tpmtmpl.AK
	short.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgRSA, &tpm2.TPM2BPublicKeyRSA{Buffer: make([]byte, 128)})
	if _, err := AKPublicKey(tpm2.Marshal(short)); err == nil {
		t.Fatal("1024-bit modulus accepted")
	}
}

// FuzzAKPublicKey: public areas arrive from the network at enrollment. No input may
// panic the decoders, and what AKPublicKey accepts passes CheckAKAttributes.
func FuzzAKPublicKey(f *testing.F) {
	f.Add(akPublic(f))
	f.Add(tpm2.Marshal(tpm2.ECCEKTemplate))
	f.Fuzz(func(t *testing.T, b []byte) {
		if _, err := AKPublicKey(b); err == nil {
			pub, _ := DecodePublic(b, "AK")
			if CheckAKAttributes(pub) != nil {
				t.Fatal("accepted AK fails the attribute check")
			}
		}
		_, _, _ = EKSHA256(b)
	})
}
