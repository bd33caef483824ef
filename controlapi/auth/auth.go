// Package auth is the control API's authentication and authorization: bearer tokens,
// kept only as hashes, each with a role — operator (everything), tenant admin (one
// tenant's objects and nothing else, not even their existence) or auditor (read-only,
// everything).
package auth

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/seed4c/moat/controlapi/kv"
	"github.com/seed4c/moat/tenant"
)

// Role is what a token may do.
type Role string

// Roles.
const (
	RoleOperator    Role = "operator"
	RoleTenantAdmin Role = "tenant-admin"
	RoleAuditor     Role = "auditor"
)

// ParseRole reads a role name.
func ParseRole(s string) (Role, error) {
	switch r := Role(s); r {
	case RoleOperator, RoleTenantAdmin, RoleAuditor:
		return r, nil
	}
	return "", fmt.Errorf("unknown role %q (want operator, tenant-admin or auditor)", s)
}

// Token is a stored token: its secret is never stored, only its SHA-256.
type Token struct {
	ID      string    `json:"id"`
	Name    string    `json:"name"`
	Role    Role      `json:"role"`
	Tenant  string    `json:"tenant,omitempty"` // tenant admins only
	Hash    []byte    `json:"hash,omitempty"`
	Created time.Time `json:"created"`
}

// Principal is who made a request.
type Principal struct {
	TokenID string
	Name    string
	Role    Role
	Tenant  string
}

// CanRead reports whether p may see tenant t's objects.
func (p Principal) CanRead(t string) bool {
	return p.Role == RoleOperator || p.Role == RoleAuditor || p.Role == RoleTenantAdmin && p.Tenant == t
}

// CanWrite reports whether p may change tenant t's services, backends, rules and
// policies.
func (p Principal) CanWrite(t string) bool {
	return p.Role == RoleOperator || p.Role == RoleTenantAdmin && p.Tenant == t
}

// IsOperator reports whether p may change the gateway itself: tenants, attachments,
// tokens.
func (p Principal) IsOperator() bool { return p.Role == RoleOperator }

// SeesAll reports whether p may list every tenant.
func (p Principal) SeesAll() bool { return p.Role == RoleOperator || p.Role == RoleAuditor }

// Errors.
var (
	ErrUnauthenticated = errors.New("missing, malformed, unknown or revoked token")
	ErrNotFound        = errors.New("no such token")
)

const (
	bucket = "tokens"
	prefix = "moat_"
)

// Tokens is the token store.
type Tokens struct {
	kv  kv.Store
	now func() time.Time
}

// New returns the token store on kvs.
func New(kvs kv.Store, now func() time.Time) *Tokens {
	if now == nil {
		now = time.Now
	}
	return &Tokens{kv: kvs, now: now}
}

// Create makes a token and returns its secret, which is shown once and never again.
func (t *Tokens) Create(name string, role Role, tenantName string) (string, Token, error) {
	if _, err := ParseRole(string(role)); err != nil {
		return "", Token{}, err
	}
	if err := tenant.CheckName(name); err != nil {
		return "", Token{}, fmt.Errorf("token %w", err)
	}
	if (role == RoleTenantAdmin) != (tenantName != "") {
		return "", Token{}, errors.New("a tenant-admin token needs a tenant, and only a tenant-admin token may have one")
	}
	var id [6]byte
	var secret [32]byte
	if _, err := rand.Read(id[:]); err != nil {
		return "", Token{}, err
	}
	if _, err := rand.Read(secret[:]); err != nil {
		return "", Token{}, err
	}
	sec := base64.RawURLEncoding.EncodeToString(secret[:])
	h := sha256.Sum256([]byte(sec))
	tok := Token{ID: hex.EncodeToString(id[:]), Name: name, Role: role, Tenant: tenantName, Hash: h[:], Created: t.now().UTC()}
	raw, err := json.Marshal(tok)
	if err != nil {
		return "", Token{}, err
	}
	if err := t.kv.Update(func(tx kv.Tx) error { return tx.Put(bucket, tok.ID, raw) }); err != nil {
		return "", Token{}, fmt.Errorf("store token: %w", err)
	}
	tok.Hash = nil
	return prefix + tok.ID + "_" + sec, tok, nil
}

// Authenticate returns who holds bearer, or ErrUnauthenticated.
func (t *Tokens) Authenticate(bearer string) (Principal, error) {
	rest, ok := strings.CutPrefix(bearer, prefix)
	id, sec, ok2 := strings.Cut(rest, "_")
	if !ok || !ok2 || len(id) != 12 || len(sec) != 43 {
		return Principal{}, ErrUnauthenticated
	}
	var tok Token
	err := t.kv.View(func(tx kv.Tx) error {
		raw, err := tx.Get(bucket, id)
		if err != nil {
			return err
		}
		return json.Unmarshal(raw, &tok)
	})
	h := sha256.Sum256([]byte(sec))
	want := tok.Hash
	if err != nil || len(want) != len(h) {
		want = make([]byte, len(h)) // compare anyway: unknown ids take as long as wrong secrets
	}
	if subtle.ConstantTimeCompare(h[:], want) != 1 || err != nil {
		return Principal{}, ErrUnauthenticated
	}
	return Principal{TokenID: tok.ID, Name: tok.Name, Role: tok.Role, Tenant: tok.Tenant}, nil
}

// List returns every token, without hashes.
func (t *Tokens) List() ([]Token, error) {
	var out []Token
	err := t.kv.View(func(tx kv.Tx) error {
		var derr error
		err := tx.Scan(bucket, "", "", func(_ string, raw []byte) bool {
			var tok Token
			if derr = json.Unmarshal(raw, &tok); derr != nil {
				return false
			}
			tok.Hash = nil
			out = append(out, tok)
			return true
		})
		return errors.Join(err, derr)
	})
	return out, err
}

// Delete revokes a token.
func (t *Tokens) Delete(id string) error {
	return t.kv.Update(func(tx kv.Tx) error {
		if _, err := tx.Get(bucket, id); err != nil {
			if errors.Is(err, kv.ErrNotFound) {
				return ErrNotFound
			}
			return err
		}
		return tx.Delete(bucket, id)
	})
}

// Bootstrap makes sure an operator can get in: when no token exists, it creates an
// operator token and writes its secret to path (mode 0600) and returns it; otherwise
// it returns "". The gateway calls it at start.
func (t *Tokens) Bootstrap(path string) (string, error) {
	toks, err := t.List()
	if err != nil || len(toks) > 0 {
		return "", err
	}
	secret, _, err := t.Create("bootstrap-operator", RoleOperator, "")
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return "", err
	}
	if err := os.WriteFile(path, []byte(secret+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("write operator token to %s: %w", path, err)
	}
	return secret, nil
}
