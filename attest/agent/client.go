package agent

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/seed4c/moat/attest"
)

// HTTPClient is a VerifierClient over HTTPS with mutual TLS. Its client certificate
// carries the TLS key bound into every quote.
type HTTPClient struct {
	base   string
	tlsKey []byte
	http   *http.Client
}

// NewHTTPClient returns a client for the verifier endpoints under baseURL (for example
// https://gateway:8443/attest). cert is the agent's client certificate; roots verify
// the verifier's server certificate (nil: the system roots).
func NewHTTPClient(baseURL string, cert tls.Certificate, roots *x509.CertPool) (*HTTPClient, error) {
	if !strings.HasPrefix(baseURL, "https://") {
		return nil, fmt.Errorf("verifier URL %q: only https is allowed (the TLS key is part of the evidence)", baseURL)
	}
	if cert.Leaf == nil {
		leaf, err := x509.ParseCertificate(cert.Certificate[0])
		if err != nil {
			return nil, fmt.Errorf("parse client certificate: %w", err)
		}
		cert.Leaf = leaf
	}
	tr := &http.Transport{
		TLSClientConfig: &tls.Config{
			Certificates: []tls.Certificate{cert},
			RootCAs:      roots,
			MinVersion:   tls.VersionTLS13,
		},
		ForceAttemptHTTP2:   true,
		MaxIdleConnsPerHost: 1,
		IdleConnTimeout:     time.Minute,
	}
	return &HTTPClient{
		base:   strings.TrimRight(baseURL, "/"),
		tlsKey: cert.Leaf.RawSubjectPublicKeyInfo,
		http:   &http.Client{Transport: tr, Timeout: 30 * time.Second},
	}, nil
}

// TLSKey implements VerifierClient.
func (c *HTTPClient) TLSKey() []byte { return c.tlsKey }

// CloseIdleConnections drops kept-alive connections.
func (c *HTTPClient) CloseIdleConnections() { c.http.CloseIdleConnections() }

// do POSTs in as JSON to path and hands a 200 response body to decode; any other
// status becomes an error, a *attest.RemoteError when the body is a problem document.
func (c *HTTPClient) do(ctx context.Context, path string, in any, decode func(io.Reader) error) error {
	body, err := json.Marshal(in)
	if err != nil {
		return fmt.Errorf("encode request to %s: %w", path, err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.base+path, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("request %s: %w", path, err)
	}
	req.Header.Set("Content-Type", "application/json")
	rsp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("POST %s: %w", path, err)
	}
	defer rsp.Body.Close()
	limited := io.LimitReader(rsp.Body, attest.MaxMessageSize+1)
	if rsp.StatusCode != http.StatusOK {
		var p attest.Problem
		b, _ := io.ReadAll(limited)
		if json.Unmarshal(b, &p) != nil || p.Status == 0 {
			return fmt.Errorf("POST %s: HTTP %d", path, rsp.StatusCode)
		}
		return fmt.Errorf("POST %s: %w", path, &attest.RemoteError{Problem: p})
	}
	if err := decode(limited); err != nil {
		return fmt.Errorf("POST %s: response: %w", path, err)
	}
	return nil
}

// Enroll implements VerifierClient.
func (c *HTTPClient) Enroll(ctx context.Context, m *attest.EnrollRequest) (*attest.EnrollChallenge, error) {
	var out attest.EnrollChallenge
	return &out, c.do(ctx, attest.PathEnroll, m, func(r io.Reader) error { return attest.Decode(r, &out) })
}

// Activate implements VerifierClient.
func (c *HTTPClient) Activate(ctx context.Context, m *attest.ActivationProof) (*attest.Enrollment, error) {
	var out attest.Enrollment
	return &out, c.do(ctx, attest.PathActivate, m, func(r io.Reader) error { return attest.Decode(r, &out) })
}

// Challenge implements VerifierClient.
func (c *HTTPClient) Challenge(ctx context.Context, m *attest.ChallengeRequest) (*attest.Challenge, error) {
	var out attest.Challenge
	return &out, c.do(ctx, attest.PathChallenge, m, func(r io.Reader) error { return attest.Decode(r, &out) })
}

// Submit implements VerifierClient.
func (c *HTTPClient) Submit(ctx context.Context, m *attest.Evidence) (*attest.Result, error) {
	var out attest.Result
	return &out, c.do(ctx, attest.PathEvidence, m, func(r io.Reader) error { return json.NewDecoder(r).Decode(&out) })
}

// NewPinnedHTTPClient is NewHTTPClient for a verifier whose server certificate no CA
// vouches for: a connection is used only when accept approves the server's key (the DER
// SubjectPublicKeyInfo of its certificate). A gateway attesting to a backend host's
// verifier accepts only the TLS key that host's own quotes bound (its agent serves the
// verifier with the key it attests with).
func NewPinnedHTTPClient(baseURL string, cert tls.Certificate, accept func(spki []byte) error) (*HTTPClient, error) {
	c, err := NewHTTPClient(baseURL, cert, nil)
	if err != nil {
		return nil, err
	}
	cfg := c.http.Transport.(*http.Transport).TLSClientConfig
	cfg.InsecureSkipVerify = true // replaced by VerifyConnection, which runs regardless
	cfg.VerifyConnection = func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 {
			return fmt.Errorf("verifier %s presented no certificate", baseURL)
		}
		if err := accept(cs.PeerCertificates[0].RawSubjectPublicKeyInfo); err != nil {
			return fmt.Errorf("verifier %s: %w", baseURL, err)
		}
		return nil
	}
	return c, nil
}
