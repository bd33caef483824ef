package verifier_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/seed4c/moat/attest"
	"github.com/seed4c/moat/attest/agent"
	"github.com/seed4c/moat/attest/fakese"
	"github.com/seed4c/moat/attest/tpmwire"
	"github.com/seed4c/moat/attest/verifier"
)

// recorder is a Subscriber that keeps every result.
type recorder struct {
	mu      sync.Mutex
	results []attest.Result
	signal  chan struct{}
}

func newRecorder() *recorder { return &recorder{signal: make(chan struct{}, 1)} }

func (r *recorder) Notify(res attest.Result) {
	r.mu.Lock()
	r.results = append(r.results, res)
	r.mu.Unlock()
	select {
	case r.signal <- struct{}{}:
	default:
	}
}

// waitFor returns the first result for subject with the given status, waiting up to
// five seconds for it.
func (r *recorder) waitFor(t *testing.T, subject string, status attest.Status) attest.Result {
	t.Helper()
	deadline := time.After(5 * time.Second)
	for {
		r.mu.Lock()
		for _, res := range r.results {
			if res.Subject == subject && res.Status == status {
				r.mu.Unlock()
				return res
			}
		}
		r.mu.Unlock()
		select {
		case <-r.signal:
		case <-deadline:
			t.Fatalf("subscriber saw no %s result for %s; saw %v", status, subject, r.all())
		}
	}
}

func (r *recorder) all() []attest.Result {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]attest.Result(nil), r.results...)
}

// host is a backend host as the tests play it: an SE, application files in a temporary
// directory, the agent's measurer, and its identity, WireGuard key and TLS key.
type host struct {
	id       string
	se       attest.SE
	dir      string
	files    []string
	measurer *agent.Measurer
	wg       []byte
	tls      []byte // DER SubjectPublicKeyInfo
}

var appFiles = map[string]string{"app": "application binary v1", "app.conf": "listen 8080\n"}

func newHost(t testing.TB, id string, se attest.SE) *host {
	t.Helper()
	h := &host{id: id, se: se, dir: t.TempDir(), wg: randomBytes(t, 32), tls: newTLSKey(t)}
	for _, name := range []string{"app", "app.conf"} {
		p := filepath.Join(h.dir, name)
		if err := os.WriteFile(p, []byte(appFiles[name]), 0o600); err != nil {
			t.Fatal(err)
		}
		h.files = append(h.files, p)
	}
	h.remeasure(t)
	return h
}

// remeasure starts a new measurement log (a fresh SE or one just rebooted).
func (h *host) remeasure(t testing.TB) {
	t.Helper()
	m, err := agent.NewMeasurer(h.se, attest.DefaultMeasurementPCR, h.files, "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.Measure(); err != nil {
		t.Fatal(err)
	}
	h.measurer = m
}

