// Package tpm implements attest.SE on a TPM 2.0 through go-tpm's tpm2 package. The
// same code drives the three kinds of TPM moat uses; only the transport differs:
//
//   - the in-process simulator (Microsoft's reference TPM, go-tpm-tools, cgo): the
//     default for tests and the demo; one per process at a time;
//   - swtpm over its socket (unix or TCP, loopback only);
//   - a hardware TPM through the kernel's resource manager, /dev/tpmrm0.
//
// All keys are primary keys derived from the TPM's hierarchy seeds and a fixed
// template, so they are the same after every restart of the agent without storing any
// key blob: the EK (TCG template, or the provisioned one at the standard persistent
// handle) and the AK in the endorsement hierarchy, the ECDH, signing and storage keys in
// the owner hierarchy.
package tpm

import (
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"encoding/asn1"
	"errors"
	"fmt"
	"math/big"
	"slices"
	"sync"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/seed4c/moat/attest"
	"github.com/seed4c/moat/attest/internal/tpmtmpl"
)

// EKAlgorithm picks which of the TPM's endorsement keys the SE presents.
type EKAlgorithm string

const (
	// EKECC is the ECC P-256 EK (TCG template L-2): fast to create, and certified by
	// most TPM vendors since 2018.
	EKECC EKAlgorithm = "ecc"
	// EKRSA is the RSA-2048 EK (TCG template L-1): the one every certified TPM has.
	EKRSA EKAlgorithm = "rsa"
)

// ErrClosed is returned by every method after Close.
var ErrClosed = errors.New("TPM SE is closed")

// key is one of the SE's primary keys. A TPM holds only a few objects at once
// (three in the reference implementation and in most chips; the kernel's resource
// manager hides that, swtpm's socket and the simulator do not), so keys not in use are
// context-saved and flushed, and loaded back on use: far cheaper than recreating a
// primary key.
type key struct {
	handle tpm2.TPMHandle // valid while loaded
	loaded bool
	saved  *tpm2.TPMSContext // set while not loaded
	name   tpm2.TPM2BName
	public tpm2.TPMTPublic
	// persistent keys (a provisioned EK) live in NV: never saved, flushed or counted.
	persistent bool
	lastUse    uint64
}

func (k *key) auth() tpm2.AuthHandle {
	return tpm2.AuthHandle{Handle: k.handle, Name: k.name, Auth: tpm2.PasswordAuth(nil)}
}

// maxLoaded is how many of the SE's keys may be loaded at once; one more object slot
// is left for a temporary object (a sealed blob being unsealed).
const maxLoaded = 2

// SE is an attest.SE on a TPM. Its methods are safe for concurrent use: a mutex
// serializes the commands, since a TPM executes one at a time anyway.
type SE struct {
	mu     sync.Mutex
	tpm    transport.TPMCloser
	plat   platform // nil unless the transport can power-cycle the TPM
	ekAlg  EKAlgorithm
	closed bool

	ek, ak, srk, ecdhKey, signer *key
	useCounter                   uint64
}

var _ attest.SE = (*SE)(nil)

// platform is what a simulated TPM can do that a real one cannot: be rebooted, or be
// replaced by another TPM, on command. Tests use it to reboot hosts and swap TPMs.
type platform interface {
	Reset() error
	ManufactureReset() error
}

// New wraps an open TPM transport. The SE owns t and closes it in Close.
func New(t transport.TPMCloser, ekAlg EKAlgorithm) (*SE, error) {
	switch ekAlg {
	case "":
		ekAlg = EKECC
	case EKECC, EKRSA:
	default:
		return nil, fmt.Errorf("new TPM SE: unknown EK algorithm %q (want %q or %q)", ekAlg, EKECC, EKRSA)
	}
	return &SE{tpm: t, ekAlg: ekAlg}, nil
}

// Transport gives raw access to the TPM. Commands sent through it bypass the SE's
// invariants (which keys exist, which bank is quoted); it exists for diagnostics and
// for tests that play a hostile agent, and must be used under no concurrent SE call.
func (s *SE) Transport() transport.TPM { return s.tpm }

func (s *SE) lock() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return ErrClosed
	}
	return nil
}

// Close flushes the transient keys and closes the transport.
func (s *SE) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	s.closed = true
	errs := []error{s.flushAll()}
	errs = append(errs, s.tpm.Close())
	return errors.Join(errs...)
}

