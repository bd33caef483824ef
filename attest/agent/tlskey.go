package agent

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"time"
)

// LoadOrCreateTLSKey reads the agent's TLS key (PEM, PKCS#8) from path, creating a new
// ECDSA P-256 key there (mode 0600) when the file does not exist, and returns a
// self-signed client certificate for it. The certificate needs no CA: the verifier
// trusts the key because the TPM quote binds it, not because someone signed it.
func LoadOrCreateTLSKey(path, identity string) (tls.Certificate, error) {
	var key *ecdsa.PrivateKey
	b, err := os.ReadFile(path)
	switch {
	case err == nil:
		block, _ := pem.Decode(b)
		if block == nil || block.Type != "PRIVATE KEY" {
			return tls.Certificate{}, fmt.Errorf("TLS key %s: no PKCS#8 PEM block", path)
		}
		k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
		if err != nil {
			return tls.Certificate{}, fmt.Errorf("TLS key %s: %w", path, err)
		}
		var ok bool
		if key, ok = k.(*ecdsa.PrivateKey); !ok {
			return tls.Certificate{}, fmt.Errorf("TLS key %s: %T, want an ECDSA key", path, k)
		}
	case errors.Is(err, os.ErrNotExist):
		if key, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
			return tls.Certificate{}, fmt.Errorf("generate TLS key: %w", err)
		}
		der, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			return tls.Certificate{}, fmt.Errorf("encode TLS key: %w", err)
		}
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			return tls.Certificate{}, fmt.Errorf("create TLS key directory: %w", err)
		}
		if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
			return tls.Certificate{}, fmt.Errorf("write TLS key %s: %w", path, err)
		}
	default:
		return tls.Certificate{}, fmt.Errorf("read TLS key %s: %w", path, err)
	}
	return SelfSignedCertificate(key, identity)
}

// SelfSignedCertificate wraps a key in a short self-signed client certificate.
func SelfSignedCertificate(key *ecdsa.PrivateKey, identity string) (tls.Certificate, error) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return tls.Certificate{}, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: identity, Organization: []string{"moat agent"}},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(10 * 365 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("self-sign TLS certificate: %w", err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, nil
}

// pemDecode returns the first PEM block's bytes, or nil when b is not PEM.
func pemDecode(b []byte) ([]byte, error) {
	block, _ := pem.Decode(b)
	if block == nil {
		return nil, nil
	}
	return block.Bytes, nil
}
