// Package gateway is the `moat gateway` daemon: it loads the fast path on the
// configured interfaces, serves the REST API over HTTPS and the verifier endpoint for
// backend agents, keeps its state in bbolt, and runs the reconciler that admits a
// backend only while its attestation holds.
package gateway

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/seed4c/moat/attest"
	"github.com/seed4c/moat/attest/agent"
	"github.com/seed4c/moat/attest/tpm"
	"github.com/seed4c/moat/attest/verifier"
	"github.com/seed4c/moat/controlapi/certs"
	"github.com/seed4c/moat/dataplane/overlay"
)

// Config is the daemon's configuration file (YAML). Every field has a default; an
// unknown field is an error.
type Config struct {
	// Instance names the fast path instance: its pins live in
	// /sys/fs/bpf/moat/<instance>. Default "moat".
	Instance string `yaml:"instance"`
	// StateDir holds state.db (bbolt), the internal CA, certificates and the bootstrap
	// operator token. Default /var/lib/moat.
	StateDir string `yaml:"state_dir"`
	// Interfaces are the gateway interfaces the fast path is attached to; tenants can be
	// attached only to these.
	Interfaces []string `yaml:"interfaces"`

	API struct {
		// Listen is the REST API's HTTPS address. Default ":9443".
		Listen string `yaml:"listen"`
	} `yaml:"api"`

	Verifier struct {
		// Listen is the HTTPS address (mutual TLS) backend agents attest to. Default ":9444".
		Listen string `yaml:"listen"`
		// ResultTTL is how long an affirming result admits a backend. Default 6s (three
		// agent intervals of 2 s).
		ResultTTL time.Duration `yaml:"result_ttl"`
		// EKRoots are PEM files of TPM manufacturer CAs; without any, only EKs on a
		// policy's allow-list enroll.
		EKRoots []string `yaml:"ek_roots"`
	} `yaml:"verifier"`

	Metrics struct {
		// Listen is the Prometheus endpoint (plain HTTP, /metrics). Default
		// "127.0.0.1:9464"; "off" disables it.
		Listen string `yaml:"listen"`
	} `yaml:"metrics"`

	TLS struct {
		// Mode is "internal" (a CA the gateway creates in StateDir; clients trust
		// StateDir/ca.crt) or "acme". Default internal.
		Mode certs.Mode `yaml:"mode"`
		// Names the certificate covers. Default: the host name, localhost, 127.0.0.1.
		Names []string `yaml:"names"`
		ACME  struct {
			Directory string `yaml:"directory"`
			Email     string `yaml:"email"`
			// Roots are PEM files of CAs to trust the ACME server with (a private ACME CA).
			Roots []string `yaml:"roots"`
			// ChallengePort is where TLS-ALPN-01 challenges are answered. Default 443.
			ChallengePort int `yaml:"challenge_port"`
		} `yaml:"acme"`
	} `yaml:"tls"`

	Dataplane struct {
		// PinRoot is the bpffs directory of instances. Default /sys/fs/bpf/moat.
		PinRoot string `yaml:"pin_root"`
		// MaxFlows is the connection tracking size (two entries per flow). Default 262144.
		MaxFlows uint32 `yaml:"max_flows"`
	} `yaml:"dataplane"`

	// SE is the gateway's own Secure Element (a TPM 2.0), opened at start: it holds the
	// overlay's keys (the sealed WireGuard key; the key-agreement key each pair's
	// pre-shared key is derived with) and attests the gateway to its overlay peers.
	SE struct {
		// Kind: "" (none, the default: no overlay), device, swtpm, or simulator (tests and
		// demos only: it proves nothing, and is a new TPM at every start).
		Kind tpm.Kind `yaml:"kind"`
		// Path: the device (default /dev/tpmrm0), or swtpm's socket (unix:/path, host:port).
		Path string `yaml:"path"`
		// EKAlgorithm: ecc (default) or rsa.
		EKAlgorithm tpm.EKAlgorithm `yaml:"ek_algorithm"`
		// Measure lists the files measured into PCR at start; default: the running moat
		// executable. Peers' policies hold their digests; the overlay key is sealed to
		// the state they leave in the PCR.
		Measure []string `yaml:"measure"`
		// PCR is the measurement PCR (8..23); default 15.
		PCR int `yaml:"pcr"`
	} `yaml:"se"`

	// Overlay links the gateway with backend hosts and other gateways over WireGuard
	// (dataplane/overlay): its peers and the tenants they carry are desired state
	// (/v1/overlay/peers; a tenant's segment is its "overlay" field).
	Overlay struct {
		// Enabled runs the overlay; it needs an SE. Default false.
		Enabled bool `yaml:"enabled"`
		// Address is the gateway's overlay address with the overlay's prefix
		// (100.64.0.1/24); required when enabled.
		Address netip.Prefix `yaml:"address"`
		// ListenPort is WireGuard's UDP port. Default 51820.
		ListenPort int `yaml:"listen_port"`
		// Device is the TUN's name. Default moat-wg.
		Device string `yaml:"device"`
		// MTU of the TUN: the underlay's MTU less 80 (less 100 on an IPv6 underlay);
		// tenant segments get 50 less. Default 1420.
		MTU int `yaml:"mtu"`
		// Epoch is the pre-shared key period; peers must use the same. Default 10m.
		Epoch time.Duration `yaml:"epoch"`
		// Keepalive, when set, keeps NAT mappings toward peers open. Default 0 (off).
		Keepalive time.Duration `yaml:"keepalive"`
		// KeyFile holds the WireGuard key sealed by the SE. Default
		// state_dir/overlay/wireguard.key.
		KeyFile string `yaml:"key_file"`
		// Identity is the gateway's attestation identity at its peers' verifiers (their
		// configuration names it). Default: the host name.
		Identity string `yaml:"identity"`
		// AttestInterval is how often the gateway attests to each peer's verifier.
		// Default 2s.
		AttestInterval time.Duration `yaml:"attest_interval"`
		// VerifierListen is the HTTPS address (mutual TLS) of the verifier other gateways
		// attest to: the gateway's verifier, served with the TLS key its own quotes bind,
		// so that a peer gateway's agent pins it as it pins a backend host's. Default
		// ":9445".
		VerifierListen string `yaml:"verifier_listen"`
	} `yaml:"overlay"`

	// Subscribers hear every attestation result right after the reconciler (and the
	// gateway's own overlay, when enabled, which adds a WireGuard peer on the result
	// that admits its subject and removes it on the one that evicts it), from the
	// verifier's publisher goroutine, so within the same bound as backend admission and
	// eviction. Set by the program that embeds the gateway, never read from the file.
	Subscribers []verifier.Subscriber `yaml:"-"`

	Log struct {
		// Level: debug, info, warn, error. Default info.
		Level string `yaml:"level"`
		// Format: text or json. Default text.
		Format string `yaml:"format"`
	} `yaml:"log"`
}

