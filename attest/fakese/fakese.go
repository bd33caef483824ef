// Package fakese is a pure-Go attest.SE: no TPM, but the same wire structures a TPM
// emits (TPMT_PUBLIC areas from moat's templates, TPMS_ATTEST quotes, ECDSA
// TPMT_SIGNATUREs, MakeCredential blobs it activates with the TPM's algorithm), so the
// verifier cannot tell its evidence from a TPM's. The conformance suite that the
// simulator and swtpm pass proves it.
//
// It exists for what a TPM cannot do on demand or fast enough: the verifier's throughput
// benchmark (a quote in microseconds instead of milliseconds), and misbehaviour a test
// must provoke (a TPM clock or resetCount that goes backwards). Its keys live in this
// process's memory: it attests nothing and must never be offered to a production
// agent, which is why the agent's configuration cannot select it.
package fakese

import (
	"bytes"
	"crypto"
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/google/go-tpm/tpm2"

	"github.com/seed4c/moat/attest"
	"github.com/seed4c/moat/attest/internal/tpmtmpl"
)

// initialClock is the fake TPM's clock at New, in milliseconds: ten days of prior
// uptime, so tests can move it back without it going below zero.
const initialClock = 10 * 24 * 3600 * 1000

// ErrClosed is returned by every method after Close.
var ErrClosed = errors.New("fake SE is closed")

// SE is the fake Secure Element.
type SE struct {
	mu     sync.Mutex
	closed bool

	ekPriv   *ecdh.PrivateKey
	ekPublic tpm2.TPMTPublic
	akPriv   *rsa.PrivateKey
	akPublic tpm2.TPMTPublic
	akName   tpm2.TPM2BName
	ecdhPriv *ecdh.PrivateKey
	signer   *ecdsa.PrivateKey
	sealKey  cipher.AEAD
	ekCert   []byte

	pcrs         [24][32]byte
	start        time.Time
	clockOffset  int64
	resetCount   uint32
	restartCount uint32
	unsafe       bool
}

var _ attest.SE = (*SE)(nil)

// New returns a fresh fake TPM: new keys, PCRs zero, resetCount zero.
func New() (*SE, error) {
	s := &SE{start: time.Now()}
	var err error
	if s.ekPriv, err = ecdh.P256().GenerateKey(rand.Reader); err != nil {
		return nil, fmt.Errorf("generate fake EK: %w", err)
	}
	s.ekPublic = withECCPoint(tpm2.ECCEKTemplate, s.ekPriv.PublicKey().Bytes())
	if s.akPriv, err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
		return nil, fmt.Errorf("generate fake AK: %w", err)
	}
	s.akPublic = tpmtmpl.AK
	s.akPublic.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgRSA, &tpm2.TPM2BPublicKeyRSA{Buffer: s.akPriv.N.FillBytes(make([]byte, 256))})
	name, err := tpm2.ObjectName(&s.akPublic)
	if err != nil {
		return nil, fmt.Errorf("fake AK name: %w", err)
	}
	s.akName = *name
	if s.ecdhPriv, err = ecdh.P256().GenerateKey(rand.Reader); err != nil {
		return nil, err
	}
	if s.signer, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
		return nil, err
	}
	sealKey := make([]byte, 32)
	if _, err := rand.Read(sealKey); err != nil {
		return nil, err
	}
	block, err := aes.NewCipher(sealKey)
	if err != nil {
		return nil, err
	}
	if s.sealKey, err = cipher.NewGCM(block); err != nil {
		return nil, err
	}
	return s, nil
}

// withECCPoint returns tmpl with its unique field set to an uncompressed P-256 point,
// as CreatePrimary's output public area has.
func withECCPoint(tmpl tpm2.TPMTPublic, uncompressed []byte) tpm2.TPMTPublic {
	tmpl.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{
		X: tpm2.TPM2BECCParameter{Buffer: bytes.Clone(uncompressed[1:33])},
		Y: tpm2.TPM2BECCParameter{Buffer: bytes.Clone(uncompressed[33:65])},
	})
	return tmpl
}

func (s *SE) lock() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return ErrClosed
	}
	return nil
}

// Close implements attest.SE.
func (s *SE) Close() error {
	if err := s.lock(); err != nil {
		return err
	}
	defer s.mu.Unlock()
	s.closed = true
	return nil
}

// SetEKCertificate makes EndorsementKey return a certificate, as a TPM with one in NV.
func (s *SE) SetEKCertificate(der []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ekCert = bytes.Clone(der)
}

