package gateway

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/seed4c/moat/attest"
	"github.com/seed4c/moat/attest/agent"
	"github.com/seed4c/moat/attest/tpm"
	"github.com/seed4c/moat/controlapi/reconcile"
	"github.com/seed4c/moat/controlapi/state"
	"github.com/seed4c/moat/dataplane"
	"github.com/seed4c/moat/dataplane/overlay"
)

// gatewayOverlay is the gateway's side of the WireGuard overlay (dataplane/overlay),
// driven by the desired state:
//
//   - it is a reconcile.Devices: before each compilation it makes the overlay carry the
//     desired tenant segments and peers (overlay.Overlay.Apply; cheap when nothing
//     changed), after each write it attaches the fast path to the segments it built
//     (ov<vni>, an ordinary attachment of the tenant) and runs one agent per peer;
//   - it is a verifier.Subscriber right after the reconciler: the Node adds a peer on
//     the result that admits it, with the keys that result vouches for, and removes it
//     on the one that evicts it, within the bound of backend eviction;
//   - its agents attest the gateway to each peer's own verifier (the peer configures the
//     gateway only from that appraisal), pinning the verifier's TLS key to the one the
//     peer's latest affirming result at this gateway bound;
//   - it is the reconciler's reconcile.Links: whether the link with each peer is up
//     (overlay_links.go), which gates the admission of the backends behind it.
type gatewayOverlay struct {
	cfg      Config
	log      *slog.Logger
	ctx      context.Context
	se       attest.SE
	dp       *dataplane.Dataplane
	ov       *overlay.Overlay
	running  chan struct{} // closed when the node's Run returns (ctx ended)
	measurer *agent.Measurer
	cert     tls.Certificate

	mu      sync.Mutex // the reconciler's, the API's; never held while waiting for an agent
	ok      bool       // the last desired state was applied whole
	peers   []overlay.PeerConfig
	segs    []overlay.Segment
	pending []string // segment ends built, the fast path not attached yet
	agents  map[string]*peerAgent

	// pinMu guards what the publisher (Notify) and the agents' TLS checks (pinned)
	// read: they never wait for a reconciliation.
	pinMu   sync.Mutex
	subject map[string]string   // peer name -> subject
	pins    map[string][32]byte // subject -> TLS key SHA-256 of its latest affirming result
	first   map[string]bool     // peer name -> this gateway attests first (a peer gateway, a higher address)

	// The links as admission sees them (overlay_links.go), by subject.
	linkMu    sync.Mutex
	links     map[string]reconcile.LinkState
	linkWake  chan struct{}
	linksDone chan struct{} // closed when the watcher returns (ctx ended)
}

// peerAgent attests the gateway to one peer's verifier.
type peerAgent struct {
	url    string
	agent  *agent.Agent
	cancel context.CancelFunc
	done   chan struct{}
}

// startOverlay measures the gateway into its SE, unseals (or creates) its WireGuard
// key and brings the overlay up, without peers or segments: the first reconciliation
// gives them.
func startOverlay(ctx context.Context, cfg Config, se attest.SE, dp *dataplane.Dataplane, log *slog.Logger) (*gatewayOverlay, error) {
	dir := filepath.Join(cfg.StateDir, "overlay")
	measure := cfg.SE.Measure
	if len(measure) == 0 {
		self, err := os.Executable()
		if err != nil {
			return nil, fmt.Errorf("se.measure: the running executable: %w", err)
		}
		measure = []string{self}
	}
	m, err := agent.NewMeasurer(se, cfg.SE.PCR, measure, filepath.Join(dir, fmt.Sprintf("pcr%d.mlog", cfg.SE.PCR)))
	if err != nil {
		return nil, err
	}
	if _, err := m.Measure(); err != nil {
		return nil, err
	}
	o := &gatewayOverlay{cfg: cfg, log: log.With("component", "overlay"), ctx: ctx, se: se, dp: dp, measurer: m,
		subject: map[string]string{}, pins: map[string][32]byte{}, agents: map[string]*peerAgent{},
		linkWake: make(chan struct{}, 1)}
	if o.cert, err = agent.LoadOrCreateTLSKey(filepath.Join(dir, "tls.key"), cfg.Overlay.Identity); err != nil {
		return nil, err
	}
	if cfg.SE.Kind == tpm.KindSimulator {
		if err := os.Remove(cfg.Overlay.KeyFile); err == nil {
			o.log.Warn("the TPM simulator is a new TPM at every start: the sealed overlay key of the previous run was replaced (simulator only)")
		}
	}
	links, err := overlay.NewNetlinkLinks()
	if err != nil {
		return nil, err
	}
	oc := cfg.Overlay
	o.ov, err = overlay.Start(overlay.Config{ListenPort: oc.ListenPort, Address: oc.Address, KeyFile: oc.KeyFile, PCRs: []int{cfg.SE.PCR},
		Epoch: oc.Epoch, Keepalive: oc.Keepalive}, overlay.Machine{Device: oc.Device, MTU: oc.MTU}, se, links, overlay.NFT{}, o.log)
	if err != nil {
		return nil, err
	}
	o.running = make(chan struct{})
	go func() { defer close(o.running); o.ov.Run(ctx) }()
	return o, nil
}

