// Package agent is the `moat agent` daemon that runs on backend hosts: it holds the
// host's Secure Element, measures the backend application's files into a PCR, enrolls
// with a gateway's verifier and then attests continuously.
//
// Push model: the agent opens every connection (HTTPS with mutual TLS), so it works
// behind NAT and needs no inbound port. Each round (every Interval, 2 s by default):
//
//  1. re-hash the measured files; extend the PCR for each that changed, and log it;
//  2. ask the verifier for a nonce (bound to this identity and this TLS key);
//  3. quote the PCRs the verifier asks for with qualifying data
//     H(nonce ‖ identity ‖ WireGuard public key ‖ TLS public key ‖ SE's ECDH public key);
//  4. send quote, PCR values and measurement log; receive the attestation result.
//
// A verifier that no longer knows the agent (its store was reset) answers
// "not-enrolled", and the agent enrolls again by itself. The agent logs every round
// with log/slog and reports its state through Status and an optional local HTTP
// endpoint.
package agent

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/seed4c/moat/attest"
	"github.com/seed4c/moat/attest/tpm"
	"github.com/seed4c/moat/attest/tpmwire"
)

// Defaults of Config's zero values.
const (
	DefaultInterval = 2 * time.Second
	DefaultStateDir = "/var/lib/moat/agent"
	// DefaultStatusAddr is what `moat agent` listens on for its status; loopback only.
	DefaultStatusAddr = "127.0.0.1:9721"
)

// Config configures an agent.
type Config struct {
	// VerifierURL is the verifier's base URL, https only (required).
	VerifierURL string
	// VerifierCAFile is a PEM bundle of CAs for the verifier's server certificate;
	// empty uses the system roots.
	VerifierCAFile string
	// Identity is the backend identity the gateway registered (required).
	Identity string
	// Measure lists the files to measure: the application's binary and configuration
	// (required; relative paths are made absolute).
	Measure []string
	// PCR is the measurement PCR; default attest.DefaultMeasurementPCR (15, see there
	// for why).
	PCR int
	// Interval between rounds; default 2 s.
	Interval time.Duration
	// SE selects the TPM: kind "device" (default, path /dev/tpmrm0), "swtpm" (path
	// unix:/socket or host:port) or "simulator" (demo and tests only: it proves
	// nothing about the host).
	SE tpm.Config
	// EKCertFile overrides the EK certificate read from the TPM's NV (DER or PEM).
	EKCertFile string
	// StateDir keeps the TLS key (if TLSKeyFile is empty) and the measurement log
	// across agent restarts; default /var/lib/moat/agent.
	StateDir string
	// TLSKeyFile is the agent's TLS key (PKCS#8 PEM), created if missing; default
	// StateDir/tls.key.
	TLSKeyFile string
	// WireGuardKey is the agent's Curve25519 public key (32 bytes) bound into every
	// quote (required; the overlay supplies it).
	WireGuardKey []byte
	// StatusAddr, when set, serves GET /status (JSON) there. Keep it on loopback.
	StatusAddr string
	// Measurer, when set, is the measurer this agent shares with other agents of the
	// same SE (one process attesting to several verifiers: a gateway toward each of its
	// overlay peers): one PCR must have one log. Measure, PCR and StateDir's log are
	// then its, not read. Not set by `moat agent`.
	Measurer *Measurer
	// Overlay, when set, runs beside the agent in its process (a backend host's overlay
	// node, dataplane/overlay.Host) and supplies WireGuardKey, which must then be empty.
	Overlay Overlay
}

// Overlay is what joins a backend host to the WireGuard overlay (dataplane/overlay's
// Host), run by Run in the agent's process: it shares the agent's SE (a TPM simulator
// exists once per process) and TLS key. attest does not import the overlay; the
// overlay implements this.
type Overlay interface {
	// Start is called once the SE is open and the measured files are extended (the
	// overlay's key is sealed to that state), before the first round. It brings the
	// overlay up and returns the WireGuard public key to bind into every quote.
	Start(se attest.SE, tlsCert tls.Certificate, log *slog.Logger) (wireGuardKey []byte, err error)
	// Close takes the overlay down; Run calls it when the agent stops.
	Close() error
}

