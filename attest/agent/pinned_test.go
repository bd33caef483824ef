package agent

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"

	"github.com/seed4c/moat/attest"
)

// TestPinnedClientReachesOnlyThePinnedKey: a client pinned to a verifier's key (a
// backend host's verifier, served with the key its own quotes bind) sends nothing to a
// server with another key, and reaches the one with that key.
func TestPinnedClientReachesOnlyThePinnedKey(t *testing.T) {
	cert := func() tls.Certificate {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		c, err := SelfSignedCertificate(k, "host")
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	server, other, client := cert(), cert(), cert()
	var requests atomic.Int64
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		requests.Add(1)
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte(`{"version":1,"nonce":"AAAA","pcrs":[15]}`))
	}))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{server}, ClientAuth: tls.RequireAnyClientCert}
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // the refused handshake
	srv.StartTLS()
	t.Cleanup(srv.Close)
	pin := func(want tls.Certificate) func([]byte) error {
		return func(spki []byte) error {
			if !bytes.Equal(spki, want.Leaf.RawSubjectPublicKeyInfo) {
				return errors.New("not the pinned key")
			}
			return nil
		}
	}
	for _, c := range []struct {
		pinned  tls.Certificate
		reaches bool
	}{{other, false}, {server, true}} {
		hc, err := NewPinnedHTTPClient(srv.URL+"/attest", client, pin(c.pinned))
		if err != nil {
			t.Fatal(err)
		}
		before := requests.Load()
		_, err = hc.Challenge(t.Context(), &attest.ChallengeRequest{Version: attest.ProtocolVersion, Identity: "gw"})
		if reached := requests.Load() > before; reached != c.reaches {
			t.Fatalf("pinned to the right key %v: reached the server %v (%v)", c.reaches, reached, err)
		}
		if !c.reaches && err == nil {
			t.Fatal("no error from a server with another key")
		}
	}
}
