package overlay

import (
	"crypto/ecdh"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"

	"github.com/seed4c/moat/attest"
)

// Key is a Curve25519 key (WireGuard's static keys) or a pre-shared key: 32 bytes.
type Key [32]byte

// String renders a public key in WireGuard's base64 form. Never call it on a private or
// pre-shared key: nothing in this package does.
func (k Key) String() string { return base64.StdEncoding.EncodeToString(k[:]) }

// MarshalText renders a public key as String does, for JSON status documents.
func (k Key) MarshalText() ([]byte, error) { return []byte(k.String()), nil }

func (k Key) hex() string { return hex.EncodeToString(k[:]) }

// IsZero reports whether k is all zeros (no key).
func (k Key) IsZero() bool { return k == Key{} }

// ParseKey decodes a 32-byte key.
func ParseKey(b []byte) (Key, error) {
	var k Key
	if len(b) != len(k) {
		return k, fmt.Errorf("key is %d bytes, want %d", len(b), len(k))
	}
	copy(k[:], b)
	return k, nil
}

// PublicKey returns the Curve25519 public key of a private key.
func PublicKey(private Key) (Key, error) {
	priv, err := ecdh.X25519().NewPrivateKey(private[:])
	if err != nil {
		return Key{}, fmt.Errorf("overlay private key: %w", err)
	}
	return ParseKey(priv.PublicKey().Bytes())
}

// ErrKeySealed means the node's WireGuard key file exists but its SE refuses to unseal
// it: the measured state (the sealed PCRs) changed since the key was sealed, or the
// file comes from another TPM. The node cannot join the overlay: its peers know only
// the public key its earlier quotes vouched for, and a new key would have to be vouched
// for by a quote of the new state, which the verifier refuses if that state is not
// known-good.
var ErrKeySealed = errors.New("the overlay key cannot be unsealed: this node's measured state is not the one it was sealed in")

// sealedKeyMagic starts a sealed key file: magic ‖ the SE's opaque sealed blob.
const sealedKeyMagic = "MOAT-WG-SEALED-1\n"

// LoadOrCreateKey returns the node's WireGuard static private key, which exists on disk
// only sealed by se to the current values of pcrs (attest.SE.Seal). The first call on a
// node creates it (and the file, mode 0600, atomically); every later call unseals it.
// When unsealing fails the error wraps ErrKeySealed and no new key is made: replacing
// a key is an operator's decision (delete the file), never a fallback.
func LoadOrCreateKey(se attest.SE, path string, pcrs []int) (Key, error) {
	raw, err := os.ReadFile(path)
	switch {
	case err == nil:
		return unsealKey(se, path, raw)
	case !errors.Is(err, fs.ErrNotExist):
		return Key{}, fmt.Errorf("read the sealed overlay key: %w", err)
	}
	if len(pcrs) == 0 {
		return Key{}, errors.New("seal the overlay key: no PCR to seal it to")
	}
	priv, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		return Key{}, fmt.Errorf("create the overlay key: %w", err)
	}
	key, _ := ParseKey(priv.Bytes())
	blob, err := se.Seal(key[:], slices.Clone(pcrs))
	if err != nil {
		return Key{}, fmt.Errorf("seal the overlay key to PCRs %v: %w", pcrs, err)
	}
	if err := writeFileAtomic(path, append([]byte(sealedKeyMagic), blob...)); err != nil {
		return Key{}, fmt.Errorf("store the sealed overlay key: %w", err)
	}
	return key, nil
}

func unsealKey(se attest.SE, path string, raw []byte) (Key, error) {
	if len(raw) <= len(sealedKeyMagic) || string(raw[:len(sealedKeyMagic)]) != sealedKeyMagic {
		return Key{}, fmt.Errorf("%s is not a sealed overlay key", path)
	}
	data, err := se.Unseal(raw[len(sealedKeyMagic):])
	if err != nil {
		return Key{}, fmt.Errorf("%w (%s: %v); the node cannot join until its state is known-good again, or an operator deletes the file so that a new key is created and vouched for by a fresh attestation", ErrKeySealed, path, err)
	}
	key, err := ParseKey(data)
	if err != nil {
		return Key{}, fmt.Errorf("unsealed overlay key from %s: %w", path, err)
	}
	return key, nil
}

func writeFileAtomic(path string, data []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	f, err := os.CreateTemp(filepath.Dir(path), ".overlay-key-*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}