// DefaultConfigPath is where `moat gateway` looks for its configuration.
const DefaultConfigPath = "/etc/moat/gateway.yaml"

// Defaults fills every unset field.
func (c *Config) Defaults() {
	set := func(p *string, v string) {
		if *p == "" {
			*p = v
		}
	}
	set(&c.Instance, "moat")
	set(&c.StateDir, "/var/lib/moat")
	set(&c.API.Listen, ":9443")
	set(&c.Verifier.Listen, ":9444")
	set(&c.Metrics.Listen, "127.0.0.1:9464")
	set((*string)(&c.TLS.Mode), string(certs.ModeInternal))
	set(&c.Log.Level, "info")
	set(&c.Log.Format, "text")
	if c.Verifier.ResultTTL == 0 {
		c.Verifier.ResultTTL = 6 * time.Second
	}
	if len(c.TLS.Names) == 0 && c.TLS.Mode == certs.ModeInternal {
		c.TLS.Names = certs.DefaultNames() // an ACME CA would refuse these: names are required there
	}
	if c.TLS.ACME.ChallengePort == 0 {
		c.TLS.ACME.ChallengePort = 443
	}
	if c.Dataplane.MaxFlows == 0 {
		c.Dataplane.MaxFlows = 262144
	}
	if c.SE.PCR == 0 {
		c.SE.PCR = attest.DefaultMeasurementPCR
	}
	if c.Overlay.ListenPort == 0 {
		c.Overlay.ListenPort = overlay.DefaultListenPort
	}
	set(&c.Overlay.Device, overlay.DefaultDevice)
	if c.Overlay.MTU == 0 {
		c.Overlay.MTU = overlay.DefaultMTU
	}
	if c.Overlay.Epoch == 0 {
		c.Overlay.Epoch = overlay.DefaultEpoch
	}
	set(&c.Overlay.KeyFile, filepath.Join(c.StateDir, "overlay", "wireguard.key"))
	if c.Overlay.Identity == "" {
		c.Overlay.Identity, _ = os.Hostname()
	}
	if c.Overlay.AttestInterval == 0 {
		c.Overlay.AttestInterval = agent.DefaultInterval
	}
	set(&c.Overlay.VerifierListen, ":9445")
}

