package demo

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/seed4c/moat/controlapi/state"
	"github.com/seed4c/moat/dataplane"
	"github.com/seed4c/moat/internal/topology"
	"github.com/seed4c/moat/lb"
)

// AttestedScene is the reference topology run the production way: `moat gateway` in
// the gateway's namespace owns the fast path, and every backend host runs `moat agent`
// with its own simulated TPM. Backends are registered through the REST API and reach
// the data path only once their attestation succeeds.
type AttestedScene struct {
	Topo     *topology.Topology
	Binary   string // the moat executable
	Dir      string // working directory: configuration, state, logs, application files
	Instance string
	Token    string
	API      *http.Client
	APIBase  string

	gateway *exec.Cmd
	agents  map[string]*exec.Cmd // by backend name
	peers   []*dataplane.CountPass
	remote  *RemoteHost // with the overlay
	site    *Site       // one gateway of a two-site overlay (sites.go)
	log     io.Writer
}

// AttestedOptions configure the scene.
type AttestedOptions struct {
	Binary   string        // moat executable (required)
	Dir      string        // working directory (required; removed by Close only if Temp)
	Instance string        // fast path instance name
	Backends int           // per tenant
	Interval time.Duration // agents' attestation interval; default 500 ms
	Log      io.Writer     // progress messages; nil: none
	// Overlay adds a remote backend host of the first tenant reachable only through the
	// WireGuard overlay, the gateway running with a simulated SE and the overlay on
	// (overlay.go).
	Overlay bool
	// Tenants and VIP shape the topology (topology.Options); defaults a, b and
	// 10.100.0.1.
	Tenants []string
	VIP     netip.Addr
	// Site makes the gateway one site of a two-site overlay (sites.go): its own
	// simulated SE, the overlay on, a segment per tenant.
	Site *Site
	// Tampered, when set, picks backend hosts whose application is tampered with from
	// the start: their agent's first measurement shows it. Tampering with a host once
	// its agent runs races the agent's round in flight: a round that measured the file
	// before the change and is appraised after the host's registration is affirming,
	// and the host is admitted before its next round evicts it.
	Tampered func(*topology.Topology) []*topology.Backend
}

// LastOfFirstTenant is a Tampered that picks the last backend host of the first tenant.
func LastOfFirstTenant(t *topology.Topology) []*topology.Backend {
	a := t.Tenants[0]
	return []*topology.Backend{a.Backends[len(a.Backends)-1]}
}

// AppFile is the measured application binary of a backend host.
func (s *AttestedScene) AppFile(backend string) string {
	return filepath.Join(s.Dir, backend, "app.bin")
}

// appContent is what a backend's application binary holds when untampered; every
// backend of a tenant runs the same application.
func appContent(tenantName string) []byte {
	return []byte("application of tenant " + tenantName + ", release 1\n")
}

// tamperedContent is a tampered application binary of a tenant's backend.
func tamperedContent(tenantName string) []byte {
	return []byte("application of tenant " + tenantName + ", release 1, with a backdoor\n")
}