// EKPublicKey returns the EK as a Go key, for tests that issue an EK certificate.
func (s *SE) EKPublicKey() *ecdh.PublicKey { return s.ekPriv.PublicKey() }

// Reboot plays a host reboot: PCRs reset, resetCount increments, restartCount clears.
func (s *SE) Reboot() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.pcrs = [24][32]byte{}
	s.resetCount++
	s.restartCount = 0
}

// SetCounters overrides resetCount and restartCount, to play a TPM whose state was
// rolled back.
func (s *SE) SetCounters(resetCount, restartCount uint32) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.resetCount, s.restartCount = resetCount, restartCount
}

// CrashReboot plays a reboot after a crash or power loss: like Reboot, but the clock
// falls back by lost (the time since the TPM last saved it) and quotes report
// safe = NO, as the TPM specification prescribes.
func (s *SE) CrashReboot(lost time.Duration) {
	s.Reboot()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.clockOffset -= lost.Milliseconds()
	s.unsafe = true
}

// ShiftClock moves the TPM clock by d (negative: backwards).
func (s *SE) ShiftClock(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.clockOffset += d.Milliseconds()
}

// EndorsementKey implements attest.SE.
func (s *SE) EndorsementKey() (attest.EndorsementKey, error) {
	if err := s.lock(); err != nil {
		return attest.EndorsementKey{}, err
	}
	defer s.mu.Unlock()
	return attest.EndorsementKey{Public: tpm2.Marshal(s.ekPublic), Certificate: bytes.Clone(s.ekCert)}, nil
}

// AttestationKey implements attest.SE.
func (s *SE) AttestationKey() (attest.AttestationKey, error) {
	if err := s.lock(); err != nil {
		return attest.AttestationKey{}, err
	}
	defer s.mu.Unlock()
	return attest.AttestationKey{Public: tpm2.Marshal(s.akPublic)}, nil
}

// ActivateCredential implements attest.SE with the TPM's algorithm (TPM 2.0 Part 1,
// "Credential Protection"): recover the seed by ECDH with the EK, check the HMAC over
// the encrypted credential and the AK's name, then decrypt.
func (s *SE) ActivateCredential(credential, secret []byte) ([]byte, error) {
	if err := s.lock(); err != nil {
		return nil, err
	}
	defer s.mu.Unlock()
	eph, err := tpm2.Unmarshal[tpm2.TPMSECCPoint](secret)
	if err != nil {
		return nil, fmt.Errorf("activate credential: decode ephemeral point: %w", err)
	}
	if len(eph.X.Buffer) != 32 || len(eph.Y.Buffer) != 32 {
		return nil, errors.New("activate credential: ephemeral point is not a P-256 point")
	}
	ephPub, err := ecdh.P256().NewPublicKey(append(append([]byte{4}, eph.X.Buffer...), eph.Y.Buffer...))
	if err != nil {
		return nil, fmt.Errorf("activate credential: %w", err)
	}
	z, err := s.ekPriv.ECDH(ephPub)
	if err != nil {
		return nil, fmt.Errorf("activate credential: %w", err)
	}
	ekX := s.ekPriv.PublicKey().Bytes()[1:33]
	seed := tpm2.KDFe(crypto.SHA256, z, "IDENTITY", eph.X.Buffer, ekX, 256)

	if len(credential) < 2 {
		return nil, errors.New("activate credential: credential too short")
	}
	n := int(binary.BigEndian.Uint16(credential))
	if len(credential) < 2+n {
		return nil, errors.New("activate credential: integrity HMAC truncated")
	}
	integrity, encIdentity := credential[2:2+n], credential[2+n:]
	mac := hmac.New(sha256.New, tpm2.KDFa(crypto.SHA256, seed, "INTEGRITY", nil, nil, 256))
	mac.Write(encIdentity)
	mac.Write(s.akName.Buffer)
	if !hmac.Equal(mac.Sum(nil), integrity) {
		return nil, errors.New("activate credential: integrity check failed (credential not for this EK and AK)")
	}
	block, err := aes.NewCipher(tpm2.KDFa(crypto.SHA256, seed, "STORAGE", s.akName.Buffer, nil, 128))
	if err != nil {
		return nil, err
	}
	plain := make([]byte, len(encIdentity))
	// The TPM's credential blob is AES-CFB with a zero IV, authenticated by the HMAC
	// checked above (TPM 2.0 Part 1, "Protected Storage"): the fake must read what a
	// real TPM's verifier writes, so CFB it is.
	//lint:ignore SA1019 the TPM 2.0 wire format fixes CFB here
	cipher.NewCFBDecrypter(block, make([]byte, block.BlockSize())).XORKeyStream(plain, encIdentity)
	cred, err := tpm2.Unmarshal[tpm2.TPM2BDigest](plain)
	if err != nil {
		return nil, fmt.Errorf("activate credential: decode credential: %w", err)
	}
	return cred.Buffer, nil
}