// Validate refuses a configuration the daemon cannot run with.
func (c *Config) Validate() error {
	var errs []error
	if len(c.Interfaces) == 0 {
		errs = append(errs, errors.New("interfaces: name at least one interface for the fast path"))
	}
	seen := map[string]bool{}
	for _, i := range c.Interfaces {
		if seen[i] {
			errs = append(errs, fmt.Errorf("interfaces: %s listed twice", i))
		}
		seen[i] = true
	}
	if c.TLS.Mode != certs.ModeInternal && c.TLS.Mode != certs.ModeACME {
		errs = append(errs, fmt.Errorf("tls.mode %q: want internal or acme", c.TLS.Mode))
	}
	if c.TLS.Mode == certs.ModeACME && (c.TLS.ACME.Directory == "" || c.TLS.ACME.Email == "") {
		errs = append(errs, errors.New("tls.acme: directory and email are required in acme mode"))
	}
	if p := c.TLS.ACME.ChallengePort; c.TLS.Mode == certs.ModeACME && (p < 1 || p > 65535) {
		errs = append(errs, fmt.Errorf("tls.acme.challenge_port %d: want 1 to 65535", p))
	}
	if c.TLS.Mode == certs.ModeACME && len(c.TLS.Names) == 0 {
		errs = append(errs, errors.New("tls.names: acme mode needs the gateway's public DNS names"))
	}
	if c.Verifier.ResultTTL < time.Second {
		errs = append(errs, fmt.Errorf("verifier.result_ttl %v: at least 1s", c.Verifier.ResultTTL))
	}
	switch c.SE.Kind {
	case "", tpm.KindDevice, tpm.KindSwtpm, tpm.KindSimulator:
	default:
		errs = append(errs, fmt.Errorf("se.kind %q: want device, swtpm, simulator or nothing", c.SE.Kind))
	}
	if c.SE.PCR < 8 || c.SE.PCR > 23 {
		errs = append(errs, fmt.Errorf("se.pcr %d: want 8 to 23", c.SE.PCR))
	}
	if o := c.Overlay; o.Enabled {
		if c.SE.Kind == "" {
			errs = append(errs, errors.New("overlay.enabled: the overlay needs the gateway's SE (se.kind)"))
		}
		if a := o.Address; !a.IsValid() || !a.Addr().Is4() || a.Addr() == a.Masked().Addr() || a.Bits() > 30 {
			errs = append(errs, fmt.Errorf("overlay.address %v: want the gateway's IPv4 overlay address with the overlay's prefix, such as 100.64.0.1/24", a))
		}
		if o.ListenPort < 1 || o.ListenPort > 65535 {
			errs = append(errs, fmt.Errorf("overlay.listen_port %d: want 1 to 65535", o.ListenPort))
		}
		if overlay.SegmentMTU(o.MTU) < 576 || o.MTU > 65535 {
			errs = append(errs, fmt.Errorf("overlay.mtu %d: tenant segments would get %d bytes: want at least 626", o.MTU, overlay.SegmentMTU(o.MTU)))
		}
		if o.Epoch < time.Second || o.Epoch%time.Second != 0 {
			errs = append(errs, fmt.Errorf("overlay.epoch %v: a whole number of seconds, at least 1s", o.Epoch))
		}
		if o.Identity == "" {
			errs = append(errs, errors.New("overlay.identity: required (no host name to default to)"))
		}
		if err := overlay.CheckKeepalive(o.Keepalive); err != nil {
			errs = append(errs, fmt.Errorf("overlay.keepalive %w", err))
		}
		if o.AttestInterval < 100*time.Millisecond {
			errs = append(errs, fmt.Errorf("overlay.attest_interval %v: at least 100ms", o.AttestInterval))
		}
	}
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		errs = append(errs, fmt.Errorf("log.level %q: want debug, info, warn or error", c.Log.Level))
	}
	if c.Log.Format != "text" && c.Log.Format != "json" {
		errs = append(errs, fmt.Errorf("log.format %q: want text or json", c.Log.Format))
	}
	return errors.Join(errs...)
}

