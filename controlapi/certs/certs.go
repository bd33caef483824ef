// Package certs gives the gateway its TLS certificates through certmagic: from an
// internal CA that the gateway creates at first start and keeps in its state directory
// (the default: clients trust its ca.crt), or from an ACME CA in production. certmagic
// stores, serves and renews them either way.
package certs

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"
)

// Mode is where certificates come from.
type Mode string

// Modes.
const (
	ModeInternal Mode = "internal"
	ModeACME     Mode = "acme"
)

// Options configure the certificates.
type Options struct {
	Mode Mode
	// Dir holds the internal CA (ca.crt, ca.key) and certmagic's storage.
	Dir string
	// Names are the DNS names and IP addresses the certificate covers.
	Names []string
	// ACME: the directory URL, the account e-mail, and extra roots to trust the ACME
	// server with (a private CA or a test one); empty uses the system roots.
	ACMEDirectory string
	ACMEEmail     string
	ACMERoots     *x509.CertPool
	// ACMEChallengePort is where the TLS-ALPN-01 challenge is answered; default 443.
	ACMEChallengePort int
	Log               *slog.Logger
}

// Manager serves the gateway's certificate.
type Manager struct {
	cfg *certmagic.Config
	// CACert is the internal CA's certificate (nil in ACME mode): what clients trust.
	CACert *x509.Certificate
	// CAFile is where it is written (PEM).
	CAFile string
}

// New obtains (or loads) a certificate for opts.Names and keeps it renewed until ctx
// ends.
func New(ctx context.Context, opts Options) (*Manager, error) {
	if len(opts.Names) == 0 {
		return nil, errors.New("certificates: no names to cover")
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	m := &Manager{}
	var cfg *certmagic.Config
	cache := certmagic.NewCache(certmagic.CacheOptions{
		GetConfigForCert: func(certmagic.Certificate) (*certmagic.Config, error) { return cfg, nil },
		Logger:           zap.NewNop(),
	})
	go func() { <-ctx.Done(); cache.Stop() }()
	cfg = certmagic.New(cache, certmagic.Config{
		Storage: &certmagic.FileStorage{Path: filepath.Join(opts.Dir, "certmagic")},
		Logger:  zap.NewNop(),
	})
	switch opts.Mode {
	case ModeInternal, "":
		ca, err := LoadOrCreateCA(opts.Dir)
		if err != nil {
			return nil, err
		}
		m.CACert, m.CAFile = ca.Cert, filepath.Join(opts.Dir, "ca.crt")
		cfg.Issuers = []certmagic.Issuer{ca}
	case ModeACME:
		if opts.ACMEDirectory == "" {
			return nil, errors.New("certificates: ACME mode needs a directory URL")
		}
		iss := certmagic.NewACMEIssuer(cfg, certmagic.ACMEIssuer{
			CA:                   opts.ACMEDirectory,
			Email:                opts.ACMEEmail,
			Agreed:               true,
			TrustedRoots:         opts.ACMERoots,
			DisableHTTPChallenge: true,
			AltTLSALPNPort:       opts.ACMEChallengePort,
			Logger:               zap.NewNop(),
		})
		cfg.Issuers = []certmagic.Issuer{iss}
	default:
		return nil, fmt.Errorf("certificates: unknown mode %q (want internal or acme)", opts.Mode)
	}
	if err := cfg.ManageSync(ctx, opts.Names); err != nil {
		return nil, fmt.Errorf("obtain a certificate for %v (%s): %w", opts.Names, opts.Mode, err)
	}
	m.cfg = cfg
	opts.Log.Info("TLS certificate ready", "mode", opts.Mode, "names", opts.Names)
	return m, nil
}

// TLSConfig is a server configuration serving the managed certificate.
func (m *Manager) TLSConfig() *tls.Config {
	c := m.cfg.TLSConfig()
	c.MinVersion = tls.VersionTLS12
	c.NextProtos = append([]string{"h2", "http/1.1"}, c.NextProtos...)
	return c
}

// CA is the gateway's internal certificate authority; it implements certmagic.Issuer.
type CA struct {
	Cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

// LoadOrCreateCA loads dir/ca.crt and dir/ca.key, creating them on first use.
func LoadOrCreateCA(dir string) (*CA, error) {
	certFile, keyFile := filepath.Join(dir, "ca.crt"), filepath.Join(dir, "ca.key")
	certPEM, cerr := os.ReadFile(certFile)
	keyPEM, kerr := os.ReadFile(keyFile)
	if cerr == nil && kerr == nil {
		return parseCA(certPEM, keyPEM)
	}
	if !errors.Is(cerr, os.ErrNotExist) || !errors.Is(kerr, os.ErrNotExist) {
		return nil, fmt.Errorf("internal CA in %s is incomplete or unreadable (ca.crt: %v, ca.key: %v)", dir, cerr, kerr)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	host, _ := os.Hostname()
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: "moat internal CA " + host, Organization: []string{"moat"}},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().AddDate(10, 0, 0),
		IsCA:                  true,
		BasicConstraintsValid: true,
		MaxPathLenZero:        true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	// The key first: a crash in between leaves no certificate without its key.
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		return nil, fmt.Errorf("write CA key: %w", err)
	}
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		return nil, fmt.Errorf("write CA certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &CA{Cert: cert, key: key}, nil
}

func parseCA(certPEM, keyPEM []byte) (*CA, error) {
	cb, _ := pem.Decode(certPEM)
	kb, _ := pem.Decode(keyPEM)
	if cb == nil || kb == nil {
		return nil, errors.New("internal CA: ca.crt or ca.key is not PEM")
	}
	cert, err := x509.ParseCertificate(cb.Bytes)
	if err != nil {
		return nil, fmt.Errorf("internal CA certificate: %w", err)
	}
	k, err := x509.ParsePKCS8PrivateKey(kb.Bytes)
	if err != nil {
		return nil, fmt.Errorf("internal CA key: %w", err)
	}
	key, ok := k.(*ecdsa.PrivateKey)
	if !ok || !key.PublicKey.Equal(cert.PublicKey) {
		return nil, errors.New("internal CA key does not match its certificate")
	}
	return &CA{Cert: cert, key: key}, nil
}

func serial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 126))
	return n
}

