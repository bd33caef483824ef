package overlay

import (
	"bytes"
	"context"
	"crypto/tls"
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

	"github.com/vishvananda/netlink"
	"go.yaml.in/yaml/v3"

	"github.com/seed4c/moat/attest"
	"github.com/seed4c/moat/attest/agent"
	"github.com/seed4c/moat/attest/verifier"
)

// HostConfig is a backend host's place in the overlay: `moat agent --overlay FILE`
// (YAML). The host configures its side itself, as WireGuard's two ends are configured:
// its gateways (peers) with the policy it appraises each one against, and the tenant
// segments it carries. HostExample is a commented example.
type HostConfig struct {
	// Address is the host's overlay address with the overlay's prefix (required).
	Address netip.Prefix `yaml:"address"`
	// ListenPort is WireGuard's UDP port; default 51820.
	ListenPort int `yaml:"listen_port"`
	// Keepalive keeps a NAT mapping open and lets the gateway follow the host when it
	// roams; default 25 s (WireGuard's advice), "-1s" disables it.
	Keepalive time.Duration `yaml:"keepalive"`
	// Epoch is the pre-shared key period; default 10 min. Both ends must agree.
	Epoch time.Duration `yaml:"epoch"`
	// KeyFile holds the WireGuard key sealed by the host's TPM; default
	// <agent state dir>/overlay.key.
	KeyFile string `yaml:"key_file"`
	// Device is the TUN; default moat-wg. MTU: default 1420.
	Device string `yaml:"device"`
	MTU    int    `yaml:"mtu"`
	// Verifier is where the host's gateways attest to it: a peer is configured only
	// from this verifier's results about it (mutual attestation).
	Verifier struct {
		// Listen is the HTTPS address (mutual TLS, the agent's own key) (required).
		Listen string `yaml:"listen"`
		// ResultTTL: how long an affirming result keeps a gateway configured; default 6 s.
		ResultTTL time.Duration `yaml:"result_ttl"`
	} `yaml:"verifier"`
	// Peers are the gateways the host links with.
	Peers []HostPeer `yaml:"peers"`
	// Segments are the tenants whose traffic the host carries (fast_path: false), each
	// naming the peers (subjects) that carry it too.
	Segments []Segment `yaml:"segments"`
}

// HostPeer is a gateway a host links with, and what its evidence must show.
type HostPeer struct {
	// Subject is the identity the gateway attests as (its configuration's
	// overlay.identity); Endpoint and Address as in PeerConfig.
	Subject  string         `yaml:"subject"`
	Endpoint netip.AddrPort `yaml:"endpoint"`
	Address  netip.Addr     `yaml:"address"`
	// Policy is what the gateway's quotes must show: its measured files' digests and its
	// TPM's EK (allowed_eks, required: only those EKs may enroll as Subject).
	Policy verifier.PolicySpec `yaml:"policy"`
}

// HostExample is a commented HostConfig.
const HostExample = `# moat agent --overlay FILE: this backend host in the WireGuard overlay
address: 100.64.0.3/24          # this host's overlay address, with the overlay's prefix
listen_port: 51820
keepalive: 25s                  # -1s disables
epoch: 10m                      # pre-shared key period, as on the gateway
key_file: ""                    # default: STATE-DIR/overlay.key (sealed by this host's TPM)
device: moat-wg
mtu: 1420
verifier:                       # the gateways attest here; each is configured only while it passes
  listen: "192.0.2.3:9445"      # HTTPS, mutual TLS with the agent's own key
  result_ttl: 6s
peers:
  - subject: gw-1               # the gateway's overlay.identity
    endpoint: 192.0.2.1:51820
    address: 100.64.0.1
    policy:
      references: {/usr/local/bin/moat: [<sha256 hex of the gateway's moat binary>]}
      allowed_eks: [<sha256 hex of the gateway's EK, from moat ctl status>]
segments:
  - tenant: a
    vni: 11                     # the tenant's overlay VNI at the gateway
    address: 10.9.0.3/24        # the backend's address on the segment (register it as such)
    routes: [{dst: 10.0.0.0/24, via: 10.9.0.1}]   # the tenant's clients, via the gateway's segment address
    peers: [gw-1]
`

// Host runs a backend host's overlay beside its agent (it implements agent.Overlay):
// the node with its TUN, segments and firewall, and the verifier its gateways attest
// to, served with the agent's TLS key, so a gateway that pins the key the host's own
// quotes bind reaches this verifier and no other.
type Host struct {
	Config HostConfig
	// StateDir is the agent's state directory (default key file).
	StateDir string
	// Ephemeral: the SE is a new TPM at every start (the simulator), so a key sealed by
	// an earlier run can never be unsealed: it is replaced, with a warning.
	Ephemeral bool

	mu      sync.Mutex
	overlay *Overlay
	v       *verifier.Verifier
	srv     *http.Server
	cancel  context.CancelFunc
	done    chan struct{}
}

// DefaultHostKeepalive is a host's default keepalive.
const DefaultHostKeepalive = 25 * time.Second

// VerifierPrefix is where a host's verifier is mounted: gateways attest to
// https://<listen>/attest, as agents do to a gateway.
const VerifierPrefix = "/attest"

// LoadHostConfig reads a HostConfig strictly (unknown fields are errors).
func LoadHostConfig(path string) (HostConfig, error) {
	var c HostConfig
	err := decodeStrict(path, &c)
	return c, err
}