// LoadConfig reads a configuration file strictly, then fills defaults and validates.
func LoadConfig(path string) (Config, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return Config{}, fmt.Errorf("read configuration: %w", err)
	}
	return ParseConfig(raw)
}

// ParseConfig decodes YAML strictly, fills defaults and validates.
func ParseConfig(raw []byte) (Config, error) {
	var c Config
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil && !errors.Is(err, io.EOF) { // empty: all defaults
		return Config{}, fmt.Errorf("decode configuration: %w", err)
	}
	c.Defaults()
	if err := c.Validate(); err != nil {
		return Config{}, fmt.Errorf("configuration: %w", err)
	}
	return c, nil
}

// Example is a commented configuration with the defaults, for `moat gateway
// --print-config`.
const Example = `# moat gateway configuration (defaults shown)
instance: moat                 # fast path pins in /sys/fs/bpf/moat/<instance>
state_dir: /var/lib/moat       # state.db, internal CA, certificates, operator.token
interfaces: [eth1, eth2]       # required: where the fast path goes; tenants attach here
api:
  listen: ":9443"              # REST API, HTTPS
verifier:
  listen: ":9444"              # backend agents, HTTPS with mutual TLS
  result_ttl: 6s               # how long an affirming attestation admits a backend
  ek_roots: []                 # PEM files of TPM manufacturer CAs
metrics:
  listen: "127.0.0.1:9464"     # Prometheus /metrics, plain HTTP; "off" disables
tls:
  mode: internal               # internal (CA in state_dir, trust state_dir/ca.crt) or acme
  names: []                    # internal default: host name, localhost, 127.0.0.1; required for acme
  acme:
    directory: ""              # e.g. https://acme-v02.api.letsencrypt.org/directory
    email: ""
    roots: []                  # extra CAs to trust the ACME server with
    challenge_port: 443        # TLS-ALPN-01
dataplane:
  pin_root: /sys/fs/bpf/moat
  max_flows: 262144
se:                            # the gateway's own TPM: overlay keys, attestation to its peers
  kind: ""                     # "" (none), device, swtpm, simulator (tests only); the overlay needs one
  path: ""                     # device (default /dev/tpmrm0) or swtpm socket (unix:/path, host:port)
  ek_algorithm: ecc            # ecc or rsa
  measure: []                  # files measured at start, which peers appraise; default: this moat binary
  pcr: 15                      # measurement PCR; the overlay key is sealed to it
overlay:                       # WireGuard links with backend hosts and gateways (peers: /v1/overlay/peers)
  enabled: false
  address: ""                  # required: this gateway's overlay address, such as 100.64.0.1/24
  listen_port: 51820
  device: moat-wg
  mtu: 1420                    # underlay MTU - 80; tenant segments get 50 less
  epoch: 10m                   # pre-shared key period (the same on every peer)
  keepalive: 0s                # off; 25s behind NAT
  key_file: ""                 # default state_dir/overlay/wireguard.key (sealed by the SE)
  identity: ""                 # the gateway's identity at its peers' verifiers; default: host name
  attest_interval: 2s          # how often the gateway attests to each peer
  verifier_listen: ":9445"     # where peer gateways attest (TLS key bound into this gateway's quotes)
log:
  level: info                  # debug, info, warn, error
  format: text                 # text or json
`