// watch starts following the links, telling changed (the reconciler's LinksChanged)
// whenever one goes up or down.
func (o *gatewayOverlay) watch(changed func()) {
	o.linksDone = make(chan struct{})
	go func() { defer close(o.linksDone); o.watchLinks(o.ctx, changed) }()
}

// desired is the overlay the snapshot asks for: a segment per tenant with an overlay
// field (the gateway's end is a fast-path interface, in the tenant's routing table),
// carried by the peers that list the tenant; a WireGuard peer per overlay peer.
func desired(sn *state.Snapshot) ([]overlay.PeerConfig, []overlay.Segment) {
	var peers []overlay.PeerConfig
	carriers := map[string][]string{}
	routes := map[string][]overlay.Route{}
	for _, p := range sn.OverlayPeers {
		peers = append(peers, overlay.PeerConfig{Subject: p.Subject, Endpoint: p.Endpoint, Address: p.Address})
		for _, t := range p.Tenants {
			carriers[t] = append(carriers[t], p.Subject)
		}
		for _, r := range p.Routes {
			routes[r.Tenant] = append(routes[r.Tenant], overlay.Route{Dst: r.Dst, Via: r.Via})
		}
	}
	var segs []overlay.Segment
	for _, t := range sn.Tenants {
		if t.Overlay == nil {
			continue
		}
		segs = append(segs, overlay.Segment{Tenant: t.Name, VNI: t.Overlay.VNI, Address: t.Overlay.Address, Table: int(t.FIBTable),
			Routes: routes[t.Name], Peers: slices.Sorted(slices.Values(carriers[t.Name])), FastPath: true})
	}
	return peers, segs
}

// Prepare implements reconcile.Devices.
func (o *gatewayOverlay) Prepare(sn *state.Snapshot) error {
	peers, segs := desired(sn)
	subject, first := map[string]string{}, map[string]bool{}
	for _, p := range sn.OverlayPeers {
		subject[p.Name] = p.Subject
		first[p.Name] = p.Gateway && o.cfg.Overlay.Address.Addr().Less(p.Address)
	}
	o.pinMu.Lock()
	o.subject, o.first = subject, first
	o.pinMu.Unlock()
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.ok && reflect.DeepEqual(peers, o.peers) && reflect.DeepEqual(segs, o.segs) {
		return nil
	}
	built, err := o.ov.Apply(peers, segs)
	for _, s := range built {
		o.pending = append(o.pending, s.FastPathInterface())
	}
	want := map[string]bool{}
	for _, s := range segs {
		want[s.FastPathInterface()] = true
	}
	for _, s := range o.segs {
		if name := s.FastPathInterface(); !want[name] {
			_ = o.dp.Detach(name) // its device is gone; drop the pinned link
		}
	}
	o.ok, o.peers, o.segs = err == nil, peers, segs
	o.pokeLinks()
	return err
}

