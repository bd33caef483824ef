package overlay

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/seed4c/moat/attest"
	"github.com/seed4c/moat/attest/tpm"
)

func testSealedKey(t *testing.T, se, other attest.SE) {
	path := filepath.Join(t.TempDir(), "state", "wg.sealed")
	k1, err := LoadOrCreateKey(se, path, []int{15})
	if err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(raw, k1[:]) {
		t.Fatal("the key file holds the private key in clear")
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode %v", fi.Mode().Perm())
	}
	k2, err := LoadOrCreateKey(se, path, []int{15})
	if err != nil || k2 != k1 {
		t.Fatalf("reload: %v (same key: %v)", err, k2 == k1)
	}
	// Another TPM cannot unseal it.
	if _, err := LoadOrCreateKey(other, path, []int{15}); !errors.Is(err, ErrKeySealed) {
		t.Fatalf("another SE: err = %v, want ErrKeySealed", err)
	}
	// The measured state changes: unsealing fails, no key is made, the file stays.
	if err := se.ExtendPCR(15, sha256.Sum256([]byte("a tampered binary"))); err != nil {
		t.Fatal(err)
	}
	_, err = LoadOrCreateKey(se, path, []int{15})
	if !errors.Is(err, ErrKeySealed) {
		t.Fatalf("after a PCR change: err = %v, want ErrKeySealed", err)
	}
	t.Logf("the node says: %v", err)
	if after, _ := os.ReadFile(path); !bytes.Equal(after, raw) {
		t.Fatal("the sealed key file changed after a failed unseal")
	}
	if err := os.WriteFile(path, []byte("MOAT-WG-SEALED-1\ngarbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadOrCreateKey(se, path, []int{15}); err == nil {
		t.Fatal("a garbage key file was accepted")
	}
}

func TestSealedKeyFake(t *testing.T) { testSealedKey(t, newFakeSE(t), newFakeSE(t)) }

// The same on the TPM reference implementation: TPM2_Create under a PCR policy,
// TPM2_Unseal through a policy session.
func TestSealedKeySimulator(t *testing.T) {
	se, err := tpm.OpenSimulator("")
	if err != nil {
		t.Fatal(err)
	}
	defer se.Close()
	testSealedKey(t, se, newFakeSE(t))
}

func TestPSKBothSidesAgree(t *testing.T) {
	seA, seB, seC := newFakeSE(t), newFakeSE(t), newFakeSE(t)
	party := func(se attest.SE, wg byte) Party {
		pub, _ := se.ECDHPublicKey()
		return Party{WireGuard: Key{wg}, ECDH: pub.Bytes()}
	}
	a, b := party(seA, 1), party(seB, 2)
	ab, err := DerivePSK(seA, a, b, 7)
	if err != nil {
		t.Fatal(err)
	}
	ba, err := DerivePSK(seB, b, a, 7)
	if err != nil || ab != ba {
		t.Fatalf("the two ends derive different PSKs (%v)", err)
	}
	next, _ := DerivePSK(seA, a, b, 8)
	if next == ab {
		t.Fatal("the PSK did not change with the epoch")
	}
	// C claims to be B (B's keys) but holds only its own TPM.
	cb, _ := DerivePSK(seC, b, a, 7)
	if cb == ab {
		t.Fatal("a third SE derived the pair's PSK")
	}
	if _, err := DerivePSK(seA, a, Party{WireGuard: Key{2}, ECDH: []byte{4, 1, 2}}, 7); err == nil {
		t.Fatal("a malformed peer key was used")
	}
}
