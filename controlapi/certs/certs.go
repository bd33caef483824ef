// Package certs gives the gateway its TLS certificates through certmagic: from an
// internal CA that the gateway creates at first start and keeps in its state directory
// (the default: clients trust its ca.crt), or from an ACME CA in production. certmagic
// stores, serves and renews them either way. The ACME CA validates with TLS-ALPN-01
// only: every name must resolve to the gateway, reachable on the challenge port.
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
	"slices"
	"strings"
	"time"

	"github.com/caddyserver/certmagic"
	"github.com/mholt/acmez/v3/acme"
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
	// ACMEChallengePort is the port the ACME CA validates TLS-ALPN-01 challenges on:
	// 443 (the default) for a public CA. While a challenge is pending, certmagic
	// listens on it on every address; when a listener already holds it (the REST API
	// listening on that port, with TLSConfig), that listener answers the challenge.
	ACMEChallengePort int
	// Log receives certmagic's warnings and errors (a failed background renewal among
	// them) and, at debug level, its progress.
	Log *slog.Logger
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
	if opts.Mode == "" {
		opts.Mode = ModeInternal
	}
	m := &Manager{}
	logger := zap.New(slogCore{opts.Log.With("component", "certmagic").Handler()})
	var cfg *certmagic.Config
	cache := certmagic.NewCache(certmagic.CacheOptions{
		GetConfigForCert: func(certmagic.Certificate) (*certmagic.Config, error) { return cfg, nil },
		Logger:           logger,
	})
	go func() { <-ctx.Done(); cache.Stop() }()
	cfg = certmagic.New(cache, certmagic.Config{
		Storage: &certmagic.FileStorage{Path: filepath.Join(opts.Dir, "certmagic")},
		Logger:  logger,
	})
	switch opts.Mode {
	case ModeInternal:
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
			Logger:               logger,
		})
		cfg.Issuers = []certmagic.Issuer{iss}
	default:
		return nil, fmt.Errorf("certificates: unknown mode %q (want internal or acme)", opts.Mode)
	}
	if err := cfg.ManageSync(ctx, opts.Names); err != nil {
		return nil, obtainError(opts, err)
	}
	m.cfg = cfg
	opts.Log.Info("TLS certificate ready", "mode", opts.Mode, "names", opts.Names)
	return m, nil
}

// obtainError says, in the configuration's terms, why no certificate could be had.
func obtainError(opts Options, err error) error {
	if opts.Mode != ModeACME {
		return fmt.Errorf("certificates: issue a certificate for %v from the internal CA: %w", opts.Names, err)
	}
	port := opts.ACMEChallengePort
	if port == 0 {
		port = certmagic.TLSALPNChallengePort
	}
	var (
		verify  *tls.CertificateVerificationError
		unknown x509.UnknownAuthorityError
		op      *net.OpError
		problem acme.Problem
	)
	validation := []string{acme.ProblemTypeUnauthorized, acme.ProblemTypeConnection, acme.ProblemTypeDNS,
		acme.ProblemTypeTLS, acme.ProblemTypeIncorrectResponse, acme.ProblemTypeCAA}
	hint := "the ACME CA did not issue it"
	switch {
	case strings.Contains(err.Error(), "presenting for challenge"): // the challenge listener
		hint = fmt.Sprintf("cannot answer the TLS-ALPN-01 challenge on port %d (tls.acme.challenge_port; "+
			"below 1024 it takes root or CAP_NET_BIND_SERVICE)", port)
	case errors.As(err, &verify) || errors.As(err, &unknown):
		hint = "the ACME server's certificate is not trusted (tls.acme.roots names extra CAs to trust it with)"
	case errors.As(err, &op) && op.Op == "dial":
		hint = "the ACME directory is unreachable"
	case errors.As(err, &problem) && problem.Type == acme.ProblemTypeRejectedIdentifier:
		hint = "the ACME CA refuses to issue for these names"
	case errors.As(err, &problem) && (slices.Contains(validation, problem.Type) || strings.Contains(err.Error(), "solving challenge")):
		hint = fmt.Sprintf("the ACME CA could not validate the TLS-ALPN-01 challenge: every name must resolve to this "+
			"gateway, reachable by the CA on port %d (tls.acme.challenge_port)", port)
	}
	return fmt.Errorf("certificates: no ACME certificate for %v from %s: %s: %w", opts.Names, opts.ACMEDirectory, hint, err)
}

// TLSConfig is a server configuration serving the managed certificate. It answers
// ACME TLS-ALPN-01 challenges too (ALPN acme-tls/1), so a listener on the challenge
// port validates renewals.
func (m *Manager) TLSConfig() *tls.Config {
	c := m.cfg.TLSConfig()
	c.MinVersion = tls.VersionTLS12
	c.NextProtos = append([]string{"h2", "http/1.1"}, c.NextProtos...)
	return c
}

// CAPEM is the internal CA's certificate in PEM, what clients trust; nil in ACME mode.
func (m *Manager) CAPEM() []byte {
	if m.CACert == nil {
		return nil
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: m.CACert.Raw})
}

// ReadCA returns the PEM certificate of the internal CA kept in dir, without creating
// one and without its key.
func ReadCA(dir string) ([]byte, error) {
	file := filepath.Join(dir, "ca.crt")
	raw, err := os.ReadFile(file)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("no internal CA in %s yet: the gateway creates it at its first start", dir)
	}
	if err != nil {
		return nil, fmt.Errorf("internal CA: %w", err)
	}
	block, _ := pem.Decode(raw)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, fmt.Errorf("internal CA: %s is not a PEM certificate", file)
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("internal CA: %s: %w", file, err)
	}
	if !cert.IsCA {
		return nil, fmt.Errorf("internal CA: %s is not a CA certificate", file)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw}), nil
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