// Applied implements reconcile.Devices: the maps know the new segment ends, so the
// program goes on them; and each peer gets its agent.
func (o *gatewayOverlay) Applied(sn *state.Snapshot) error {
	want := map[string]string{}
	for _, p := range sn.OverlayPeers {
		want[p.Name] = p.Verifier
	}
	o.mu.Lock()
	pending := o.pending
	o.pending = nil
	var stop []*peerAgent
	for name, a := range o.agents {
		if want[name] != a.url {
			stop = append(stop, a)
			delete(o.agents, name)
		}
	}
	o.mu.Unlock()
	var errs []error
	for _, name := range pending {
		mode, err := o.dp.Attach(name)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		o.log.Info("fast path attached to a tenant segment", "interface", name, "mode", mode)
	}
	// An agent may be waiting in pinned: stop it without holding the lock.
	for _, a := range stop {
		a.stop()
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, name := range slices.Sorted(maps.Keys(want)) {
		if _, running := o.agents[name]; running {
			continue
		}
		a, err := o.startAgent(name, want[name])
		if err != nil {
			errs = append(errs, fmt.Errorf("overlay peer %s: %w", name, err))
			continue
		}
		o.agents[name] = a
	}
	return errors.Join(errs...)
}

// startAgent starts attesting the gateway to a peer's verifier. The connection is
// used only when the verifier's key is the TLS key the peer's own latest affirming
// result bound: the gateway attests to the verifier of the peer it admits, no other.
func (o *gatewayOverlay) startAgent(name, url string) (*peerAgent, error) {
	client, err := agent.NewPinnedHTTPClient(url, o.cert, func(spki []byte) error { return o.pinned(name, spki) })
	if err != nil {
		return nil, err
	}
	pub := o.ov.PublicKey()
	dir := filepath.Join(o.cfg.StateDir, "overlay")
	a, err := agent.New(agent.Config{VerifierURL: url, Identity: o.cfg.Overlay.Identity, Interval: o.cfg.Overlay.AttestInterval,
		StateDir: dir, TLSKeyFile: filepath.Join(dir, "tls.key"), WireGuardKey: pub[:], Measurer: o.measurer},
		o.se, client, slog.New(quiet{o.log.Handler()}).With("overlay_peer", name))
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(o.ctx)
	pa := &peerAgent{url: url, agent: a, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(pa.done)
		t := time.NewTicker(o.cfg.Overlay.AttestInterval)
		defer t.Stop()
		for {
			a.Round(ctx)
			o.pokeLinks() // the peer's verdict on the gateway may have changed
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
	return pa, nil
}

func (a *peerAgent) stop() {
	a.cancel()
	<-a.done
}

// pinned accepts a peer verifier's TLS key when it is the one the peer's latest
// affirming result at this gateway bound.
//
// Two gateways pin each other: each would wait for the other's quotes before sending
// its own. So while this gateway has no pin for a peer gateway, the one of the two with
// the lower overlay address attests first, to the configured URL alone; the other pins
// from the start, and so does this one once the peer has attested to it. What that
// first round risks is only the disclosure of the gateway's evidence (quotes,
// measurement log: no secret) to whoever answers at the URL: the peer configures the
// gateway only from its own appraisal, and a verdict from a stranger cannot bring the
// link up (that takes a WireGuard handshake with the peer's attested keys).
func (o *gatewayOverlay) pinned(name string, spki []byte) error {
	o.pinMu.Lock()
	pin, ok := o.pins[o.subject[name]]
	first := o.first[name]
	o.pinMu.Unlock()
	if !ok && first {
		return nil
	}
	if got := sha256.Sum256(spki); !ok || !bytes.Equal(got[:], pin[:]) {
		return errors.New("its TLS key is not the one the peer's own quotes bind (or the peer is not attested now): not attesting to it")
	}
	return nil
}

// Notify implements verifier.Subscriber: it keeps each subject's attested TLS key
// (the pin of its verifier) and passes the result to the Node.
func (o *gatewayOverlay) Notify(res attest.Result) {
	o.pinMu.Lock()
	switch {
	case res.Status == attest.StatusAffirming && len(res.TLSKeySHA256) == sha256.Size:
		o.pins[res.Subject] = [32]byte(res.TLSKeySHA256)
	case res.Evicts():
		delete(o.pins, res.Subject)
	}
	peer := slices.Contains(slices.Collect(maps.Values(o.subject)), res.Subject)
	o.pinMu.Unlock()
	o.ov.Notify(res)
	if peer {
		o.pokeLinks() // the node may have added or removed it
	}
}

// peerStatus is a peer's link as the API shows it.
func (o *gatewayOverlay) peerStatus(name string) state.OverlayPeerStatus {
	o.pinMu.Lock()
	subject := o.subject[name]
	o.pinMu.Unlock()
	o.mu.Lock()
	pa := o.agents[name]
	o.mu.Unlock()
	var out state.OverlayPeerStatus
	if st, err := o.ov.Status(); err == nil {
		for _, p := range st.Peers {
			if p.Subject == subject {
				out = state.OverlayPeerStatus{Configured: true, Since: p.Since, AttestationExpires: p.Expires, LastHandshake: p.LastHandshake,
					RxBytes: p.RxBytes, TxBytes: p.TxBytes}
				if p.Endpoint.IsValid() {
					out.Endpoint = p.Endpoint.String()
				}
			}
		}
	}
	if pa != nil {
		st := pa.agent.Status()
		if st.LastResult != nil {
			out.Appraisal = st.LastResult.Status
		}
		out.AppraisalError = st.LastError
	}
	l := o.Link(subject, time.Now())
	out.LinkUp, out.Link = l.Up, l.Why
	return out
}

// OverlayStatus is the gateway's overlay in GET /v1/status.
type OverlayStatus struct {
	Identity string `json:"identity"`
	overlay.Status
}

func (o *gatewayOverlay) status() *OverlayStatus {
	st, err := o.ov.Status()
	if err != nil {
		o.log.Error("overlay status", "error", err)
	}
	return &OverlayStatus{Identity: o.cfg.Overlay.Identity, Status: st}
}

// check is the gateway's part of validating the overlay's desired state.
func (o *gatewayOverlay) check(sn *state.Snapshot) error {
	peers, _ := desired(sn)
	c := overlay.Config{Address: o.cfg.Overlay.Address}
	return c.CheckPeers(peers)
}

// close stops the agents and takes the overlay down (the TUN goes with the process
// anyway: wireguard-go runs in it), removing the segments and the fast path's links
// to them. The gateway's context has ended.
func (o *gatewayOverlay) close() error {
	<-o.running
	if o.linksDone != nil {
		<-o.linksDone
	}
	o.mu.Lock()
	agents := o.agents
	o.agents = map[string]*peerAgent{}
	o.mu.Unlock()
	for _, a := range agents {
		a.stop()
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	errs := []error{o.ov.Close()}
	for _, s := range o.segs {
		_ = o.dp.Detach(s.FastPathInterface())
	}
	return errors.Join(errs...)
}

// segmentResolver resolves the configured interfaces and, the overlay being enabled,
// the gateway ends of tenant segments (ov<vni>). For validation (planned), an end the
// reconciler has not built yet resolves to a placeholder: the reconciler builds it
// before the configuration is compiled.
type segmentResolver struct {
	ifaceResolver
	planned bool
}

// placeholderIndex is above any interface index the kernel gives out in practice.
const placeholderIndex = 1 << 30

func (r segmentResolver) Index(name string) (uint32, error) {
	vni, err := strconv.ParseUint(strings.TrimPrefix(name, "ov"), 10, 24)
	if r.ifaceResolver[name] || err != nil || state.SegmentInterface(uint32(vni)) != name {
		return r.ifaceResolver.Index(name)
	}
	i, err := net.InterfaceByName(name)
	switch {
	case err == nil:
		return uint32(i.Index), nil
	case r.planned:
		return placeholderIndex + uint32(vni), nil
	}
	return 0, fmt.Errorf("overlay segment %s: %w", name, err)
}

// quiet demotes the per-round messages of the gateway's agents to debug: one line per
// peer every interval would drown the gateway's log; failures and verdicts that are
// not affirming keep their level.
type quiet struct{ slog.Handler }

func (q quiet) Handle(ctx context.Context, r slog.Record) error {
	if r.Level == slog.LevelInfo {
		r.Level = slog.LevelDebug
		if !q.Handler.Enabled(ctx, r.Level) {
			return nil
		}
	}
	return q.Handler.Handle(ctx, r)
}

func (q quiet) WithAttrs(as []slog.Attr) slog.Handler { return quiet{q.Handler.WithAttrs(as)} }
func (q quiet) WithGroup(g string) slog.Handler       { return quiet{q.Handler.WithGroup(g)} }