func (s *SE) keys() []*key {
	var out []*key
	for _, k := range []*key{s.ek, s.ak, s.srk, s.ecdhKey, s.signer} {
		if k != nil {
			out = append(out, k)
		}
	}
	return out
}

func (s *SE) flushAll() error {
	var errs []error
	for _, k := range s.keys() {
		if k.loaded && !k.persistent {
			if _, err := (tpm2.FlushContext{FlushHandle: k.handle}).Execute(s.tpm); err != nil {
				errs = append(errs, fmt.Errorf("flush key %#x: %w", k.handle, err))
			}
		}
	}
	s.forgetKeys()
	return errors.Join(errs...)
}

// makeRoom saves and flushes least recently used keys until fewer than maxLoaded of
// them are loaded, never touching the pinned ones.
func (s *SE) makeRoom(pinned ...*key) error {
	for {
		var loaded int
		var victim *key
		for _, k := range s.keys() {
			if !k.loaded || k.persistent {
				continue
			}
			loaded++
			if !slices.Contains(pinned, k) && (victim == nil || k.lastUse < victim.lastUse) {
				victim = k
			}
		}
		if loaded < maxLoaded {
			return nil
		}
		if victim == nil {
			return errors.New("no TPM object slot free")
		}
		saved, err := tpm2.ContextSave{SaveHandle: victim.handle}.Execute(s.tpm)
		if err != nil {
			return fmt.Errorf("save key context %#x: %w", victim.handle, err)
		}
		if _, err := (tpm2.FlushContext{FlushHandle: victim.handle}).Execute(s.tpm); err != nil {
			return fmt.Errorf("flush key %#x: %w", victim.handle, err)
		}
		victim.saved, victim.loaded = &saved.Context, false
	}
}

// ensure makes k loaded (loading its saved context if needed) while keeping the
// pinned keys loaded.
func (s *SE) ensure(k *key, pinned ...*key) error {
	s.useCounter++
	k.lastUse = s.useCounter
	if k.loaded || k.persistent {
		return nil
	}
	if err := s.makeRoom(append(pinned, k)...); err != nil {
		return err
	}
	rsp, err := tpm2.ContextLoad{Context: *k.saved}.Execute(s.tpm)
	if err != nil {
		return fmt.Errorf("load key context: %w", err)
	}
	k.handle, k.loaded, k.saved = rsp.LoadedHandle, true, nil
	return nil
}

// primary returns the key in *slot, loaded, creating it on first use.
func (s *SE) primary(slot **key, hierarchy tpm2.TPMHandle, tmpl tpm2.TPMTPublic, what string, pinned ...*key) (*key, error) {
	if *slot != nil {
		return *slot, s.ensure(*slot, pinned...)
	}
	if err := s.makeRoom(pinned...); err != nil {
		return nil, fmt.Errorf("create %s: %w", what, err)
	}
	k, err := s.createPrimary(hierarchy, tmpl, what)
	if err != nil {
		return nil, err
	}
	s.useCounter++
	k.lastUse = s.useCounter
	*slot = k
	return k, nil
}

// Reboot power-cycles a simulated TPM as a host reboot would: PCRs reset, resetCount
// increments, transient keys are gone (they are recreated on next use, identical).
func (s *SE) Reboot() error {
	return s.platformReset("reboot", func(p platform) error { return p.Reset() })
}

// ReplaceTPM turns a simulated TPM into another TPM (new hierarchy seeds, so new EK and
// AK), as if the host's TPM had been swapped. Tests use it to play "an AK from a
// different TPM than the EK".
func (s *SE) ReplaceTPM() error {
	return s.platformReset("replace TPM", func(p platform) error { return p.ManufactureReset() })
}

// platformReset runs a reset of the simulated platform; the cached key handles die
// with it.
func (s *SE) platformReset(what string, reset func(platform) error) error {
	if err := s.lock(); err != nil {
		return err
	}
	defer s.mu.Unlock()
	if s.plat == nil {
		return fmt.Errorf("%s: this TPM transport is not a simulator", what)
	}
	s.forgetKeys()
	if err := reset(s.plat); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	return nil
}

// forgetKeys drops cached handles that a TPM reset made invalid.
func (s *SE) forgetKeys() { s.ek, s.ak, s.srk, s.ecdhKey, s.signer = nil, nil, nil, nil, nil }

