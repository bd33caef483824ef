package gateway

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/seed4c/moat/attest"
	"github.com/seed4c/moat/attest/tpm"
	"github.com/seed4c/moat/attest/tpmwire"
	"github.com/seed4c/moat/attest/verifier"
	"github.com/seed4c/moat/controlapi/api"
	"github.com/seed4c/moat/controlapi/auth"
	"github.com/seed4c/moat/controlapi/certs"
	"github.com/seed4c/moat/controlapi/kv"
	"github.com/seed4c/moat/controlapi/reconcile"
	"github.com/seed4c/moat/controlapi/state"
	"github.com/seed4c/moat/dataplane"
	"github.com/seed4c/moat/tenant"
)

// The fast path's writer is an Evicter: the reconciler cuts a backend that loses its
// admission out of the fast path before it rebuilds the backend's service's table.
var _ reconcile.Evicter = (*dataplane.Writer)(nil)

// AttestPrefix is where the verifier is mounted on the agents' listener: agents use
// https://<gateway>:<verifier port>/attest as their verifier URL.
const AttestPrefix = "/attest"

// Gateway is a running daemon.
type Gateway struct {
	cfg     Config
	log     *slog.Logger
	started time.Time

	kv       *kv.Bolt
	State    *state.Store
	Tokens   *auth.Tokens
	DP       *dataplane.Dataplane
	Rec      *reconcile.Reconciler
	Verifier *verifier.Verifier
	Certs    *certs.Manager
	// SE is the gateway's own Secure Element (nil when none is configured).
	SE       attest.SE
	seEK     string // its EK's SHA-256, hex
	overlay  *gatewayOverlay
	compiler *tenant.Compiler
	modes    map[string]dataplane.AttachMode

	// Addresses the listeners are bound to (useful with ":0"); PeerVerifierAddr with
	// the overlay only.
	APIAddr, AgentAddr, MetricsAddr, PeerVerifierAddr string

	servers []*http.Server
	cancel  context.CancelFunc
	wg      sync.WaitGroup
}

// ifaceResolver resolves only the configured interfaces: a tenant attached anywhere
// else would never see a frame.
type ifaceResolver map[string]bool

func (r ifaceResolver) Index(name string) (uint32, error) {
	if !r[name] {
		return 0, fmt.Errorf("interface %s is not one of the gateway's interfaces (configuration: interfaces)", name)
	}
	i, err := net.InterfaceByName(name)
	if err != nil {
		return 0, fmt.Errorf("interface %s: %w", name, err)
	}
	return uint32(i.Index), nil
}

// Run starts the gateway and serves until ctx ends, then shuts it down gracefully:
// the fast path keeps forwarding on its pins.
func Run(ctx context.Context, cfg Config, log *slog.Logger) error {
	g, err := Start(ctx, cfg, log)
	if err != nil {
		return err
	}
	if ca := g.Certs.CAPEM(); ca != nil {
		os.Stdout.Write(ca) // for clients to trust; later: moat gateway --print-ca
	}
	<-ctx.Done()
	log.Info("shutting down; the fast path keeps forwarding on its pins")
	return g.Shutdown()
}