func (c *Config) setDefaults() error {
	if c.VerifierURL == "" || c.Identity == "" {
		return errors.New("agent config: VerifierURL and Identity are required")
	}
	if len(c.Measure) == 0 && c.Measurer == nil {
		return errors.New("agent config: no files to measure")
	}
	for i, p := range c.Measure {
		abs, err := filepath.Abs(p)
		if err != nil {
			return fmt.Errorf("agent config: measure %q: %w", p, err)
		}
		c.Measure[i] = abs
	}
	if c.Overlay != nil && len(c.WireGuardKey) != 0 {
		return errors.New("agent config: the overlay supplies the WireGuard key: give no key")
	}
	if c.Overlay == nil && len(c.WireGuardKey) != 32 {
		return fmt.Errorf("agent config: WireGuard public key is %d bytes, want 32", len(c.WireGuardKey))
	}
	if c.PCR == 0 {
		c.PCR = attest.DefaultMeasurementPCR
	}
	if c.PCR < 8 || c.PCR > 23 {
		return fmt.Errorf("agent config: PCR %d outside 8..23", c.PCR)
	}
	if c.Interval == 0 {
		c.Interval = DefaultInterval
	}
	if c.Interval < 100*time.Millisecond {
		return fmt.Errorf("agent config: interval %s below 100ms", c.Interval)
	}
	if c.SE.Kind == "" {
		c.SE.Kind = tpm.KindDevice
	}
	if c.StateDir == "" {
		c.StateDir = DefaultStateDir
	}
	if c.TLSKeyFile == "" {
		c.TLSKeyFile = filepath.Join(c.StateDir, "tls.key")
	}
	return nil
}

// Run opens the configured SE and TLS key, then runs the agent until ctx is done.
func Run(ctx context.Context, cfg Config, log *slog.Logger) error {
	if err := cfg.setDefaults(); err != nil {
		return err
	}
	var roots *x509.CertPool
	if cfg.VerifierCAFile != "" {
		pem, err := os.ReadFile(cfg.VerifierCAFile)
		if err != nil {
			return fmt.Errorf("read verifier CA: %w", err)
		}
		roots = x509.NewCertPool()
		if !roots.AppendCertsFromPEM(pem) {
			return fmt.Errorf("verifier CA %s: no PEM certificate", cfg.VerifierCAFile)
		}
	}
	cert, err := LoadOrCreateTLSKey(cfg.TLSKeyFile, cfg.Identity)
	if err != nil {
		return err
	}
	client, err := NewHTTPClient(cfg.VerifierURL, cert, roots)
	if err != nil {
		return err
	}
	defer client.CloseIdleConnections()
	se, err := tpm.Open(cfg.SE)
	if err != nil {
		return err
	}
	defer se.Close()
	if cfg.SE.Kind == tpm.KindSimulator {
		log.Warn("using the in-process TPM simulator: its quotes prove nothing about this host (demo and tests only)")
	}
	if cfg.Overlay != nil {
		// The overlay's key is sealed to the measured state: measure first, with the
		// measurer the agent then keeps.
		if cfg.Measurer, err = newMeasurer(cfg, se); err != nil {
			return err
		}
		ov := cfg.Overlay
		if cfg.WireGuardKey, err = ov.Start(se, cert, log); err != nil {
			return err
		}
		defer ov.Close()
		cfg.Overlay = nil
	}
	a, err := New(cfg, se, client, log)
	if err != nil {
		return err
	}
	if cfg.StatusAddr != "" {
		ln, err := net.Listen("tcp", cfg.StatusAddr)
		if err != nil {
			return fmt.Errorf("status endpoint: %w", err)
		}
		srv := &http.Server{Handler: a.StatusHandler(), ReadHeaderTimeout: 5 * time.Second}
		go srv.Serve(ln)
		defer srv.Close()
		log.Info("status endpoint", "addr", ln.Addr().String())
	}
	return a.Run(ctx)
}