// createPrimary creates (or recreates: it is deterministic) a primary key.
func (s *SE) createPrimary(hierarchy tpm2.TPMHandle, tmpl tpm2.TPMTPublic, what string) (*key, error) {
	rsp, err := tpm2.CreatePrimary{PrimaryHandle: hierarchy, InPublic: tpm2.New2B(tmpl)}.Execute(s.tpm)
	if err != nil {
		return nil, fmt.Errorf("create %s: %w", what, err)
	}
	pub, err := rsp.OutPublic.Contents()
	if err != nil {
		return nil, fmt.Errorf("decode %s public area: %w", what, err)
	}
	return &key{handle: rsp.ObjectHandle, loaded: true, name: rsp.Name, public: *pub}, nil
}

func (s *SE) ekKey(pinned ...*key) (*key, error) {
	if s.ek != nil {
		return s.ek, s.ensure(s.ek, pinned...)
	}
	persistent, tmpl := tpmtmpl.EKHandleECC, tpm2.ECCEKTemplate
	if s.ekAlg == EKRSA {
		persistent, tmpl = tpmtmpl.EKHandleRSA, tpm2.RSAEKTemplate
	}
	// A provisioned TPM keeps its EK at the standard handle; use it when its public
	// area is the standard template's type, else derive it from the template.
	if rsp, err := (tpm2.ReadPublic{ObjectHandle: persistent}).Execute(s.tpm); err == nil {
		if pub, err := rsp.OutPublic.Contents(); err == nil && pub.Type == tmpl.Type {
			s.ek = &key{handle: persistent, name: rsp.Name, public: *pub, persistent: true}
			return s.ek, nil
		}
	}
	return s.primary(&s.ek, tpm2.TPMRHEndorsement, tmpl, "endorsement key", pinned...)
}

func (s *SE) akKey(pinned ...*key) (*key, error) {
	return s.primary(&s.ak, tpm2.TPMRHEndorsement, tpmtmpl.AK, "attestation key", pinned...)
}

// EndorsementKey implements attest.SE.
func (s *SE) EndorsementKey() (attest.EndorsementKey, error) {
	if err := s.lock(); err != nil {
		return attest.EndorsementKey{}, err
	}
	defer s.mu.Unlock()
	k, err := s.ekKey()
	if err != nil {
		return attest.EndorsementKey{}, err
	}
	index := tpmtmpl.EKCertIndexECC
	if s.ekAlg == EKRSA {
		index = tpmtmpl.EKCertIndexRSA
	}
	cert, err := s.readNV(index)
	if err != nil {
		return attest.EndorsementKey{}, fmt.Errorf("read EK certificate: %w", err)
	}
	return attest.EndorsementKey{Public: tpm2.Marshal(k.public), Certificate: cert}, nil
}

// readNV reads a whole NV index; an index that does not exist yields nil, nil.
func (s *SE) readNV(index tpm2.TPMHandle) ([]byte, error) {
	pubRsp, err := (tpm2.NVReadPublic{NVIndex: index}).Execute(s.tpm)
	if err != nil {
		if errors.Is(err, tpm2.TPMRCHandle) {
			return nil, nil
		}
		return nil, fmt.Errorf("read NV index %#x public area: %w", index, err)
	}
	nvPub, err := pubRsp.NVPublic.Contents()
	if err != nil {
		return nil, fmt.Errorf("decode NV index %#x public area: %w", index, err)
	}
	auth := tpm2.AuthHandle{Handle: index, Name: pubRsp.NVName, Auth: tpm2.PasswordAuth(nil)}
	out := make([]byte, 0, nvPub.DataSize)
	for off := 0; off < int(nvPub.DataSize); off += tpmtmpl.NVChunkSize {
		n := min(tpmtmpl.NVChunkSize, int(nvPub.DataSize)-off)
		rsp, err := tpm2.NVRead{AuthHandle: auth, NVIndex: tpm2.NamedHandle{Handle: index, Name: pubRsp.NVName}, Size: uint16(n), Offset: uint16(off)}.Execute(s.tpm)
		if err != nil {
			return nil, fmt.Errorf("read NV index %#x at %d: %w", index, off, err)
		}
		out = append(out, rsp.Data.Buffer...)
	}
	return out, nil
}