// Start brings the gateway up and returns once every listener serves. The order keeps
// a restart invisible to traffic: the maps are reconciled (with the attestation results
// the store remembers) before the new program is swapped into the pinned links.
func Start(parent context.Context, cfg Config, log *slog.Logger) (g *Gateway, err error) {
	cfg.Defaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(parent)
	g = &Gateway{cfg: cfg, log: log, started: time.Now(), cancel: cancel, modes: map[string]dataplane.AttachMode{}}
	started := g // every `return nil, err` below sets g to nil before this runs
	defer func() {
		if err != nil {
			started.Shutdown()
		}
	}()
	for _, name := range cfg.Interfaces { // fail fast, before anything is opened
		if _, err := net.InterfaceByName(name); err != nil {
			return nil, fmt.Errorf("interface %s (configuration: interfaces): %w", name, err)
		}
	}
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("state directory: %w", err)
	}
	if g.kv, err = kv.OpenBolt(filepath.Join(cfg.StateDir, "state.db"), 5*time.Second); err != nil {
		return nil, err
	}
	ifaces := ifaceResolver{}
	for _, i := range cfg.Interfaces {
		ifaces[i] = true
	}
	limits := tenant.DefaultLimits()
	resolve := tenant.Interfaces(ifaces)
	planned := tenant.Interfaces(ifaces)
	if cfg.Overlay.Enabled { // tenant segments' ends are gateway interfaces too
		resolve, planned = segmentResolver{ifaceResolver: ifaces}, segmentResolver{ifaceResolver: ifaces, planned: true}
	}
	g.State = state.New(g.kv, func(c tenant.Config) error { return tenant.Validate(c, planned, tenant.IDs{}, limits) }, nil)
	g.Tokens = auth.New(g.kv, nil)
	tokenFile := filepath.Join(cfg.StateDir, "operator.token")
	if secret, err := g.Tokens.Bootstrap(tokenFile); err != nil {
		return nil, fmt.Errorf("bootstrap operator token: %w", err)
	} else if secret != "" {
		log.Info("no token existed: created an operator token", "file", tokenFile)
	}

	copts := certs.Options{Mode: cfg.TLS.Mode, Dir: cfg.StateDir, Names: cfg.TLS.Names, ACMEDirectory: cfg.TLS.ACME.Directory,
		ACMEEmail: cfg.TLS.ACME.Email, ACMEChallengePort: cfg.TLS.ACME.ChallengePort, Log: log}
	if copts.ACMERoots, err = loadPool(cfg.TLS.ACME.Roots); err != nil {
		return nil, fmt.Errorf("tls.acme.roots: %w", err)
	}
	if g.Certs, err = certs.New(ctx, copts); err != nil {
		return nil, err
	}

	if cfg.SE.Kind != "" {
		if g.SE, g.seEK, err = openSE(cfg, log); err != nil {
			return nil, err
		}
	}

	dpOpts := dataplane.DefaultOptions(cfg.Instance)
	if cfg.Dataplane.PinRoot != "" {
		dpOpts.PinRoot = cfg.Dataplane.PinRoot
	}
	dpOpts.MaxFlows, dpOpts.Limits, dpOpts.Logger = cfg.Dataplane.MaxFlows, limits, log
	if g.DP, err = dataplane.Open(dpOpts); err != nil {
		return nil, err
	}
	ids, err := g.State.LoadIDs()
	if err != nil {
		return nil, err
	}
	enroll := state.Enrollments{KV: g.kv}
	g.compiler = tenant.NewCompiler(resolve, limits, ids)
	recCfg := reconcile.Config{State: g.State, Compiler: g.compiler, Applier: g.DP.Writer(), Enrolled: enroll.Enrolled, Log: log}
	subscribers := verifier.Subscribers{}
	if cfg.Overlay.Enabled {
		if g.overlay, err = startOverlay(ctx, cfg, g.SE, g.DP, log); err != nil {
			return nil, err
		}
		g.State.CheckOverlay(g.overlay.check)
		recCfg.Devices, recCfg.Links, subscribers = g.overlay, g.overlay, append(subscribers, g.overlay)
	} else {
		g.State.CheckOverlay(func(sn *state.Snapshot) error {
			if len(sn.OverlayPeers) > 0 {
				return errors.New("overlay peers: the overlay is not enabled on this gateway (configuration: overlay.enabled)")
			}
			return nil
		})
	}
	if g.Rec, err = reconcile.New(recCfg); err != nil {
		return nil, err
	}
	if g.overlay != nil {
		g.overlay.watch(g.Rec.LinksChanged)
	}
	// Backend agents reach the verifier through the tenants' interfaces: open its port
	// on the gateway's addresses there, and nothing else.
	hs, err := hostServices(cfg.Interfaces, cfg.Verifier.Listen)
	if err != nil {
		return nil, err
	}
	if cfg.Overlay.Enabled { // peer gateways may reach it through a tenant network too
		ohs, err := hostServices(cfg.Interfaces, cfg.Overlay.VerifierListen)
		if err != nil {
			return nil, fmt.Errorf("overlay.verifier_listen: %w", err)
		}
		hs = append(hs, ohs...)
	}
	if err := g.DP.Writer().SetHostServices(hs); err != nil {
		return nil, err
	}
	if _, err := g.Rec.Pass(); err != nil {
		// The pinned maps keep what they held; the reconciler retries and the API is up
		// to fix whatever is wrong.
		log.Error("first reconciliation failed; the fast path keeps its previous configuration", "error", err)
	}
	for _, name := range cfg.Interfaces {
		mode, err := g.DP.Attach(name)
		if err != nil {
			return nil, err
		}
		g.modes[name] = mode
		log.Info("fast path attached", "interface", name, "mode", mode)
	}

	ekRoots, err := loadPool(cfg.Verifier.EKRoots)
	if err != nil {
		return nil, fmt.Errorf("verifier.ek_roots: %w", err)
	}
	if g.Verifier, err = verifier.New(verifier.Config{Policies: g.Rec, Store: enroll,
		Subscriber: append(append(verifier.Subscribers{g.Rec}, subscribers...), cfg.Subscribers...), EKRoots: ekRoots,
		ResultTTL: cfg.Verifier.ResultTTL, Logger: log}); err != nil {
		return nil, err
	}
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		if err := g.Rec.Run(ctx); err != nil {
			log.Error("reconciler stopped", "error", err)
		}
	}()

	m := newMetrics(g)
	apiSrv := &api.Server{State: g.State, Tokens: g.Tokens, Live: g, Log: log, Metrics: m.observeRequest}
	apiTLS := g.Certs.TLSConfig()
	if g.APIAddr, err = g.serve("api", cfg.API.Listen, apiSrv.Handler(), apiTLS); err != nil {
		return nil, err
	}
	agentTLS := g.Certs.TLSConfig()
	agentTLS.ClientAuth = tls.RequireAnyClientCert // the agent's key is vouched for by its quote
	agentTLS.MinVersion = tls.VersionTLS13
	agentMux := http.NewServeMux()
	agentMux.Handle(AttestPrefix+"/", http.StripPrefix(AttestPrefix, g.Verifier.Handler()))
	if g.AgentAddr, err = g.serve("verifier", cfg.Verifier.Listen, agentMux, agentTLS); err != nil {
		return nil, err
	}
	if g.overlay != nil {
		// Peer gateways attest to the same verifier, served with the TLS key this
		// gateway's own quotes bind (its agents present it to their peers' verifiers):
		// a peer's agent pins it as the gateway's agents pin a host's verifier.
		peerTLS := verifier.ServerTLSConfig(g.overlay.cert)
		if g.PeerVerifierAddr, err = g.serve("overlay verifier", cfg.Overlay.VerifierListen, agentMux, peerTLS); err != nil {
			return nil, err
		}
	}
	if cfg.Metrics.Listen != "off" {
		if g.MetricsAddr, err = g.serve("metrics", cfg.Metrics.Listen, m.handler(), nil); err != nil {
			return nil, err
		}
	}
	log.Info("gateway ready", "api", "https://"+g.APIAddr, "verifier", "https://"+g.AgentAddr+AttestPrefix,
		"metrics", g.MetricsAddr, "ca", g.Certs.CAFile, "operator_token", tokenFile)
	return g, nil
}