// Status is the agent's state, for operators.
type Status struct {
	Identity     string         `json:"identity"`
	Enrolled     bool           `json:"enrolled"`
	EKSHA256     string         `json:"ek_sha256"`
	TrustLevel   string         `json:"trust_level,omitempty"`
	Rounds       uint64         `json:"rounds"`
	Failures     uint64         `json:"failures"`
	LastRound    time.Time      `json:"last_round,omitzero"`
	LastResult   *attest.Result `json:"last_result,omitempty"`
	LastError    string         `json:"last_error,omitempty"`
	Measurements int            `json:"measurements"`
}

// Agent is a running agent.
type Agent struct {
	cfg      Config
	se       attest.SE
	client   VerifierClient
	log      *slog.Logger
	measurer *Measurer
	ekCert   []byte
	overlay  []byte // the SE's P-256 key-agreement public key, bound into every quote

	mu     sync.Mutex
	status Status
}

// New prepares an agent over an open SE and verifier client: it reconciles the
// measurement log with the PCR and takes the first measurements.
func New(cfg Config, se attest.SE, client VerifierClient, log *slog.Logger) (*Agent, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.Default()
	}
	log = log.With("identity", cfg.Identity)
	a := &Agent{cfg: cfg, se: se, client: client, log: log, status: Status{Identity: cfg.Identity}}
	if cfg.EKCertFile != "" {
		b, err := os.ReadFile(cfg.EKCertFile)
		if err != nil {
			return nil, fmt.Errorf("read EK certificate: %w", err)
		}
		a.ekCert = derOrPEM(b)
	}
	ek, err := se.EndorsementKey()
	if err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	hash, _, err := tpmwire.EKSHA256(ek.Public)
	if err != nil {
		return nil, fmt.Errorf("agent: own EK: %w", err)
	}
	a.status.EKSHA256 = hex.EncodeToString(hash[:])
	// The overlay derives pre-shared keys from an ECDH inside this SE: its public key is
	// bound into every quote so that peers use only the one this TPM vouched for.
	if pub, err := se.ECDHPublicKey(); err != nil {
		log.Warn("the SE has no key-agreement key: quotes bind no overlay key, this host cannot join the overlay", "error", err)
	} else {
		a.overlay = pub.Bytes()
	}
	if a.measurer = cfg.Measurer; a.measurer == nil {
		if a.measurer, err = newMeasurer(cfg, se); err != nil {
			return nil, err
		}
	} else if _, err := a.measurer.Measure(); err != nil {
		return nil, err
	}
	a.status.Measurements = len(a.measurer.Log().Entries)
	log.Info("agent ready", "ek_sha256", a.status.EKSHA256, "ek_certificate", len(ek.Certificate) > 0 || a.ekCert != nil,
		"pcr", cfg.PCR, "files", len(cfg.Measure), "wireguard_key", base64.StdEncoding.EncodeToString(cfg.WireGuardKey))
	return a, nil
}

// newMeasurer makes the measurer of cfg (its log in StateDir) and measures.
func newMeasurer(cfg Config, se attest.SE) (*Measurer, error) {
	stateFile := ""
	if cfg.StateDir != "" {
		stateFile = filepath.Join(cfg.StateDir, fmt.Sprintf("pcr%d.mlog", cfg.PCR))
	}
	m, err := NewMeasurer(se, cfg.PCR, cfg.Measure, stateFile)
	if err != nil {
		return nil, err
	}
	if _, err := m.Measure(); err != nil {
		return nil, err
	}
	return m, nil
}

func derOrPEM(b []byte) []byte {
	if block, _ := pemDecode(b); block != nil {
		return block
	}
	return b
}