// WriteEKCertificate stores an EK certificate in the TPM's NV at the standard index,
// as a TPM manufacturer (or swtpm_setup) does. It exists so tests and lab setups can
// give a simulated TPM a certificate from their own CA.
func (s *SE) WriteEKCertificate(der []byte) error {
	if err := s.lock(); err != nil {
		return err
	}
	defer s.mu.Unlock()
	index := tpmtmpl.EKCertIndexECC
	if s.ekAlg == EKRSA {
		index = tpmtmpl.EKCertIndexRSA
	}
	owner := tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: tpm2.PasswordAuth(nil)}
	def := tpm2.NVDefineSpace{
		AuthHandle: owner,
		PublicInfo: tpm2.New2B(tpm2.TPMSNVPublic{
			NVIndex: index,
			NameAlg: tpm2.TPMAlgSHA256,
			Attributes: tpm2.TPMANV{
				OwnerWrite: true, OwnerRead: true, AuthRead: true, AuthWrite: true, NoDA: true,
				NT: tpm2.TPMNTOrdinary,
			},
			DataSize: uint16(len(der)),
		}),
	}
	if _, err := def.Execute(s.tpm); err != nil {
		return fmt.Errorf("define EK certificate NV index %#x: %w", index, err)
	}
	pubRsp, err := (tpm2.NVReadPublic{NVIndex: index}).Execute(s.tpm)
	if err != nil {
		return fmt.Errorf("read back NV index %#x: %w", index, err)
	}
	nv := tpm2.NamedHandle{Handle: index, Name: pubRsp.NVName}
	for off := 0; off < len(der); off += tpmtmpl.NVChunkSize {
		end := min(off+tpmtmpl.NVChunkSize, len(der))
		w := tpm2.NVWrite{AuthHandle: owner, NVIndex: nv, Data: tpm2.TPM2BMaxNVBuffer{Buffer: der[off:end]}, Offset: uint16(off)}
		if _, err := w.Execute(s.tpm); err != nil {
			return fmt.Errorf("write EK certificate at %d: %w", off, err)
		}
	}
	return nil
}

// AttestationKey implements attest.SE.
func (s *SE) AttestationKey() (attest.AttestationKey, error) {
	if err := s.lock(); err != nil {
		return attest.AttestationKey{}, err
	}
	defer s.mu.Unlock()
	k, err := s.akKey()
	if err != nil {
		return attest.AttestationKey{}, err
	}
	return attest.AttestationKey{Public: tpm2.Marshal(k.public)}, nil
}

// ekPolicy satisfies the TCG EK's authPolicy, PolicySecret(TPM_RH_ENDORSEMENT).
func ekPolicy(t transport.TPM, handle tpm2.TPMISHPolicy, nonceTPM tpm2.TPM2BNonce) error {
	_, err := tpm2.PolicySecret{AuthHandle: tpm2.TPMRHEndorsement, PolicySession: handle, NonceTPM: nonceTPM}.Execute(t)
	return err
}

// ActivateCredential implements attest.SE.
func (s *SE) ActivateCredential(credential, secret []byte) ([]byte, error) {
	if err := s.lock(); err != nil {
		return nil, err
	}
	defer s.mu.Unlock()
	ek, err := s.ekKey()
	if err != nil {
		return nil, err
	}
	ak, err := s.akKey(ek)
	if err != nil {
		return nil, err
	}
	rsp, err := tpm2.ActivateCredential{
		ActivateHandle: ak.auth(),
		KeyHandle:      tpm2.AuthHandle{Handle: ek.handle, Name: ek.name, Auth: tpm2.Policy(tpm2.TPMAlgSHA256, 16, ekPolicy)},
		CredentialBlob: tpm2.TPM2BIDObject{Buffer: credential},
		Secret:         tpm2.TPM2BEncryptedSecret{Buffer: secret},
	}.Execute(s.tpm)
	if err != nil {
		return nil, fmt.Errorf("activate credential: %w", err)
	}
	return rsp.CertInfo.Buffer, nil
}

func sha256Selection(indices []int) (tpm2.TPMLPCRSelection, error) {
	pcrs := make([]uint, len(indices))
	for i, idx := range indices {
		if idx < 0 || idx > 23 {
			return tpm2.TPMLPCRSelection{}, fmt.Errorf("PCR %d outside 0..23", idx)
		}
		pcrs[i] = uint(idx)
	}
	return tpm2.TPMLPCRSelection{PCRSelections: []tpm2.TPMSPCRSelection{
		{Hash: tpm2.TPMAlgSHA256, PCRSelect: tpm2.PCClientCompatible.PCRs(pcrs...)},
	}}, nil
}

