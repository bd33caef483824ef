package agent_test

import (
	"context"
	"crypto/sha256"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/seed4c/moat/attest"
	"github.com/seed4c/moat/attest/agent"
	"github.com/seed4c/moat/attest/fakese"
	"github.com/seed4c/moat/attest/tpm"
	"github.com/seed4c/moat/attest/tpmwire"
	"github.com/seed4c/moat/attest/verifier"
)

func fake(t *testing.T) *fakese.SE {
	se, err := fakese.New()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { se.Close() })
	return se
}

// setup is a verifier that knows one backend whose file is in a temporary directory.
func setup(t *testing.T, se attest.SE) (verifier.Policies, string, agent.Config) {
	file := filepath.Join(t.TempDir(), "app")
	os.WriteFile(file, []byte("app"), 0o600)
	ek, _ := se.EndorsementKey()
	h, _, err := tpmwire.EKSHA256(ek.Public)
	if err != nil {
		t.Fatal(err)
	}
	pol := verifier.Policies{"web-1": {Name: "p", MeasurementPCR: attest.DefaultMeasurementPCR, AllowedEKs: [][32]byte{h},
		References: map[string][][32]byte{file: {sha256.Sum256([]byte("app"))}}}}
	cfg := agent.Config{VerifierURL: "https://verifier.invalid", Identity: "web-1", Measure: []string{file},
		StateDir: t.TempDir(), WireGuardKey: make([]byte, 32)}
	return pol, file, cfg
}