// ReadPCRs implements attest.SE.
func (s *SE) ReadPCRs(indices []int) ([]attest.PCRValue, error) {
	if err := s.lock(); err != nil {
		return nil, err
	}
	defer s.mu.Unlock()
	out := make([]attest.PCRValue, 0, len(indices))
	for _, i := range indices {
		if i < 0 || i >= len(s.pcrs) {
			return nil, fmt.Errorf("read PCR %d: outside 0..23", i)
		}
		out = append(out, attest.PCRValue{Index: i, Digest: bytes.Clone(s.pcrs[i][:])})
	}
	return out, nil
}

// ExtendPCR implements attest.SE.
func (s *SE) ExtendPCR(index int, digest [32]byte) error {
	if err := s.lock(); err != nil {
		return err
	}
	defer s.mu.Unlock()
	if index < 0 || index >= len(s.pcrs) {
		return fmt.Errorf("extend PCR %d: outside 0..23", index)
	}
	s.pcrs[index] = sha256.Sum256(append(s.pcrs[index][:], digest[:]...))
	return nil
}

// Quote implements attest.SE.
func (s *SE) Quote(pcrs []int, qualifyingData []byte) (attest.Quote, error) {
	if err := s.lock(); err != nil {
		return attest.Quote{}, err
	}
	defer s.mu.Unlock()
	if len(qualifyingData) > 64 {
		return attest.Quote{}, errors.New("quote: qualifying data longer than a TPMT_HA")
	}
	sel := make([]uint, 0, len(pcrs))
	h := sha256.New()
	seen := map[int]bool{}
	for _, i := range pcrs {
		if i < 0 || i >= len(s.pcrs) {
			return attest.Quote{}, fmt.Errorf("quote: PCR %d outside 0..23", i)
		}
		seen[i] = true
		sel = append(sel, uint(i))
	}
	// The TPM hashes selected PCRs in ascending order, whatever order they were named in.
	for i := range s.pcrs {
		if seen[i] {
			h.Write(s.pcrs[i][:])
		}
	}
	att := tpm2.TPMSAttest{
		Magic:           tpm2.TPMGeneratedValue,
		Type:            tpm2.TPMSTAttestQuote,
		QualifiedSigner: s.qualifiedName(),
		ExtraData:       tpm2.TPM2BData{Buffer: bytes.Clone(qualifyingData)},
		ClockInfo: tpm2.TPMSClockInfo{
			Clock:        uint64(max(0, time.Since(s.start).Milliseconds()+initialClock+s.clockOffset)),
			ResetCount:   s.resetCount,
			RestartCount: s.restartCount,
			Safe:         !s.unsafe,
		},
		FirmwareVersion: 0x46414b45, // "FAKE"
		Attested: tpm2.NewTPMUAttest(tpm2.TPMSTAttestQuote, &tpm2.TPMSQuoteInfo{
			PCRSelect: tpm2.TPMLPCRSelection{PCRSelections: []tpm2.TPMSPCRSelection{
				{Hash: tpm2.TPMAlgSHA256, PCRSelect: tpm2.PCClientCompatible.PCRs(sel...)},
			}},
			PCRDigest: tpm2.TPM2BDigest{Buffer: h.Sum(nil)},
		}),
	}
	msg := tpm2.Marshal(att)
	return attest.Quote{Attest: msg, Signature: signTPMT(s.akPriv, msg)}, nil
}

// qualifiedName is the AK's qualified name as a primary key of the endorsement
// hierarchy: nameAlg ‖ SHA-256(QN(TPM_RH_ENDORSEMENT) ‖ name).
func (s *SE) qualifiedName() tpm2.TPM2BName {
	h := sha256.New()
	h.Write(tpm2.HandleName(tpm2.TPMRHEndorsement).Buffer)
	h.Write(s.akName.Buffer)
	return tpm2.TPM2BName{Buffer: append([]byte{0x00, 0x0b}, h.Sum(nil)...)}
}