// ReadPCRs implements attest.SE. PCRs are read one per command so the values cannot
// be misattributed when a TPM returns fewer than asked.
func (s *SE) ReadPCRs(indices []int) ([]attest.PCRValue, error) {
	if err := s.lock(); err != nil {
		return nil, err
	}
	defer s.mu.Unlock()
	out := make([]attest.PCRValue, 0, len(indices))
	for _, idx := range indices {
		sel, err := sha256Selection([]int{idx})
		if err != nil {
			return nil, fmt.Errorf("read PCR: %w", err)
		}
		rsp, err := tpm2.PCRRead{PCRSelectionIn: sel}.Execute(s.tpm)
		if err != nil {
			return nil, fmt.Errorf("read PCR %d: %w", idx, err)
		}
		if len(rsp.PCRValues.Digests) != 1 || len(rsp.PCRValues.Digests[0].Buffer) != sha256.Size {
			return nil, fmt.Errorf("read PCR %d: TPM returned %d values (is the SHA-256 bank allocated?)", idx, len(rsp.PCRValues.Digests))
		}
		out = append(out, attest.PCRValue{Index: idx, Digest: slices.Clone(rsp.PCRValues.Digests[0].Buffer)})
	}
	return out, nil
}

// ExtendPCR implements attest.SE.
func (s *SE) ExtendPCR(index int, digest [32]byte) error {
	if err := s.lock(); err != nil {
		return err
	}
	defer s.mu.Unlock()
	if index < 0 || index > 23 {
		return fmt.Errorf("extend PCR %d: outside 0..23", index)
	}
	_, err := tpm2.PCRExtend{
		PCRHandle: tpm2.AuthHandle{Handle: tpm2.TPMHandle(index), Auth: tpm2.PasswordAuth(nil)},
		Digests:   tpm2.TPMLDigestValues{Digests: []tpm2.TPMTHA{{HashAlg: tpm2.TPMAlgSHA256, Digest: digest[:]}}},
	}.Execute(s.tpm)
	if err != nil {
		return fmt.Errorf("extend PCR %d: %w", index, err)
	}
	return nil
}

// Quote implements attest.SE.
func (s *SE) Quote(pcrs []int, qualifyingData []byte) (attest.Quote, error) {
	sel, err := sha256Selection(pcrs)
	if err != nil {
		return attest.Quote{}, fmt.Errorf("quote: %w", err)
	}
	return s.QuoteSelection(sel, qualifyingData)
}

// QuoteSelection quotes an arbitrary PCR selection (any bank). attest.SE's Quote
// covers the SHA-256 bank only; this exists for tests that play an agent quoting SHA-1.
func (s *SE) QuoteSelection(sel tpm2.TPMLPCRSelection, qualifyingData []byte) (attest.Quote, error) {
	if err := s.lock(); err != nil {
		return attest.Quote{}, err
	}
	defer s.mu.Unlock()
	ak, err := s.akKey()
	if err != nil {
		return attest.Quote{}, err
	}
	rsp, err := tpm2.Quote{
		SignHandle:     ak.auth(),
		QualifyingData: tpm2.TPM2BData{Buffer: qualifyingData},
		InScheme:       tpm2.TPMTSigScheme{Scheme: tpm2.TPMAlgNull},
		PCRSelect:      sel,
	}.Execute(s.tpm)
	if err != nil {
		return attest.Quote{}, fmt.Errorf("quote: %w", err)
	}
	return attest.Quote{Attest: slices.Clone(rsp.Quoted.Bytes()), Signature: tpm2.Marshal(rsp.Signature)}, nil
}

func (s *SE) srkKey() (*key, error) {
	return s.primary(&s.srk, tpm2.TPMRHOwner, tpm2.ECCSRKTemplate, "storage root key")
}

// pcrPolicy runs PolicyPCR (current values) in the session: the policy Seal binds the
// data object to, and the one Unseal must satisfy.
func pcrPolicy(sel tpm2.TPMLPCRSelection) tpm2.PolicyCallback {
	return func(t transport.TPM, handle tpm2.TPMISHPolicy, _ tpm2.TPM2BNonce) error {
		_, err := tpm2.PolicyPCR{PolicySession: handle, Pcrs: sel}.Execute(t)
		return err
	}
}

