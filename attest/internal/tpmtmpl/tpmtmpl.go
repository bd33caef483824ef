// Package tpmtmpl holds the TPM object templates and standard handles moat uses, shared
// by the TPM SE and the pure-Go fake so both present byte-identical public areas.
package tpmtmpl

import "github.com/google/go-tpm/tpm2"

// Standard persistent handles and NV indices from the TCG EK Credential Profile: a
// provisioned hardware TPM keeps its EKs there, and its EK certificates in NV.
const (
	EKHandleRSA    tpm2.TPMHandle = 0x81010001
	EKHandleECC    tpm2.TPMHandle = 0x81010002
	EKCertIndexRSA tpm2.TPMHandle = 0x01C00002
	EKCertIndexECC tpm2.TPMHandle = 0x01C0000A
	NVChunkSize                   = 512 // below every TPM's TPM_PT_NV_BUFFER_MAX
)

// AK is the attestation key: RSA-2048, RSASSA-PKCS1-v1_5 with SHA-256, restricted
// signing (it signs only digests the TPM computed itself, so it cannot be made to sign
// a forged TPMS_ATTEST), fixedTPM and fixedParent (it never leaves this TPM),
// sensitiveDataOrigin (the TPM generated the private key).
//
// Why RSA-2048 rather than ECC P-256: the verifier's cost is centralized (one gateway
// appraises every backend every two seconds) while the signing cost is spread over the
// backends (each TPM signs one quote per interval). Verifying an RSA-2048 signature
// (public exponent 65537) costs about 40 µs on the gateway's cores here, a P-256 ECDSA
// signature 90–120 µs: RSA is what lets one core appraise more than 10,000 quotes a
// second. The price is paid where it is cheap: a TPM's RSA signature takes longer than
// its ECDSA one (tens to a few hundred milliseconds on hardware), far inside the 2 s
// interval. Every PC Client TPM implements RSA-2048.
var AK = tpm2.TPMTPublic{
	Type:    tpm2.TPMAlgRSA,
	NameAlg: tpm2.TPMAlgSHA256,
	ObjectAttributes: tpm2.TPMAObject{
		FixedTPM:            true,
		FixedParent:         true,
		SensitiveDataOrigin: true,
		UserWithAuth:        true,
		NoDA:                true,
		Restricted:          true,
		SignEncrypt:         true,
	},
	Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgRSA, &tpm2.TPMSRSAParms{
		Scheme: tpm2.TPMTRSAScheme{
			Scheme:  tpm2.TPMAlgRSASSA,
			Details: tpm2.NewTPMUAsymScheme(tpm2.TPMAlgRSASSA, &tpm2.TPMSSigSchemeRSASSA{HashAlg: tpm2.TPMAlgSHA256}),
		},
		KeyBits: 2048,
	}),
	Unique: RSAUnique("moat attestation key"),
}

// RSAUnique fills an RSA primary template's unique field with a label (see ECCUnique).
func RSAUnique(label string) tpm2.TPMUPublicID {
	n := make([]byte, 256)
	copy(n, label)
	return tpm2.NewTPMUPublicID(tpm2.TPMAlgRSA, &tpm2.TPM2BPublicKeyRSA{Buffer: n})
}

// ECDH is the unrestricted P-256 key-agreement key for the overlay's pre-shared keys
// (TPM2_ECDH_ZGen).
var ECDH = unrestrictedECC(tpm2.TPMAlgECDH, "moat key agreement")

// Signing is the unrestricted P-256 signing key for audit checkpoints: unlike the AK
// it signs caller-supplied digests, which is why it is a separate key.
var Signing = unrestrictedECC(tpm2.TPMAlgECDSA, "moat audit signing key")

// unrestrictedECC is a P-256 key for one scheme: ECDH (a decryption key) or ECDSA (a
// signing key), SHA-256 throughout.
func unrestrictedECC(scheme tpm2.TPMAlgID, label string) tpm2.TPMTPublic {
	var details tpm2.TPMUAsymScheme
	if scheme == tpm2.TPMAlgECDH {
		details = tpm2.NewTPMUAsymScheme(scheme, &tpm2.TPMSKeySchemeECDH{HashAlg: tpm2.TPMAlgSHA256})
	} else {
		details = tpm2.NewTPMUAsymScheme(scheme, &tpm2.TPMSSigSchemeECDSA{HashAlg: tpm2.TPMAlgSHA256})
	}
	return tpm2.TPMTPublic{
		Type:    tpm2.TPMAlgECC,
		NameAlg: tpm2.TPMAlgSHA256,
		ObjectAttributes: tpm2.TPMAObject{
			FixedTPM:            true,
			FixedParent:         true,
			SensitiveDataOrigin: true,
			UserWithAuth:        true,
			NoDA:                true,
			Decrypt:             scheme == tpm2.TPMAlgECDH,
			SignEncrypt:         scheme != tpm2.TPMAlgECDH,
		},
		Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgECC, &tpm2.TPMSECCParms{
			Scheme:  tpm2.TPMTECCScheme{Scheme: scheme, Details: details},
			CurveID: tpm2.TPMECCNistP256,
		}),
		Unique: ECCUnique(label),
	}
}

// ECCUnique fills a primary template's unique field with a label, so that each of
// moat's primary keys is a distinct key even if two templates were otherwise equal
// (CreatePrimary derives the key from the hierarchy seed and the whole template).
func ECCUnique(label string) tpm2.TPMUPublicID {
	x := make([]byte, 32)
	copy(x, label)
	return tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{
		X: tpm2.TPM2BECCParameter{Buffer: x},
		Y: tpm2.TPM2BECCParameter{Buffer: make([]byte, 32)},
	})
}

// sealedTemplate is a keyed-hash data object whose only authorization is its policy
// (userWithAuth clear): a PCR policy, so knowing no password unseals it.
func Sealed(policy []byte) tpm2.TPMTPublic {
	return tpm2.TPMTPublic{
		Type:    tpm2.TPMAlgKeyedHash,
		NameAlg: tpm2.TPMAlgSHA256,
		ObjectAttributes: tpm2.TPMAObject{
			FixedTPM:    true,
			FixedParent: true,
			NoDA:        true,
		},
		AuthPolicy: tpm2.TPM2BDigest{Buffer: policy},
		Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgKeyedHash, &tpm2.TPMSKeyedHashParms{
			Scheme: tpm2.TPMTKeyedHashScheme{Scheme: tpm2.TPMAlgNull},
		}),
	}
}