func (g *Gateway) serve(name, addr string, h http.Handler, tlsCfg *tls.Config) (string, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return "", fmt.Errorf("%s listener %s: %w", name, addr, err)
	}
	if tlsCfg != nil {
		ln = tls.NewListener(ln, tlsCfg)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute,
		ErrorLog: slog.NewLogLogger(g.log.Handler(), slog.LevelDebug)}
	g.servers = append(g.servers, srv)
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			g.log.Error(name+" server stopped", "error", err)
		}
	}()
	return ln.Addr().String(), nil
}

// Shutdown stops the listeners, lets the reconciler store the latest results, and
// closes the fast path's handles; pins and links stay, so traffic keeps flowing.
func (g *Gateway) Shutdown() error {
	var errs []error
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, s := range g.servers {
		errs = append(errs, s.Shutdown(ctx))
	}
	if g.cancel != nil {
		g.cancel()
	}
	g.wg.Wait()
	if g.Verifier != nil {
		errs = append(errs, g.Verifier.Close())
	}
	if g.overlay != nil {
		errs = append(errs, g.overlay.close())
	}
	if g.DP != nil {
		errs = append(errs, g.DP.Close())
	}
	if g.SE != nil {
		errs = append(errs, g.SE.Close())
	}
	if g.kv != nil {
		errs = append(errs, g.kv.Close())
	}
	return errors.Join(errs...)
}