// signTPMT signs SHA-256(msg) with RSASSA-PKCS1-v1_5 and encodes the signature as
// the TPM does.
func signTPMT(key *rsa.PrivateKey, msg []byte) []byte {
	d := sha256.Sum256(msg)
	sig, err := rsa.SignPKCS1v15(nil, key, crypto.SHA256, d[:])
	if err != nil {
		panic(fmt.Sprintf("fake SE: RSA sign: %v", err)) // cannot fail for a valid key and digest
	}
	return tpm2.Marshal(tpm2.TPMTSignature{
		SigAlg: tpm2.TPMAlgRSASSA,
		Signature: tpm2.NewTPMUSignature(tpm2.TPMAlgRSASSA, &tpm2.TPMSSignatureRSA{
			Hash: tpm2.TPMAlgSHA256,
			Sig:  tpm2.TPM2BPublicKeyRSA{Buffer: sig},
		}),
	})
}

// sealPolicy is what the fake binds a sealed blob to: the PCR list and their values.
func (s *SE) sealPolicy(pcrs []int) ([]byte, error) {
	aad := []byte("fake seal")
	for _, i := range pcrs {
		if i < 0 || i >= len(s.pcrs) {
			return nil, fmt.Errorf("PCR %d outside 0..23", i)
		}
		aad = append(aad, byte(i))
		aad = append(aad, s.pcrs[i][:]...)
	}
	return aad, nil
}

// Seal implements attest.SE: AES-GCM under a key only this instance holds, with the
// sealed PCRs' current values as associated data.
func (s *SE) Seal(data []byte, pcrs []int) ([]byte, error) {
	if len(data) == 0 || len(data) > 128 {
		return nil, fmt.Errorf("seal: %d bytes, want 1..128", len(data))
	}
	if len(pcrs) == 0 || len(pcrs) > 24 {
		return nil, fmt.Errorf("seal: %d PCRs", len(pcrs))
	}
	if err := s.lock(); err != nil {
		return nil, err
	}
	defer s.mu.Unlock()
	aad, err := s.sealPolicy(pcrs)
	if err != nil {
		return nil, fmt.Errorf("seal: %w", err)
	}
	blob := []byte{byte(len(pcrs))}
	for _, i := range pcrs {
		blob = append(blob, byte(i))
	}
	nonce := make([]byte, s.sealKey.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return nil, err
	}
	blob = append(blob, nonce...)
	return s.sealKey.Seal(blob, nonce, data, aad), nil
}

// Unseal implements attest.SE.
func (s *SE) Unseal(blob []byte) ([]byte, error) {
	if err := s.lock(); err != nil {
		return nil, err
	}
	defer s.mu.Unlock()
	if len(blob) < 1 || len(blob) < 1+int(blob[0])+s.sealKey.NonceSize() {
		return nil, errors.New("unseal: malformed blob")
	}
	pcrs := make([]int, blob[0])
	for i := range pcrs {
		pcrs[i] = int(blob[1+i])
	}
	aad, err := s.sealPolicy(pcrs)
	if err != nil {
		return nil, fmt.Errorf("unseal: %w", err)
	}
	rest := blob[1+len(pcrs):]
	nonce, ct := rest[:s.sealKey.NonceSize()], rest[s.sealKey.NonceSize():]
	data, err := s.sealKey.Open(nil, nonce, ct, aad)
	if err != nil {
		return nil, errors.New("unseal: policy check failed (a sealed PCR changed, or the blob is from another SE)")
	}
	return data, nil
}

// ECDHPublicKey implements attest.SE.
func (s *SE) ECDHPublicKey() (*ecdh.PublicKey, error) {
	if err := s.lock(); err != nil {
		return nil, err
	}
	defer s.mu.Unlock()
	return s.ecdhPriv.PublicKey(), nil
}

// ECDH implements attest.SE.
func (s *SE) ECDH(peer *ecdh.PublicKey) ([]byte, error) {
	if err := s.lock(); err != nil {
		return nil, err
	}
	defer s.mu.Unlock()
	if peer.Curve() != ecdh.P256() {
		return nil, errors.New("ECDH: peer key is not on P-256")
	}
	return s.ecdhPriv.ECDH(peer)
}

// SigningPublicKey implements attest.SE.
func (s *SE) SigningPublicKey() (*ecdsa.PublicKey, error) {
	if err := s.lock(); err != nil {
		return nil, err
	}
	defer s.mu.Unlock()
	return &s.signer.PublicKey, nil
}

// Sign implements attest.SE.
func (s *SE) Sign(digest []byte) ([]byte, error) {
	if err := s.lock(); err != nil {
		return nil, err
	}
	defer s.mu.Unlock()
	if len(digest) != sha256.Size {
		return nil, fmt.Errorf("sign: digest is %d bytes, want a SHA-256 digest", len(digest))
	}
	return ecdsa.SignASN1(rand.Reader, s.signer, digest)
}