// MaxSealedSize is the most a TPM seals in one object (MAX_SYM_DATA).
const MaxSealedSize = 128

// Seal implements attest.SE. The policy is computed by the TPM itself in a trial
// session over the current PCR values.
func (s *SE) Seal(data []byte, pcrs []int) ([]byte, error) {
	if len(data) == 0 || len(data) > MaxSealedSize {
		return nil, fmt.Errorf("seal: %d bytes, want 1..%d", len(data), MaxSealedSize)
	}
	sel, err := sha256Selection(pcrs)
	if err != nil {
		return nil, fmt.Errorf("seal: %w", err)
	}
	if err := s.lock(); err != nil {
		return nil, err
	}
	defer s.mu.Unlock()
	trial, closeTrial, err := tpm2.PolicySession(s.tpm, tpm2.TPMAlgSHA256, 16, tpm2.Trial())
	if err != nil {
		return nil, fmt.Errorf("seal: start trial session: %w", err)
	}
	defer closeTrial()
	if err := pcrPolicy(sel)(s.tpm, trial.Handle(), trial.NonceTPM()); err != nil {
		return nil, fmt.Errorf("seal: trial PolicyPCR: %w", err)
	}
	digest, err := tpm2.PolicyGetDigest{PolicySession: trial.Handle()}.Execute(s.tpm)
	if err != nil {
		return nil, fmt.Errorf("seal: policy digest: %w", err)
	}
	srk, err := s.srkKey()
	if err != nil {
		return nil, fmt.Errorf("seal: %w", err)
	}
	rsp, err := tpm2.Create{
		ParentHandle: srk.auth(),
		InSensitive: tpm2.TPM2BSensitiveCreate{Sensitive: &tpm2.TPMSSensitiveCreate{
			Data: tpm2.NewTPMUSensitiveCreate(&tpm2.TPM2BSensitiveData{Buffer: data}),
		}},
		InPublic: tpm2.New2B(tpmtmpl.Sealed(digest.PolicyDigest.Buffer)),
	}.Execute(s.tpm)
	if err != nil {
		return nil, fmt.Errorf("seal: create sealed object: %w", err)
	}
	return encodeSealed(sealedBlob{PCRs: slices.Clone(pcrs), Public: tpm2.Marshal(rsp.OutPublic), Private: tpm2.Marshal(rsp.OutPrivate)}), nil
}

// Unseal implements attest.SE.
func (s *SE) Unseal(blob []byte) ([]byte, error) {
	b, err := decodeSealed(blob)
	if err != nil {
		return nil, fmt.Errorf("unseal: %w", err)
	}
	sel, err := sha256Selection(b.PCRs)
	if err != nil {
		return nil, fmt.Errorf("unseal: %w", err)
	}
	pub, err := tpm2.Unmarshal[tpm2.TPM2BPublic](b.Public)
	if err != nil {
		return nil, fmt.Errorf("unseal: decode public area: %w", err)
	}
	priv, err := tpm2.Unmarshal[tpm2.TPM2BPrivate](b.Private)
	if err != nil {
		return nil, fmt.Errorf("unseal: decode private area: %w", err)
	}
	if err := s.lock(); err != nil {
		return nil, err
	}
	defer s.mu.Unlock()
	srk, err := s.srkKey()
	if err != nil {
		return nil, fmt.Errorf("unseal: %w", err)
	}
	loaded, err := tpm2.Load{ParentHandle: srk.auth(), InPrivate: *priv, InPublic: *pub}.Execute(s.tpm)
	if err != nil {
		return nil, fmt.Errorf("unseal: load sealed object: %w", err)
	}
	defer tpm2.FlushContext{FlushHandle: loaded.ObjectHandle}.Execute(s.tpm)
	rsp, err := tpm2.Unseal{ItemHandle: tpm2.AuthHandle{
		Handle: loaded.ObjectHandle, Name: loaded.Name,
		Auth: tpm2.Policy(tpm2.TPMAlgSHA256, 16, pcrPolicy(sel)),
	}}.Execute(s.tpm)
	if err != nil {
		return nil, fmt.Errorf("unseal (did a sealed PCR change?): %w", err)
	}
	return rsp.OutData.Buffer, nil
}