// NewAttestedScene builds the topology, starts the gateway daemon and one agent per
// backend host. Backends are not registered yet (Register does it).
func NewAttestedScene(o AttestedOptions) (s *AttestedScene, err error) {
	if o.Interval == 0 {
		o.Interval = 500 * time.Millisecond
	}
	if o.Backends == 0 {
		o.Backends = 3
	}
	if o.Log == nil {
		o.Log = io.Discard
	}
	s = &AttestedScene{Binary: o.Binary, Dir: o.Dir, Instance: o.Instance, agents: map[string]*exec.Cmd{}, log: o.Log, site: o.Site}
	defer func() {
		if err != nil {
			s.Close()
			s = nil
		}
	}()
	// Maglev wants at least 64 slots per backend (tenant.Validate); the remote host
	// is one more backend of the first tenant.
	size := lb.NextPrime(uint32(64 * (o.Backends + 1)))
	if s.Topo, err = topology.Build(topology.Options{Tenants: o.Tenants, VIP: o.VIP, Backends: o.Backends, MaglevSize: size, Management: true}); err != nil {
		return nil, err
	}
	if err := s.Topo.StartServers(); err != nil {
		return nil, err
	}
	for _, h := range s.Topo.PeerHosts() {
		err := h.Do(func() error {
			l, err := h.Link("eth0")
			if err != nil {
				return err
			}
			cp, err := dataplane.AttachCountPass(l.Attrs().Index)
			if err == nil {
				s.peers = append(s.peers, cp)
			}
			return err
		})
		if err != nil {
			return nil, err
		}
	}
	if o.Overlay {
		if err := s.buildRemote(); err != nil {
			return nil, err
		}
	}
	if err := s.writeGatewayConfig(); err != nil {
		return nil, err
	}
	if err := s.StartGateway(); err != nil {
		return nil, err
	}
	var tampered []*topology.Backend
	if o.Tampered != nil {
		tampered = o.Tampered(s.Topo)
	}
	for _, tn := range s.Topo.Tenants {
		for _, b := range tn.Backends {
			dir := filepath.Join(s.Dir, b.Name)
			if err := os.MkdirAll(dir, 0o700); err != nil {
				return nil, err
			}
			app := appContent(tn.Name)
			if slices.Contains(tampered, b) {
				app = tamperedContent(tn.Name)
			}
			if err := os.WriteFile(s.AppFile(b.Name), app, 0o644); err != nil {
				return nil, err
			}
			if err := s.startAgent(tn, b, o.Interval); err != nil {
				return nil, err
			}
		}
	}
	if s.remote != nil {
		if err := s.startRemote(o.Interval); err != nil {
			return nil, err
		}
	}
	return s, nil
}

func (s *AttestedScene) writeGatewayConfig() error {
	names := []string{"localhost", "127.0.0.1", topology.ManagementGateway}
	cfg := fmt.Sprintf(`instance: %s
state_dir: %s
interfaces: [%s]
api:
  listen: "0.0.0.0:9443"
verifier:
  listen: "%s:9444"
  result_ttl: 6s
metrics:
  listen: "127.0.0.1:9464"
tls:
  names: [%s]
log:
  level: info
`, s.Instance, filepath.Join(s.Dir, "state"), strings.Join(s.Topo.GatewayInterfaces(), ", "), topology.ManagementGateway, strings.Join(names, ", "))
	cfg += s.gatewayOverlayConfig()
	return os.WriteFile(filepath.Join(s.Dir, "gateway.yaml"), []byte(cfg), 0o600)
}