func newVerifier(t *testing.T, pol verifier.Policies) *verifier.Verifier {
	v, err := verifier.New(verifier.Config{Policies: pol, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { v.Close() })
	return v
}

// A verifier that lost its enrollment records (restarted on a memory store) answers
// not-enrolled; the agent enrolls again in the same round instead of failing it.
func TestAgentReenrollsWhenVerifierForgetsIt(t *testing.T) {
	se := fake(t)
	pol, _, cfg := setup(t, se)
	key := []byte("tls key of this channel")
	a, err := agent.New(cfg, se, verifier.LocalClient{Verifier: newVerifier(t, pol), Key: key}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if r, err := a.Round(context.Background()); err != nil || r.Status != attest.StatusAffirming {
		t.Fatalf("first round: %+v, %v", r, err)
	}
	// Same agent, new verifier: swap the client by building a new agent over the same
	// SE and state (the measurement log is picked up from StateDir).
	a, err = agent.New(cfg, se, verifier.LocalClient{Verifier: newVerifier(t, pol), Key: key}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if r, err := a.Round(context.Background()); err != nil || r.Status != attest.StatusAffirming {
		t.Fatalf("round against a verifier that forgot the agent: %+v, %v", r, err)
	}
}

func TestRoundFailureIsReported(t *testing.T) {
	se := fake(t)
	pol, _, cfg := setup(t, se)
	pol["web-1"].AllowedEKs = nil // the verifier refuses this TPM
	a, err := agent.New(cfg, se, verifier.LocalClient{Verifier: newVerifier(t, pol), Key: []byte("k")}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.Round(context.Background()); attest.ReasonCode(err) != attest.ReasonEKNotAllowed {
		t.Fatalf("round error %v, want the verifier's refusal", err)
	}
	if st := a.Status(); st.Failures != 1 || st.Enrolled || !strings.Contains(st.LastError, attest.ReasonEKNotAllowed) {
		t.Fatalf("status after a refused round: %+v", st)
	}
}

// The PCR holds extensions no saved log explains (another program extends it, or the
// log was lost): the agent refuses to start rather than send a log that can never
// replay.
func TestMeasurerRefusesUnexplainedPCR(t *testing.T) {
	se := fake(t)
	se.ExtendPCR(attest.DefaultMeasurementPCR, sha256.Sum256([]byte("someone else")))
	_, _, cfg := setup(t, se)
	_, err := agent.New(cfg, se, verifier.LocalClient{}, slog.New(slog.DiscardHandler))
	if err == nil || !strings.Contains(err.Error(), "no saved log") {
		t.Fatalf("agent started over an unexplained PCR: %v", err)
	}
}

func TestConfigRefused(t *testing.T) {
	se := fake(t)
	_, _, good := setup(t, se)
	for name, mutate := range map[string]func(*agent.Config){
		"no identity":     func(c *agent.Config) { c.Identity = "" },
		"no files":        func(c *agent.Config) { c.Measure = nil },
		"short WG key":    func(c *agent.Config) { c.WireGuardKey = []byte{1} },
		"firmware PCR":    func(c *agent.Config) { c.PCR = 7 },
		"tiny interval":   func(c *agent.Config) { c.Interval = 1 },
		"plain http":      func(c *agent.Config) { c.VerifierURL = "http://verifier" },
		"absent TPM path": func(c *agent.Config) { c.SE = tpm.Config{Kind: tpm.KindDevice, Path: "/nonexistent/tpmrm0"} },
	} {
		cfg := good
		cfg.Measure = append([]string(nil), good.Measure...)
		mutate(&cfg)
		if err := agent.Run(context.Background(), cfg, slog.New(slog.DiscardHandler)); err == nil {
			t.Errorf("%s: Run accepted the configuration", name)
		}
	}
	cfg := good
	cfg.SE = tpm.Config{Kind: tpm.KindDevice, Path: "/nonexistent/tpmrm0"}
	err := agent.Run(context.Background(), cfg, slog.New(slog.DiscardHandler))
	if !errors.Is(err, os.ErrNotExist) || !strings.Contains(err.Error(), "/nonexistent/tpmrm0") {
		t.Fatalf("absent TPM device: %v", err)
	}
}

func TestTLSKeyPersists(t *testing.T) {
	p := filepath.Join(t.TempDir(), "k", "tls.key")
	a, err := agent.LoadOrCreateTLSKey(p, "web-1")
	if err != nil {
		t.Fatal(err)
	}
	b, err := agent.LoadOrCreateTLSKey(p, "web-1")
	if err != nil {
		t.Fatal(err)
	}
	if string(a.Leaf.RawSubjectPublicKeyInfo) != string(b.Leaf.RawSubjectPublicKeyInfo) {
		t.Fatal("TLS key changed across loads")
	}
	if fi, _ := os.Stat(p); fi.Mode().Perm() != 0o600 {
		t.Fatalf("TLS key mode %v", fi.Mode())
	}
}

// TestAgentsShareAMeasurer: one SE attesting to two verifiers (a gateway toward two
// overlay peers) with one measurer: one PCR, one log. Both verifiers admit it; a file
// change is extended once and both see it.
func TestAgentsShareAMeasurer(t *testing.T) {
	se := fake(t)
	pol, file, cfg := setup(t, se)
	m, err := agent.NewMeasurer(se, attest.DefaultMeasurementPCR, cfg.Measure, filepath.Join(cfg.StateDir, "pcr15.mlog"))
	if err != nil {
		t.Fatal(err)
	}
	cfg.Measure, cfg.Measurer = nil, m
	var agents []*agent.Agent
	for i := range 2 {
		a, err := agent.New(cfg, se, verifier.LocalClient{Verifier: newVerifier(t, pol), Key: []byte{byte(i)}}, slog.New(slog.DiscardHandler))
		if err != nil {
			t.Fatal(err)
		}
		agents = append(agents, a)
	}
	for i, a := range agents {
		if r, err := a.Round(context.Background()); err != nil || r.Status != attest.StatusAffirming {
			t.Fatalf("agent %d: %+v, %v", i, r, err)
		}
	}
	if err := os.WriteFile(file, []byte("app, changed"), 0o600); err != nil {
		t.Fatal(err)
	}
	for i, a := range agents {
		if r, err := a.Round(context.Background()); err != nil || !r.HasReason(attest.ReasonReference) {
			t.Fatalf("agent %d after the change: %+v, %v", i, r, err)
		}
	}
	if n := len(m.Log().Entries); n != 2 {
		t.Fatalf("the shared log has %d entries, want 2 (the file, then its change, once)", n)
	}
}