func randomBytes(t testing.TB, n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

func newTLSKey(t testing.TB) []byte {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	spki, err := x509.MarshalPKIXPublicKey(&k.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	return spki
}

func (h *host) client(v *verifier.Verifier) verifier.LocalClient {
	return verifier.LocalClient{Verifier: v, Key: h.tls}
}

func (h *host) ekHash(t testing.TB) [32]byte {
	ek, err := h.se.EndorsementKey()
	if err != nil {
		t.Fatal(err)
	}
	d, _, err := tpmwire.EKSHA256(ek.Public)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// policy is the reference policy for a host's files, with its EK allow-listed.
func (h *host) policy(t testing.TB) *verifier.Policy {
	refs := map[string][][32]byte{}
	for _, p := range h.files {
		refs[p] = [][32]byte{sha256.Sum256([]byte(appFiles[filepath.Base(p)]))}
	}
	return &verifier.Policy{Name: "web-v1", MeasurementPCR: attest.DefaultMeasurementPCR, References: refs, AllowedEKs: [][32]byte{h.ekHash(t)}}
}

func (h *host) enroll(t *testing.T, v *verifier.Verifier) {
	t.Helper()
	if _, err := agent.Enroll(context.Background(), h.se, h.client(v), h.id, nil); err != nil {
		t.Fatalf("enroll %s: %v", h.id, err)
	}
}

// evidence runs a challenge and collects evidence over the host's own channel.
func (h *host) evidence(t testing.TB, v *verifier.Verifier) *attest.Evidence {
	t.Helper()
	ch, err := v.Challenge(context.Background(), &attest.ChallengeRequest{Version: attest.ProtocolVersion, Identity: h.id}, h.tls)
	if err != nil {
		t.Fatalf("challenge for %s: %v", h.id, err)
	}
	ev, err := agent.Collect(h.se, ch, h.id, h.wg, h.tls, h.measurer.Log())
	if err != nil {
		t.Fatalf("collect evidence for %s: %v", h.id, err)
	}
	return ev
}

func (h *host) attest(t *testing.T, v *verifier.Verifier) (attest.Result, error) {
	t.Helper()
	return v.Appraise(context.Background(), h.evidence(t, v), h.tls)
}

// rig is a verifier on a manual clock with a recording subscriber.
type rig struct {
	v     *verifier.Verifier
	clock *verifier.ManualClock
	rec   *recorder
	pol   verifier.Policies
}

func newRig(t *testing.T, cfg verifier.Config) *rig {
	t.Helper()
	r := &rig{clock: verifier.NewManualClock(time.Unix(1_700_000_000, 0)), rec: newRecorder(), pol: verifier.Policies{}}
	if cfg.Policies == nil {
		cfg.Policies = r.pol
	}
	cfg.Clock, cfg.Subscriber = r.clock, r.rec
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	v, err := verifier.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { v.Close() })
	r.v = v
	return r
}

// add registers a host's policy and enrolls it.
func (r *rig) add(t *testing.T, h *host) {
	t.Helper()
	r.pol[h.id] = h.policy(t)
	h.enroll(t, r.v)
}

func newFake(t testing.TB) *fakese.SE {
	se, err := fakese.New()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { se.Close() })
	return se
}

// mustAffirm checks an appraisal is affirming: mustAffirm(t)(v.Appraise(…)).
func mustAffirm(t *testing.T) func(attest.Result, error) attest.Result {
	t.Helper()
	return func(r attest.Result, err error) attest.Result {
		t.Helper()
		return checkAffirming(t, r, err)
	}
}

func checkAffirming(t *testing.T, r attest.Result, err error) attest.Result {
	t.Helper()
	if err != nil {
		t.Fatalf("appraisal refused: %v", err)
	}
	if r.Status != attest.StatusAffirming {
		t.Fatalf("status %s, want affirming; reasons %v", r.Status, r.Reasons)
	}
	return r
}

// mustRefuse checks a refusal with the given reason code.
func mustRefuse(t *testing.T, r attest.Result, err error, code string) {
	t.Helper()
	if err == nil || attest.ReasonCode(err) != code {
		t.Fatalf("want refusal %q, got err %v (result %s %v)", code, err, r.Status, r.Reasons)
	}
	if r.Status != attest.StatusRefused || !r.HasReason(code) {
		t.Fatalf("want refused result with reason %q, got %s %v", code, r.Status, r.Reasons)
	}
	if r.Admits(r.Issued) || r.Evicts() {
		t.Fatal("a refused result must neither admit nor evict")
	}
}

// mustContraindicate checks a contraindicated result with the given reason code.
func mustContraindicate(t *testing.T, r attest.Result, err error, code string) {
	t.Helper()
	if err != nil {
		t.Fatalf("want contraindicated result, got refusal %v", err)
	}
	if r.Status != attest.StatusContraindicated || !r.HasReason(code) {
		t.Fatalf("want contraindicated with reason %q, got %s %v", code, r.Status, r.Reasons)
	}
	if !r.Evicts() || r.Admits(r.Issued) {
		t.Fatal("a contraindicated result must evict")
	}
}