// parts converts the host's configuration into a node's, its machine and the policies
// its verifier appraises its gateways with.
func (c HostConfig) parts(stateDir string) (Config, Machine, verifier.Policies, error) {
	cfg := Config{Address: c.Address, ListenPort: c.ListenPort, KeyFile: c.KeyFile, Epoch: c.Epoch, Keepalive: c.Keepalive}
	switch {
	case cfg.Keepalive == 0:
		cfg.Keepalive = DefaultHostKeepalive
	case cfg.Keepalive < 0:
		cfg.Keepalive = 0
	}
	if cfg.KeyFile == "" {
		cfg.KeyFile = filepath.Join(stateDir, "overlay.key")
	}
	var errs []error
	if c.Verifier.Listen == "" {
		errs = append(errs, errors.New("verifier.listen: required (the gateways attest there)"))
	}
	pols := verifier.Policies{}
	for _, p := range c.Peers {
		cfg.Peers = append(cfg.Peers, PeerConfig{Subject: p.Subject, Endpoint: p.Endpoint, Address: p.Address})
		pol, err := p.Policy.Policy("overlay peer " + p.Subject)
		if err == nil && len(pol.AllowedEKs) == 0 {
			err = errors.New("allowed_eks: name the gateway's EK (this verifier trusts no manufacturer CA)")
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("peer %s: policy: %w", p.Subject, err))
			continue
		}
		pol.PinEKs = true // only that TPM may enroll as the gateway
		pols[p.Subject] = pol
	}
	for _, s := range c.Segments {
		if s.FastPath {
			errs = append(errs, fmt.Errorf("segment %s: fast_path is for gateways", s.Tenant))
		}
	}
	m := Machine{Device: c.Device, MTU: c.MTU, Segments: c.Segments}
	if m.MTU == 0 {
		m.MTU = DefaultMTU
	}
	checked := cfg
	if err := checked.setDefaults(); err != nil {
		errs = append(errs, err)
	} else if _, err := m.validate(checked); err != nil {
		errs = append(errs, err)
	}
	return cfg, m, pols, errors.Join(errs...)
}

// Start implements agent.Overlay: it brings the overlay up in the calling thread's
// network namespace and starts the verifier, and returns the node's WireGuard public
// key for the agent to bind into its quotes.
func (h *Host) Start(se attest.SE, cert tls.Certificate, log *slog.Logger) (key []byte, err error) {
	cfg, m, pols, err := h.Config.parts(h.StateDir)
	if err != nil {
		return nil, fmt.Errorf("overlay: %w", err)
	}
	if h.Ephemeral {
		if err := os.Remove(cfg.KeyFile); err == nil {
			log.Warn("the TPM simulator is a new TPM at every start: the sealed overlay key of the previous run was replaced (simulator only)", "file", cfg.KeyFile)
		}
	}
	links, err := NewNetlinkLinks()
	if err != nil {
		return nil, err
	}
	o, err := Start(cfg, m, se, links, NFT{}, log)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			o.Close()
		}
	}()
	v, err := verifier.New(verifier.Config{Policies: pols, Subscriber: o.Node, ResultTTL: h.Config.Verifier.ResultTTL, Logger: log})
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", h.Config.Verifier.Listen)
	if err != nil {
		v.Close()
		return nil, fmt.Errorf("overlay verifier: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle(VerifierPrefix+"/", http.StripPrefix(VerifierPrefix, v.Handler()))
	tlsCfg := verifier.ServerTLSConfig(cert)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelDebug)}
	ctx, cancel := context.WithCancel(context.Background())
	h.mu.Lock()
	h.overlay, h.v, h.srv, h.cancel, h.done = o, v, srv, cancel, make(chan struct{})
	h.mu.Unlock()
	go srv.Serve(tls.NewListener(ln, tlsCfg))
	go func() { defer close(h.done); o.Run(ctx) }()
	log.Info("overlay verifier ready: the gateways attest here", "url", "https://"+ln.Addr().String()+VerifierPrefix, "gateways", len(pols))
	pub := o.PublicKey()
	return pub[:], nil
}

// Close implements agent.Overlay: it stops the verifier, leaves the overlay and removes
// its devices and firewall tables.
func (h *Host) Close() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.overlay == nil {
		return nil
	}
	h.cancel()
	<-h.done
	errs := []error{h.srv.Close(), h.v.Close(), h.overlay.Close()}
	h.overlay = nil
	return errors.Join(errs...)
}

// Status is the host's overlay status (nil before Start).
func (h *Host) Status() (*Status, error) {
	h.mu.Lock()
	o := h.overlay
	h.mu.Unlock()
	if o == nil {
		return nil, nil
	}
	st, err := o.Status()
	return &st, err
}

// NewNetlinkLinks returns NetlinkLinks in the calling thread's network namespace.
func NewNetlinkLinks() (NetlinkLinks, error) {
	h, err := netlink.NewHandle()
	if err != nil {
		return NetlinkLinks{}, fmt.Errorf("netlink: %w", err)
	}
	return NetlinkLinks{NL: h}, nil
}

func decodeStrict(path string, v any) error {
	raw, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	return decodeStrictBytes(raw, path, v)
}

// decodeStrictBytes decodes YAML into v, refusing unknown fields; name is for errors.
func decodeStrictBytes(raw []byte, name string, v any) error {
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	dec.KnownFields(true)
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	return nil
}

var _ agent.Overlay = (*Host)(nil)
