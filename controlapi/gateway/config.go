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
	"os"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/seed4c/moat/attest/verifier"
	"github.com/seed4c/moat/controlapi/certs"
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

	// Subscribers hear every attestation result right after the reconciler, from the
	// verifier's publisher goroutine, so within the same bound as backend admission and
	// eviction: dataplane/overlay.Node adds a WireGuard peer on the result that admits
	// its subject and removes it on the one that evicts it. Set by the program that
	// embeds the gateway, never read from the file.
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
	if c.TLS.Mode == certs.ModeACME && len(c.TLS.Names) == 0 {
		errs = append(errs, errors.New("tls.names: acme mode needs the gateway's public DNS names"))
	}
	if c.Verifier.ResultTTL < time.Second {
		errs = append(errs, fmt.Errorf("verifier.result_ttl %v: at least 1s", c.Verifier.ResultTTL))
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
log:
  level: info                  # debug, info, warn, error
  format: text                 # text or json
`
