package verifier_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/seed4c/moat/attest"
	"github.com/seed4c/moat/attest/agent"
	"github.com/seed4c/moat/attest/verifier"
)

// serveTLS serves the verifier's handler over loopback TLS; clientAuth picks whether
// a client certificate is required (verifier.ServerTLSConfig's choice) or optional.
func serveTLS(t *testing.T, v *verifier.Verifier, clientAuth tls.ClientAuthType) (*httptest.Server, *x509.CertPool) {
	srv := httptest.NewUnstartedServer(v.Handler())
	srv.TLS = &tls.Config{ClientAuth: clientAuth, MinVersion: tls.VersionTLS13}
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // refused handshakes are expected here
	srv.StartTLS()
	t.Cleanup(srv.Close)
	roots := x509.NewCertPool()
	roots.AddCert(srv.Certificate())
	return srv, roots
}

func httpClient(t *testing.T, url string, roots *x509.CertPool, identity string) *agent.HTTPClient {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := agent.SelfSignedCertificate(key, identity)
	if err != nil {
		t.Fatal(err)
	}
	c, err := agent.NewHTTPClient(url, cert, roots)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func problemOf(t *testing.T, rsp *http.Response) attest.Problem {
	t.Helper()
	defer rsp.Body.Close()
	if ct := rsp.Header.Get("Content-Type"); ct != "application/problem+json" {
		t.Fatalf("content type %q, want application/problem+json", ct)
	}
	var p attest.Problem
	if err := json.NewDecoder(rsp.Body).Decode(&p); err != nil {
		t.Fatal(err)
	}
	if p.Status != rsp.StatusCode {
		t.Fatalf("problem status %d, HTTP status %d", p.Status, rsp.StatusCode)
	}
	return p
}

func TestHandlerRequiresClientCertificate(t *testing.T) {
	r := newRig(t, verifier.Config{})
	srv, _ := serveTLS(t, r.v, tls.RequestClientCert)
	rsp, err := srv.Client().Post(srv.URL+attest.PathChallenge, "application/json", strings.NewReader(`{"version":1,"identity":"web-1"}`))
	if err != nil {
		t.Fatal(err)
	}
	if p := problemOf(t, rsp); rsp.StatusCode != http.StatusUnauthorized || p.Type != attest.ProblemTypePrefix+attest.ReasonChannel {
		t.Fatalf("no client certificate: %d %+v", rsp.StatusCode, p)
	}
}

func TestHandlerRefusesGarbage(t *testing.T) {
	r := newRig(t, verifier.Config{})
	h := newHost(t, "web-1", newFake(t))
	r.add(t, h)
	srv, roots := serveTLS(t, r.v, tls.RequireAnyClientCert)
	c := httpClient(t, srv.URL, roots, h.id)
	_, err := c.Submit(context.Background(), &attest.Evidence{Version: 1, Identity: h.id, Quote: []byte("garbage")})
	var remote *attest.RemoteError
	if !errors.As(err, &remote) || remote.Problem.Status != http.StatusBadRequest || attest.ReasonCode(err) != attest.ReasonMalformed {
		t.Fatalf("garbage evidence: %v", err)
	}
	if st, _ := r.v.Standing(h.id); st.Status == attest.StatusContraindicated {
		t.Fatal("garbage evicted the subject")
	}
	rsp, err := srv.Client().Get(srv.URL + attest.PathEvidence)
	if err == nil {
		rsp.Body.Close()
	}
	if err == nil && rsp.StatusCode != http.StatusMethodNotAllowed {
		t.Fatalf("GET on the evidence endpoint: %d", rsp.StatusCode)
	}
}

// The whole protocol over HTTPS, then the two refusals an agent must understand:
// replayed evidence (403) and an identity the verifier does not know (404).
func TestHandlerFullRoundAndReplay(t *testing.T) {
	r := newRig(t, verifier.Config{})
	h := newHost(t, "web-1", newFake(t))
	r.pol[h.id] = h.policy(t)
	srv, roots := serveTLS(t, r.v, tls.RequireAnyClientCert)
	c := httpClient(t, srv.URL, roots, h.id)
	ctx := context.Background()
	if _, err := c.Challenge(ctx, &attest.ChallengeRequest{Version: 1, Identity: h.id}); attest.ReasonCode(err) != attest.ReasonNotEnrolled {
		t.Fatalf("challenge before enrollment: %v", err)
	}
	if _, err := agent.Enroll(ctx, h.se, c, h.id, nil); err != nil {
		t.Fatal(err)
	}
	ch, err := c.Challenge(ctx, &attest.ChallengeRequest{Version: 1, Identity: h.id})
	if err != nil {
		t.Fatal(err)
	}
	ev, err := agent.Collect(h.se, ch, h.id, h.wg, c.TLSKey(), h.measurer.Log())
	if err != nil {
		t.Fatal(err)
	}
	res, err := c.Submit(ctx, ev)
	if err != nil || res.Status != attest.StatusAffirming {
		t.Fatalf("round over HTTPS: %+v %v", res, err)
	}
	_, err = c.Submit(ctx, ev)
	var remote *attest.RemoteError
	if !errors.As(err, &remote) || remote.Problem.Status != http.StatusForbidden || attest.ReasonCode(err) != attest.ReasonNonceReplayed {
		t.Fatalf("replay over HTTPS: %v", err)
	}
}
