package agent_test

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/seed4c/moat/attest"
	"github.com/seed4c/moat/attest/agent"
	"github.com/seed4c/moat/attest/tpm"
	"github.com/seed4c/moat/attest/tpmwire"
	"github.com/seed4c/moat/attest/verifier"
)

// events records results with the time the subscriber saw them.
type events struct {
	mu   sync.Mutex
	seen []seenResult
	cond chan struct{}
}

type seenResult struct {
	r  attest.Result
	at time.Time
}

func (e *events) Notify(r attest.Result) {
	e.mu.Lock()
	e.seen = append(e.seen, seenResult{r, time.Now()})
	e.mu.Unlock()
	select {
	case e.cond <- struct{}{}:
	default:
	}
}

// wait returns the first result after index from with the given status.
func (e *events) wait(t *testing.T, from int, status attest.Status, within time.Duration) (seenResult, int) {
	t.Helper()
	deadline := time.After(within)
	for {
		e.mu.Lock()
		for i := from; i < len(e.seen); i++ {
			if e.seen[i].r.Status == status {
				s := e.seen[i]
				e.mu.Unlock()
				return s, i
			}
		}
		e.mu.Unlock()
		select {
		case <-e.cond:
		case <-deadline:
			t.Fatalf("no %s result within %s", status, within)
		}
	}
}

// TestEndToEnd runs a verifier behind HTTPS (httptest, loopback, mutual TLS) and an
// agent on the TPM simulator, attesting continuously. Tampering with a measured file
// mid-run makes the next round fail and the subscriber see it; stopping the agent
// makes its last result expire, and the subscriber sees that too.
func TestEndToEnd(t *testing.T) {
	dir := t.TempDir()
	binary := filepath.Join(dir, "app")
	config := filepath.Join(dir, "app.conf")
	os.WriteFile(binary, []byte("backend application v1"), 0o755)
	os.WriteFile(config, []byte("port = 8080\n"), 0o644)

	se, err := tpm.OpenSimulator(tpm.EKECC)
	if err != nil {
		t.Fatal(err)
	}
	defer se.Close()
	ek, err := se.EndorsementKey()
	if err != nil {
		t.Fatal(err)
	}
	ekHash, _, err := tpmwire.EKSHA256(ek.Public)
	if err != nil {
		t.Fatal(err)
	}
	const identity = "tenant-a/web-1"
	policies := verifier.Policies{identity: {
		Name: "web-v1", MeasurementPCR: attest.DefaultMeasurementPCR, AllowedEKs: [][32]byte{ekHash},
		References: map[string][][32]byte{
			binary: {sha256.Sum256([]byte("backend application v1"))},
			config: {sha256.Sum256([]byte("port = 8080\n"))},
		},
	}}
	ev := &events{cond: make(chan struct{}, 1)}
	const resultTTL = 600 * time.Millisecond
	v, err := verifier.New(verifier.Config{Policies: policies, Subscriber: ev, ResultTTL: resultTTL, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	srv := httptest.NewUnstartedServer(http.StripPrefix("/attest", v.Handler()))
	srv.TLS = &tls.Config{ClientAuth: tls.RequireAnyClientCert, MinVersion: tls.VersionTLS13}
	srv.StartTLS()
	defer srv.Close()
	roots := x509.NewCertPool()
	roots.AddCert(srv.Certificate())

	cert, err := agent.LoadOrCreateTLSKey(filepath.Join(dir, "state", "tls.key"), identity)
	if err != nil {
		t.Fatal(err)
	}
	client, err := agent.NewHTTPClient(srv.URL+"/attest", cert, roots)
	if err != nil {
		t.Fatal(err)
	}
	wg := make([]byte, 32)
	wg[0] = 9
	cfg := agent.Config{
		VerifierURL: srv.URL + "/attest", Identity: identity, Measure: []string{binary, config},
		Interval: 150 * time.Millisecond, StateDir: filepath.Join(dir, "state"), WireGuardKey: wg,
	}
	start := func() (stop func()) {
		a, err := agent.New(cfg, se, client, slog.New(slog.DiscardHandler))
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- a.Run(ctx) }()
		return func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("agent run: %v", err)
			}
			if st := a.Status(); !st.Enrolled || st.Rounds == 0 || st.LastResult == nil {
				t.Errorf("agent status after its run: %+v", st)
			}
		}
	}

	// Continuous attestation: several affirming rounds in a row, each renewing the last.
	stop := start()
	first, i := ev.wait(t, 0, attest.StatusAffirming, 10*time.Second)
	last := first
	for n := 0; n < 3; n++ {
		last, i = ev.wait(t, i+1, attest.StatusAffirming, 5*time.Second)
	}
	if first.r.TrustLevel != attest.TrustAllowListed || first.r.WireGuardKey[0] != 9 {
		t.Fatalf("first result %+v", first.r)
	}

	// Stop the agent: its last result expires by itself, and the subscriber sees it.
	stop()
	ev.mu.Lock()
	last = ev.seen[len(ev.seen)-1]
	mark := len(ev.seen)
	ev.mu.Unlock()
	exp, i := ev.wait(t, mark, attest.StatusExpired, 5*time.Second)
	if exp.at.Before(last.r.Expires) {
		t.Fatalf("expired at %s, before the last result's expiry %s", exp.at, last.r.Expires)
	}
	t.Logf("expiry reached the subscriber %s after the last result's Expires", exp.at.Sub(last.r.Expires))

	// Restart the agent within the same boot: it picks up its saved measurement log
	// (the PCR kept its extensions) and is admitted again.
	stop = start()
	defer stop()
	_, i = ev.wait(t, i+1, attest.StatusAffirming, 5*time.Second)

	// Tamper with the binary mid-run: the next round fails.
	tampered := time.Now()
	os.WriteFile(binary, []byte("backend application v1 + implant"), 0o755)
	bad, _ := ev.wait(t, i+1, attest.StatusContraindicated, 5*time.Second)
	if !bad.r.HasReason(attest.ReasonReference) {
		t.Fatalf("tampering reported as %v", bad.r.Reasons)
	}
	t.Logf("tampering seen by the subscriber %s after the file changed (agent interval 150ms)", bad.at.Sub(tampered))
}

func TestStatusEndpoint(t *testing.T) {
	se, err := tpm.OpenSimulator(tpm.EKECC)
	if err != nil {
		t.Fatal(err)
	}
	defer se.Close()
	bin := filepath.Join(t.TempDir(), "app")
	os.WriteFile(bin, []byte("x"), 0o600)
	a, err := agent.New(agent.Config{VerifierURL: "https://verifier.invalid", Identity: "web-1", Measure: []string{bin},
		StateDir: t.TempDir(), WireGuardKey: make([]byte, 32)}, se, verifier.LocalClient{}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(a.StatusHandler())
	defer srv.Close()
	rsp, err := http.Get(srv.URL + "/status")
	if err != nil {
		t.Fatal(err)
	}
	defer rsp.Body.Close()
	var st agent.Status
	if err := json.NewDecoder(rsp.Body).Decode(&st); err != nil {
		t.Fatal(err)
	}
	if st.Identity != "web-1" || st.Enrolled || st.Measurements != 1 || len(st.EKSHA256) != 64 {
		t.Fatalf("status %+v", st)
	}
}
