package attest

import (
	"crypto/ecdh"
	"crypto/ecdsa"
)

// MeasurementHash names the only PCR bank moat appraises. SHA-1 banks are refused:
// SHA-1 collisions are practical, so a SHA-1 PCR proves nothing about what was measured.
const MeasurementHash = "sha256"

// DefaultMeasurementPCR is the PCR the agent extends with its file measurements.
//
// PCR 15 is in the PC Client "static OS" range (8–15). Unlike the "application"
// PCRs 16 and 23, which the PC Client profile lets any locality-0 process reset, it
// cannot be reset before the next reboot: once a tampered file has been measured, no
// process on the host can erase that from the PCR and replay a clean history. On a
// classic GRUB boot nothing else extends PCR 15; systemd extends it only when booted
// through a unified kernel image (systemd-pcrmachine, systemd-pcrfs) or when asked to by
// cryptsetup (tpm2-measure-pcr=yes). The agent refuses to start when the PCR holds
// extensions its log does not explain, so such a collision is reported, not hidden;
// pick another PCR in that case.
const DefaultMeasurementPCR = 15

// SE is what moat needs from a Secure Element (a TPM 2.0). Implementations: the
// in-process simulator, swtpm over its socket and a hardware TPM at /dev/tpmrm0
// (package attest/tpm), and a pure-Go fake that emits the same TPM wire structures
// (package attest/fakese).
//
// Contract, for every implementation:
//   - all methods are safe for concurrent use;
//   - keys are TPM-resident and never leave it; the same EK, AK, ECDH and signing
//     keys are returned for the SE's lifetime (and, on a TPM, across restarts, since
//     they are primary keys derived from the hierarchy seeds);
//   - PCR operations use the SHA-256 bank only;
//   - byte fields are TPM 2.0 wire encodings (Part 2 marshalling) unless said otherwise,
//     so the verifier can decode every implementation's output with one decoder;
//   - after Close every method returns an error.
type SE interface {
	// EndorsementKey returns the EK's public area and, when the TPM holds one in NV, its
	// manufacturer certificate.
	EndorsementKey() (EndorsementKey, error)
	// AttestationKey returns the AK's public area: an ECC P-256 restricted signing key
	// (ECDSA-SHA256) with fixedTPM, fixedParent and sensitiveDataOrigin set.
	AttestationKey() (AttestationKey, error)
	// ActivateCredential decrypts a credential made by MakeCredential for this TPM's EK
	// and AK name (TPM2_ActivateCredential). It fails when the credential was made for
	// another EK or another AK: that is the proof that the AK lives beside the EK.
	ActivateCredential(credential, secret []byte) ([]byte, error)
	// ReadPCRs returns the SHA-256 values of the given PCRs, in the order given.
	ReadPCRs(indices []int) ([]PCRValue, error)
	// ExtendPCR extends a SHA-256 digest into a PCR: new = SHA-256(old ‖ digest).
	ExtendPCR(index int, digest [32]byte) error
	// Quote signs the SHA-256 values of the given PCRs and qualifyingData with the AK
	// (TPM2_Quote).
	Quote(pcrs []int, qualifyingData []byte) (Quote, error)
	// Seal returns an opaque blob holding data that only this TPM can unseal, and only
	// while the given PCRs hold the values they hold now.
	Seal(data []byte, pcrs []int) ([]byte, error)
	// Unseal recovers data sealed by Seal; it fails when a sealed PCR has changed.
	Unseal(blob []byte) ([]byte, error)
	// ECDHPublicKey returns the public half of the TPM-resident P-256 key-agreement key.
	ECDHPublicKey() (*ecdh.PublicKey, error)
	// ECDH returns the x-coordinate of d·peer, d being the TPM-resident private key
	// (TPM2_ECDH_ZGen): the raw shared secret, to be fed to a KDF, never used as a key.
	ECDH(peer *ecdh.PublicKey) ([]byte, error)
	// SigningPublicKey returns the public half of the TPM-resident P-256 signing key
	// used for audit checkpoints.
	SigningPublicKey() (*ecdsa.PublicKey, error)
	// Sign signs a SHA-256 digest with the signing key and returns an ASN.1 ECDSA
	// signature (verifiable with ecdsa.VerifyASN1).
	Sign(digest []byte) ([]byte, error)
	// Close releases the TPM connection and the transient keys.
	Close() error
}

// EndorsementKey is the TPM's EK.
type EndorsementKey struct {
	// Public is the EK's TPMT_PUBLIC (RSA-2048 or ECC P-256, TCG EK template).
	Public []byte
	// Certificate is the EK certificate (DER) from the TPM's NV, nil when there is none.
	Certificate []byte
}

// AttestationKey is the TPM's AK.
type AttestationKey struct {
	// Public is the AK's TPMT_PUBLIC.
	Public []byte
}

// Quote is a TPM2_Quote's output.
type Quote struct {
	// Attest is the TPMS_ATTEST structure the TPM signed (TPM2B_ATTEST's contents).
	Attest []byte
	// Signature is the TPMT_SIGNATURE over SHA-256(Attest).
	Signature []byte
}

// PCRValue is one SHA-256 PCR.
type PCRValue struct {
	Index  int    `json:"index"`
	Digest []byte `json:"sha256"`
}