// Run enrolls and attests every Interval until ctx is done. Failed rounds are logged
// and retried at the next tick: the verifier lets the last result expire meanwhile,
// which is the fail-closed behaviour the gateway relies on.
func (a *Agent) Run(ctx context.Context) error {
	ticker := time.NewTicker(a.cfg.Interval)
	defer ticker.Stop()
	for {
		a.Round(ctx)
		select {
		case <-ctx.Done():
			a.log.Info("agent stopping")
			return nil
		case <-ticker.C:
		}
	}
}

// Round runs one attestation round (enrolling first when needed) and returns its
// result.
func (a *Agent) Round(ctx context.Context) (*attest.Result, error) {
	start := time.Now()
	r, err := a.round(ctx)
	a.mu.Lock()
	a.status.Rounds++
	a.status.LastRound = start
	a.status.Measurements = len(a.measurer.Log().Entries)
	if err != nil {
		a.status.Failures++
		a.status.LastError = err.Error()
	} else {
		a.status.LastError = ""
		a.status.LastResult = r
	}
	a.mu.Unlock()
	switch {
	case err != nil:
		a.log.Error("attestation round failed", "error", err, "reason", attest.ReasonCode(err), "duration", time.Since(start))
	case r.Status != attest.StatusAffirming:
		a.log.Warn("attestation round", "status", r.Status, "reasons", r.Reasons, "duration", time.Since(start))
	default:
		a.log.Info("attestation round", "status", r.Status, "expires", r.Expires, "duration", time.Since(start))
	}
	return r, err
}

func (a *Agent) round(ctx context.Context) (*attest.Result, error) {
	if added, err := a.measurer.Measure(); err != nil {
		return nil, err
	} else if added > 0 {
		a.log.Info("measured changed files", "entries", added)
	}
	if !a.enrolled() {
		if err := a.enroll(ctx); err != nil {
			return nil, err
		}
	}
	r, err := a.attestOnce(ctx)
	if attest.ReasonCode(err) == attest.ReasonNotEnrolled {
		// The verifier forgot us (restarted on an in-memory store): enroll again now
		// rather than wait a round.
		a.setEnrolled(false, "")
		if err := a.enroll(ctx); err != nil {
			return nil, err
		}
		r, err = a.attestOnce(ctx)
	}
	return r, err
}

func (a *Agent) attestOnce(ctx context.Context) (*attest.Result, error) {
	for attempt := 0; ; attempt++ {
		ch, err := a.client.Challenge(ctx, &attest.ChallengeRequest{Version: attest.ProtocolVersion, Identity: a.cfg.Identity})
		if err != nil {
			return nil, fmt.Errorf("challenge: %w", err)
		}
		ev, err := CollectOverlay(a.se, ch, a.cfg.Identity, a.cfg.WireGuardKey, a.client.TLSKey(), a.overlay, a.measurer.Log())
		if errors.Is(err, ErrPCRRace) && attempt < 2 {
			continue
		}
		if err != nil {
			return nil, err
		}
		return a.client.Submit(ctx, ev)
	}
}

func (a *Agent) enroll(ctx context.Context) error {
	e, err := Enroll(ctx, a.se, a.client, a.cfg.Identity, a.ekCert)
	if err != nil {
		return err
	}
	a.setEnrolled(true, e.TrustLevel.String())
	a.log.Info("enrolled", "trust", e.TrustLevel.String(), "ak_name", hex.EncodeToString(e.AKName))
	return nil
}

func (a *Agent) enrolled() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.status.Enrolled
}

func (a *Agent) setEnrolled(ok bool, trust string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.status.Enrolled, a.status.TrustLevel = ok, trust
}

// Status returns a snapshot of the agent's state.
func (a *Agent) Status() Status {
	a.mu.Lock()
	defer a.mu.Unlock()
	s := a.status
	if s.LastResult != nil {
		r := *s.LastResult
		s.LastResult = &r
	}
	return s
}

// StatusHandler serves GET /status as JSON.
func (a *Agent) StatusHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(a.Status())
	})
	return mux
}