// LeafLifetime is how long the certificates the internal CA issues are valid;
// certmagic renews them well before.
const LeafLifetime = 7 * 24 * time.Hour

// Issue implements certmagic.Issuer: it signs the CSR's names for LeafLifetime.
func (ca *CA) Issue(_ context.Context, csr *x509.CertificateRequest) (*certmagic.IssuedCertificate, error) {
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("internal CA: CSR signature: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: firstName(csr)},
		DNSNames:     csr.DNSNames,
		IPAddresses:  csr.IPAddresses,
		NotBefore:    time.Now().Add(-5 * time.Minute),
		NotAfter:     time.Now().Add(LeafLifetime),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, csr.PublicKey, ca.key)
	if err != nil {
		return nil, fmt.Errorf("internal CA: sign: %w", err)
	}
	chain := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	chain = append(chain, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Cert.Raw})...)
	return &certmagic.IssuedCertificate{Certificate: chain}, nil
}

// IssuerKey implements certmagic.Issuer.
func (ca *CA) IssuerKey() string {
	return fmt.Sprintf("moat-internal-%x", ca.Cert.SubjectKeyId)
}

func firstName(csr *x509.CertificateRequest) string {
	if len(csr.DNSNames) > 0 {
		return csr.DNSNames[0]
	}
	if len(csr.IPAddresses) > 0 {
		return csr.IPAddresses[0].String()
	}
	return "moat"
}

// DefaultNames are what the gateway's certificate covers when the configuration
// names nothing: its host name, localhost and the loopback addresses.
func DefaultNames() []string {
	names := []string{"localhost", "127.0.0.1"}
	if h, err := os.Hostname(); err == nil && h != "" && net.ParseIP(h) == nil && h != "localhost" {
		names = append(names, h)
	}
	return names
}
