package auth

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/seed4c/moat/controlapi/kv"
)

func TestTokens(t *testing.T) {
	store := kv.NewMem()
	toks := New(store, nil)
	secret, tok, err := toks.Create("alice", RoleTenantAdmin, "a")
	if err != nil {
		t.Fatal(err)
	}
	p, err := toks.Authenticate(secret)
	if err != nil || p.Role != RoleTenantAdmin || p.Tenant != "a" || p.TokenID != tok.ID || p.Name != "alice" {
		t.Fatalf("authenticate: %+v %v", p, err)
	}
	// Only the hash is stored. The secret is base64url and may itself contain
	// '_', so it is everything after the id, not the third '_'-separated field.
	id, sec, _ := strings.Cut(strings.TrimPrefix(secret, prefix), "_")
	if id != tok.ID || len(sec) != 43 {
		t.Fatalf("secret %q: id %q, %d secret characters", secret, id, len(sec))
	}
	store.View(func(tx kv.Tx) error {
		raw, _ := tx.Get(bucket, tok.ID)
		if strings.Contains(string(raw), sec) {
			t.Error("the secret is stored in clear")
		}
		return nil
	})
	flip := []byte(sec)
	flip[0] ^= 1
	for name, bad := range map[string]string{
		"empty": "", "wrong secret": prefix + id + "_" + string(flip), "unknown id": prefix + "000000000000_" + sec,
		"no prefix": id + "_" + sec, "truncated": secret[:len(secret)-1], "garbage": "Bearer x",
	} {
		if _, err := toks.Authenticate(bad); !errors.Is(err, ErrUnauthenticated) {
			t.Errorf("%s: %v", name, err)
		}
	}
	if err := toks.Delete(tok.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := toks.Authenticate(secret); !errors.Is(err, ErrUnauthenticated) {
		t.Errorf("revoked token still works: %v", err)
	}
	if err := toks.Delete(tok.ID); !errors.Is(err, ErrNotFound) {
		t.Errorf("delete twice: %v", err)
	}
	for _, c := range []struct {
		role   Role
		tenant string
	}{{RoleTenantAdmin, ""}, {RoleOperator, "a"}, {"root", ""}} {
		if _, _, err := toks.Create("x", c.role, c.tenant); err == nil {
			t.Errorf("created a %s token for tenant %q", c.role, c.tenant)
		}
	}
}

// TestTokensWithUnderscore checks secrets that contain the separator itself:
// base64url uses '_', and about half of all secrets have one.
func TestTokensWithUnderscore(t *testing.T) {
	toks := New(kv.NewMem(), nil)
	found := 0
	for i := 0; i < 200 && found < 5; i++ {
		secret, tok, err := toks.Create("bob", RoleOperator, "")
		if err != nil {
			t.Fatal(err)
		}
		if strings.Count(secret, "_") < 3 {
			continue
		}
		found++
		if p, err := toks.Authenticate(secret); err != nil || p.TokenID != tok.ID {
			t.Errorf("secret %q with '_' inside: %+v %v", secret, p, err)
		}
	}
	if found == 0 {
		t.Fatal("no secret with '_' in 200 tokens")
	}
}

func TestRoles(t *testing.T) {
	op := Principal{Role: RoleOperator}
	ad := Principal{Role: RoleTenantAdmin, Tenant: "a"}
	au := Principal{Role: RoleAuditor}
	for _, c := range []struct {
		p                                      Principal
		readA, readB, writeA, writeB, operator bool
	}{
		{op, true, true, true, true, true},
		{ad, true, false, true, false, false},
		{au, true, true, false, false, false},
	} {
		if c.p.CanRead("a") != c.readA || c.p.CanRead("b") != c.readB || c.p.CanWrite("a") != c.writeA ||
			c.p.CanWrite("b") != c.writeB || c.p.IsOperator() != c.operator {
			t.Errorf("%s: wrong rights", c.p.Role)
		}
	}
}

func TestBootstrap(t *testing.T) {
	toks := New(kv.NewMem(), nil)
	path := filepath.Join(t.TempDir(), "state", "operator.token")
	secret, err := toks.Bootstrap(path)
	if err != nil || secret == "" {
		t.Fatalf("bootstrap: %q %v", secret, err)
	}
	st, err := os.Stat(path)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("token file: %v %v", st, err)
	}
	if p, err := toks.Authenticate(secret); err != nil || !p.IsOperator() {
		t.Fatalf("bootstrap token: %+v %v", p, err)
	}
	if again, err := toks.Bootstrap(path); err != nil || again != "" {
		t.Fatalf("second bootstrap made another token: %q %v", again, err)
	}
}