func (s *SE) ecdhPrimary() (*key, error) {
	return s.primary(&s.ecdhKey, tpm2.TPMRHOwner, tpmtmpl.ECDH, "key-agreement key")
}

// ECDHPublicKey implements attest.SE.
func (s *SE) ECDHPublicKey() (*ecdh.PublicKey, error) {
	if err := s.lock(); err != nil {
		return nil, err
	}
	defer s.mu.Unlock()
	k, err := s.ecdhPrimary()
	if err != nil {
		return nil, err
	}
	return eccPublic(k.public)
}

func eccPublic(pub tpm2.TPMTPublic) (*ecdh.PublicKey, error) {
	parms, err := pub.Parameters.ECCDetail()
	if err != nil {
		return nil, fmt.Errorf("ECC parameters: %w", err)
	}
	point, err := pub.Unique.ECC()
	if err != nil {
		return nil, fmt.Errorf("ECC point: %w", err)
	}
	return tpm2.ECDHPub(parms, point)
}

// ECDH implements attest.SE.
func (s *SE) ECDH(peer *ecdh.PublicKey) ([]byte, error) {
	if peer.Curve() != ecdh.P256() {
		return nil, errors.New("ECDH: peer key is not on P-256")
	}
	raw := peer.Bytes() // 0x04 ‖ X ‖ Y
	point := tpm2.TPMSECCPoint{X: tpm2.TPM2BECCParameter{Buffer: raw[1:33]}, Y: tpm2.TPM2BECCParameter{Buffer: raw[33:]}}
	if err := s.lock(); err != nil {
		return nil, err
	}
	defer s.mu.Unlock()
	k, err := s.ecdhPrimary()
	if err != nil {
		return nil, err
	}
	rsp, err := tpm2.ECDHZGen{KeyHandle: k.auth(), InPoint: tpm2.New2B(point)}.Execute(s.tpm)
	if err != nil {
		return nil, fmt.Errorf("ECDH_ZGen: %w", err)
	}
	out, err := rsp.OutPoint.Contents()
	if err != nil {
		return nil, fmt.Errorf("ECDH_ZGen: decode point: %w", err)
	}
	z := make([]byte, 32)
	copy(z[32-len(out.X.Buffer):], out.X.Buffer)
	return z, nil
}

func (s *SE) signingKey() (*key, error) {
	return s.primary(&s.signer, tpm2.TPMRHOwner, tpmtmpl.Signing, "signing key")
}

// SigningPublicKey implements attest.SE.
func (s *SE) SigningPublicKey() (*ecdsa.PublicKey, error) {
	if err := s.lock(); err != nil {
		return nil, err
	}
	defer s.mu.Unlock()
	k, err := s.signingKey()
	if err != nil {
		return nil, err
	}
	pub, err := eccPublic(k.public) // validates the point
	if err != nil {
		return nil, fmt.Errorf("signing key: %w", err)
	}
	return ecdsa.ParseUncompressedPublicKey(elliptic.P256(), pub.Bytes())
}

// Sign implements attest.SE.
func (s *SE) Sign(digest []byte) ([]byte, error) {
	if len(digest) != sha256.Size {
		return nil, fmt.Errorf("sign: digest is %d bytes, want a SHA-256 digest", len(digest))
	}
	if err := s.lock(); err != nil {
		return nil, err
	}
	defer s.mu.Unlock()
	k, err := s.signingKey()
	if err != nil {
		return nil, err
	}
	rsp, err := tpm2.Sign{
		KeyHandle:  k.auth(),
		Digest:     tpm2.TPM2BDigest{Buffer: digest},
		InScheme:   tpm2.TPMTSigScheme{Scheme: tpm2.TPMAlgNull},
		Validation: tpm2.TPMTTKHashCheck{Tag: tpm2.TPMSTHashCheck, Hierarchy: tpm2.TPMRHNull},
	}.Execute(s.tpm)
	if err != nil {
		return nil, fmt.Errorf("sign: %w", err)
	}
	sig, err := rsp.Signature.Signature.ECDSA()
	if err != nil {
		return nil, fmt.Errorf("sign: not an ECDSA signature: %w", err)
	}
	return asn1.Marshal(struct{ R, S *big.Int }{
		new(big.Int).SetBytes(sig.SignatureR.Buffer), new(big.Int).SetBytes(sig.SignatureS.Buffer),
	})
}
