package tpmwire

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"

	"github.com/google/go-tpm/tpm2"
)

// ErrAKAttributes marks an AK that is not a key a quote may be trusted from.
var ErrAKAttributes = errors.New("AK attributes refused")

// DecodePublic decodes a TPMT_PUBLIC, refusing non-canonical encodings (trailing
// bytes included), so one key has exactly one encoding and one name.
func DecodePublic(b []byte, what string) (*tpm2.TPMTPublic, error) {
	if len(b) == 0 || len(b) > 1024 {
		return nil, fmt.Errorf("%s public area: %d bytes", what, len(b))
	}
	pub, err := tpm2.Unmarshal[tpm2.TPMTPublic](b)
	if err != nil {
		return nil, fmt.Errorf("%s public area: %w", what, err)
	}
	if !bytes.Equal(tpm2.Marshal(*pub), b) {
		return nil, fmt.Errorf("%s public area: not a canonical TPMT_PUBLIC encoding", what)
	}
	return pub, nil
}

// eccPoint validates a TPM ECC point on P-256 and returns it uncompressed.
func eccPoint(pub *tpm2.TPMTPublic) ([]byte, error) {
	parms, err := pub.Parameters.ECCDetail()
	if err != nil {
		return nil, fmt.Errorf("ECC parameters: %w", err)
	}
	if parms.CurveID != tpm2.TPMECCNistP256 {
		return nil, fmt.Errorf("curve %#x, want NIST P-256", parms.CurveID)
	}
	point, err := pub.Unique.ECC()
	if err != nil {
		return nil, fmt.Errorf("ECC point: %w", err)
	}
	if len(point.X.Buffer) > 32 || len(point.Y.Buffer) > 32 {
		return nil, fmt.Errorf("ECC point coordinates of %d and %d bytes", len(point.X.Buffer), len(point.Y.Buffer))
	}
	raw := make([]byte, 65)
	raw[0] = 4
	copy(raw[33-len(point.X.Buffer):33], point.X.Buffer)
	copy(raw[65-len(point.Y.Buffer):], point.Y.Buffer)
	return raw, nil
}

// AKPublicKey decodes an AK public area and checks it is what a quote may be trusted
// from (CheckAKAttributes); it returns the RSA key.
func AKPublicKey(b []byte) (*rsa.PublicKey, error) {
	pub, err := DecodePublic(b, "AK")
	if err != nil {
		return nil, err
	}
	if err := CheckAKAttributes(pub); err != nil {
		return nil, err
	}
	return rsaKey(pub, "AK")
}

// rsaKey returns the RSA-2048 public key of a public area, exponent 65537.
func rsaKey(pub *tpm2.TPMTPublic, what string) (*rsa.PublicKey, error) {
	parms, err := pub.Parameters.RSADetail()
	if err != nil {
		return nil, fmt.Errorf("%s RSA parameters: %w", what, err)
	}
	n, err := pub.Unique.RSA()
	if err != nil {
		return nil, fmt.Errorf("%s RSA modulus: %w", what, err)
	}
	if parms.KeyBits != 2048 || len(n.Buffer) != 256 || n.Buffer[0]&0x80 == 0 {
		return nil, fmt.Errorf("%s is not an RSA-2048 key (%d bits, %d-byte modulus)", what, parms.KeyBits, len(n.Buffer))
	}
	if parms.Exponent != 0 && parms.Exponent != 65537 {
		return nil, fmt.Errorf("%s RSA exponent %d, want 65537", what, parms.Exponent)
	}
	return tpm2.RSAPub(parms, n)
}

// CheckAKAttributes accepts only a key whose signatures over TPMS_ATTEST prove the TPM
// produced them:
//   - restricted + sign, not decrypt: it signs only digests the TPM computed, never a
//     caller's digest of a forged structure that starts with TPM_GENERATED_VALUE;
//   - fixedTPM + fixedParent: it cannot have been duplicated out of (or into) the TPM;
//   - sensitiveDataOrigin: the TPM generated the private key, nobody imported a known one;
//   - RSA-2048 with the RSASSA-SHA256 scheme, SHA-256 name algorithm.
func CheckAKAttributes(pub *tpm2.TPMTPublic) error {
	a := pub.ObjectAttributes
	var missing []string
	for _, c := range []struct {
		ok   bool
		name string
	}{
		{a.Restricted, "restricted"}, {a.SignEncrypt, "sign"}, {!a.Decrypt, "not decrypt"},
		{a.FixedTPM, "fixedTPM"}, {a.FixedParent, "fixedParent"}, {a.SensitiveDataOrigin, "sensitiveDataOrigin"},
		{pub.Type == tpm2.TPMAlgRSA, "RSA type"}, {pub.NameAlg == tpm2.TPMAlgSHA256, "SHA-256 name algorithm"},
	} {
		if !c.ok {
			missing = append(missing, c.name)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("%w: AK lacks %v", ErrAKAttributes, missing)
	}
	parms, err := pub.Parameters.RSADetail()
	if err != nil {
		return fmt.Errorf("%w: AK RSA parameters: %v", ErrAKAttributes, err)
	}
	scheme, err := parms.Scheme.Details.RSASSA()
	if parms.Scheme.Scheme != tpm2.TPMAlgRSASSA || err != nil || scheme.HashAlg != tpm2.TPMAlgSHA256 {
		return fmt.Errorf("%w: AK scheme %#x is not RSASSA-SHA256", ErrAKAttributes, parms.Scheme.Scheme)
	}
	return nil
}

// EKPublicKey decodes and checks an EK: a restricted decryption key of the TCG templates
// (RSA-2048 or ECC P-256), returning its Go public key.
func EKPublicKey(pub *tpm2.TPMTPublic) (crypto.PublicKey, error) {
	a := pub.ObjectAttributes
	if !a.Restricted || !a.Decrypt || a.SignEncrypt || !a.FixedTPM || !a.FixedParent {
		return nil, fmt.Errorf("EK is not a fixed restricted decryption key")
	}
	switch pub.Type {
	case tpm2.TPMAlgECC:
		raw, err := eccPoint(pub)
		if err != nil {
			return nil, fmt.Errorf("EK: %w", err)
		}
		return ecdsa.ParseUncompressedPublicKey(elliptic.P256(), raw)
	case tpm2.TPMAlgRSA:
		return rsaKey(pub, "EK")
	}
	return nil, fmt.Errorf("EK type %#x is neither RSA nor ECC", pub.Type)
}

// EKSHA256 decodes an EK public area and returns the SHA-256 of its DER
// SubjectPublicKeyInfo (the form operators allow-list, e.g. from
// `openssl pkey -pubin -outform DER | sha256sum`) and the SubjectPublicKeyInfo itself.
func EKSHA256(ekPublic []byte) ([32]byte, []byte, error) {
	pub, err := DecodePublic(ekPublic, "EK")
	if err != nil {
		return [32]byte{}, nil, err
	}
	key, err := EKPublicKey(pub)
	if err != nil {
		return [32]byte{}, nil, err
	}
	spki, err := x509.MarshalPKIXPublicKey(key)
	if err != nil {
		return [32]byte{}, nil, fmt.Errorf("encode EK: %w", err)
	}
	return sha256.Sum256(spki), spki, nil
}