// openSE opens the gateway's own TPM and returns it with its EK's SHA-256 (hex), which
// overlay peers pin in their policy for the gateway.
func openSE(cfg Config, log *slog.Logger) (attest.SE, string, error) {
	se, err := tpm.Open(tpm.Config{Kind: cfg.SE.Kind, Path: cfg.SE.Path, EKAlgorithm: cfg.SE.EKAlgorithm})
	if err != nil {
		return nil, "", fmt.Errorf("se: %w", err)
	}
	ek, err := se.EndorsementKey()
	if err == nil {
		var d [32]byte
		if d, _, err = tpmwire.EKSHA256(ek.Public); err == nil {
			log.Info("gateway SE open", "kind", cfg.SE.Kind, "ek_sha256", hex.EncodeToString(d[:]), "ek_certificate", len(ek.Certificate) > 0)
			if cfg.SE.Kind == tpm.KindSimulator {
				log.Warn("the gateway's SE is the in-process TPM simulator: it proves nothing (demo and tests only)")
			}
			return se, hex.EncodeToString(d[:]), nil
		}
	}
	se.Close()
	return nil, "", fmt.Errorf("se: endorsement key: %w", err)
}

// hostServices lists the verifier's TCP port on every IPv4 address of every attached
// interface (or on the listen address only, when it names one).
func hostServices(ifaces []string, listen string) ([]dataplane.HostService, error) {
	host, portStr, err := net.SplitHostPort(listen)
	if err != nil {
		return nil, fmt.Errorf("verifier.listen %q: %w", listen, err)
	}
	port, err := net.LookupPort("tcp", portStr)
	if err != nil {
		return nil, fmt.Errorf("verifier.listen %q: %w", listen, err)
	}
	only, _ := netip.ParseAddr(host)
	var out []dataplane.HostService
	for _, name := range ifaces {
		ifc, err := net.InterfaceByName(name)
		if err != nil {
			return nil, fmt.Errorf("interface %s: %w", name, err)
		}
		addrs, err := ifc.Addrs()
		if err != nil {
			return nil, fmt.Errorf("addresses of %s: %w", name, err)
		}
		for _, a := range addrs {
			pfx, err := netip.ParsePrefix(a.String())
			if err != nil || !pfx.Addr().Is4() || only.IsValid() && !only.IsUnspecified() && only != pfx.Addr() {
				continue
			}
			out = append(out, dataplane.HostService{Ifindex: uint32(ifc.Index), Addr: pfx.Addr(), Port: uint16(port), Proto: 6})
		}
	}
	return out, nil
}

func loadPool(files []string) (*x509.CertPool, error) {
	if len(files) == 0 {
		return nil, nil
	}
	pool := x509.NewCertPool()
	for _, f := range files {
		pem, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("%s: no PEM certificate", f)
		}
	}
	return pool, nil
}