// StartGateway starts `moat gateway` in the gateway namespace and waits for its API.
func (s *AttestedScene) StartGateway() error {
	logf, err := os.OpenFile(filepath.Join(s.Dir, "gateway.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	cmd := s.Topo.GW.Command(s.Binary, "gateway", "--config", filepath.Join(s.Dir, "gateway.yaml"))
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start moat gateway: %w", err)
	}
	s.gateway = cmd
	deadline := time.Now().Add(30 * time.Second)
	for {
		if err := s.connectAPI(); err == nil {
			return nil
		} else if time.Now().After(deadline) {
			return fmt.Errorf("gateway API not up after 30 s: %w (log in %s)", err, logf.Name())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (s *AttestedScene) connectAPI() error {
	stateDir := filepath.Join(s.Dir, "state")
	ca, err := os.ReadFile(filepath.Join(stateDir, "ca.crt"))
	if err != nil {
		return err
	}
	tok, err := os.ReadFile(filepath.Join(stateDir, "operator.token"))
	if err != nil {
		return err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca)
	s.API = s.Topo.GW.HTTPClient(&tls.Config{RootCAs: pool})
	s.APIBase = "https://127.0.0.1:9443"
	s.Token = strings.TrimSpace(string(tok))
	_, err = s.Call("GET", "/v1/status", nil, nil)
	return err
}

// KillGateway stops the daemon with sig (SIGKILL: as a crash would) and waits for it.
func (s *AttestedScene) KillGateway(sig syscall.Signal) error {
	if s.gateway == nil {
		return nil
	}
	// nsenter execs the program: the process is the daemon itself.
	if err := s.gateway.Process.Signal(sig); err != nil {
		return err
	}
	_ = s.gateway.Wait()
	s.gateway = nil
	return nil
}

// startAgent starts a backend host's agent; with no extra arguments it binds an
// arbitrary WireGuard key (the host is not in the overlay).
func (s *AttestedScene) startAgent(tn *topology.Tenant, b *topology.Backend, interval time.Duration, extra ...string) error {
	dir := filepath.Join(s.Dir, b.Name)
	logf, err := os.OpenFile(filepath.Join(dir, "agent.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	if len(extra) == 0 {
		wg := sha256.Sum256([]byte("wireguard key of " + b.Name)) // any 32 bytes: this host is not in the overlay
		extra = []string{"--wireguard-key", base64.StdEncoding.EncodeToString(wg[:])}
	}
	cmd := b.Host.Command(s.Binary, append([]string{"agent",
		"--se", "simulator",
		"--verifier", "https://" + topology.ManagementGateway + ":9444/attest",
		"--verifier-ca", filepath.Join(s.Dir, "state", "ca.crt"),
		"--identity", tn.Name + "/" + b.Name,
		"--measure", s.AppFile(b.Name),
		"--interval", interval.String(),
		"--state-dir", filepath.Join(dir, "agent"),
		"--status-addr", "127.0.0.1:9721"}, extra...)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start agent of %s: %w", b.Name, err)
	}
	s.agents[b.Name] = cmd
	return nil
}

// AgentEK waits for a backend host's agent to report its EK's SHA-256.
func (s *AttestedScene) AgentEK(b *topology.Backend) (string, error) {
	c := b.Host.HTTPClient(nil)
	deadline := time.Now().Add(60 * time.Second)
	for {
		resp, err := c.Get("http://127.0.0.1:9721/status")
		if err == nil {
			var st struct {
				EK string `json:"ek_sha256"`
			}
			err = json.NewDecoder(resp.Body).Decode(&st)
			resp.Body.Close()
			if err == nil && st.EK != "" {
				return st.EK, nil
			}
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("agent of %s reported no EK in 60 s: %v", b.Name, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Call does an API request as the operator and decodes a JSON answer into out.
func (s *AttestedScene) Call(method, path string, body, out any, header ...string) (http.Header, error) {
	var rd io.Reader
	if body != nil {
		raw, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		rd = bytes.NewReader(raw)
	}
	req, err := http.NewRequestWithContext(context.Background(), method, s.APIBase+path, rd)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+s.Token)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := s.API.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if resp.StatusCode >= 300 {
		return resp.Header, fmt.Errorf("%s %s: %d %s", method, path, resp.StatusCode, raw)
	}
	if out != nil && len(raw) > 0 {
		if err := json.Unmarshal(raw, out); err != nil {
			return resp.Header, fmt.Errorf("%s %s: decode: %w", method, path, err)
		}
	}
	return resp.Header, nil
}

// Register creates the tenants (attachments, service web, a rule for their clients,
// an attestation policy per host holding the untampered application's digest) and
// registers every backend with its host's EK pinned.
func (s *AttestedScene) Register() error {
	cfg := s.Topo.Config()
	for i, tn := range s.Topo.Tenants {
		tc := cfg.Tenants[i]
		steps := []struct {
			method, path string
			body         any
		}{
			{"POST", "/v1/tenants", state.Tenant{Name: tn.Name, FIBTable: tc.FIBTable, Attachments: tc.Attachments, Overlay: s.tenantOverlay(tn)}},
			{"POST", "/v1/tenants/" + tn.Name + "/services", map[string]any{"name": "web", "vip": s.Topo.Opts.VIP,
				"port": s.Topo.Opts.Port, "protocol": "tcp", "maglev_size": s.Topo.Opts.MaglevSize, "min_trust": "allow-listed"}},
			{"POST", "/v1/tenants/" + tn.Name + "/rules", map[string]any{"name": "clients", "sources": []string{"10.0.0.0/24"}, "services": []string{"web"}}},
		}
		// Hosts here share one file system, so each measures its own copy of the
		// application: one policy per host, with that path and the release's digest.
		digest := sha256.Sum256(appContent(tn.Name))
		for _, b := range tn.Backends {
			steps = append(steps, struct {
				method, path string
				body         any
			}{"POST", "/v1/tenants/" + tn.Name + "/policies", map[string]any{"name": b.Name,
				"references": map[string][]string{s.AppFile(b.Name): {hex.EncodeToString(digest[:])}}}})
		}
		for _, st := range steps {
			if _, err := s.Call(st.method, st.path, st.body, nil); err != nil {
				return err
			}
		}
		for _, b := range tn.Backends {
			ek, err := s.AgentEK(b)
			if err != nil {
				return err
			}
			if _, err := s.Call("POST", "/v1/tenants/"+tn.Name+"/services/web/backends", map[string]any{
				"name": b.Name, "identity": b.Name, "addr": b.Addr, "port": s.Topo.Opts.BackendPort, "weight": 1,
				"policy": b.Name, "ek_sha256": ek}, nil); err != nil {
				return err
			}
		}
	}
	if s.remote != nil {
		return s.registerRemote()
	}
	return nil
}

// BackendState returns a backend's status as the API reports it.
func (s *AttestedScene) BackendState(tenantName, backend string) (state.BackendStatus, error) {
	var v struct {
		Status state.BackendStatus `json:"status"`
	}
	_, err := s.Call("GET", "/v1/tenants/"+tenantName+"/services/web/backends/"+backend, nil, &v)
	return v.Status, err
}

// WaitState waits until a backend reaches one of the states.
func (s *AttestedScene) WaitState(tenantName, backend string, timeout time.Duration, want ...state.BackendState) (state.BackendStatus, error) {
	deadline := time.Now().Add(timeout)
	for {
		st, err := s.BackendState(tenantName, backend)
		if err == nil {
			for _, w := range want {
				if st.State == w {
					return st, nil
				}
			}
		}
		if time.Now().After(deadline) {
			return st, fmt.Errorf("%s/%s is %s (%s), not %v, after %v: %v", tenantName, backend, st.State, st.Reason, want, timeout, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Close stops agents and the gateway, removes the fast path's pins and the topology.
func (s *AttestedScene) Close() error {
	var errs []error
	for _, a := range s.agents {
		a.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { a.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			a.Process.Kill()
			<-done
		}
	}
	errs = append(errs, s.KillGateway(syscall.SIGTERM))
	for _, p := range s.peers {
		errs = append(errs, p.Close())
	}
	if s.Instance != "" {
		errs = append(errs, dataplane.Remove(dataplane.DefaultOptions(s.Instance)))
	}
	if s.remote != nil {
		errs = append(errs, s.closeRemote())
	}
	if s.Topo != nil {
		errs = append(errs, s.Topo.Close())
	}
	return errors.Join(errs...)
}

// Connect opens n connections from a tenant's client to the VIP.
func (s *AttestedScene) Connect(tn *topology.Tenant, n int) ([]*Conn, error) {
	return Connect(s.Topo, tn, n)
}

// Agent returns the process of a backend host's agent.
func (s *AttestedScene) Agent(backend string) *exec.Cmd { return s.agents[backend] }

// Transitions returns a backend's recorded state transitions (service web; every
// backend's when backend is empty), oldest first.
func (s *AttestedScene) Transitions(tenantName, backend string) ([]state.Transition, error) {
	var trs struct {
		Items []state.Transition `json:"items"`
	}
	if _, err := s.Call("GET", "/v1/tenants/"+tenantName+"/transitions?limit=1000", nil, &trs); err != nil {
		return nil, err
	}
	var out []state.Transition
	for _, t := range trs.Items {
		if t.Service == "web" && (backend == "" || t.Backend == backend) {
			out = append(out, t)
		}
	}
	return out, nil
}
