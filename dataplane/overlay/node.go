package overlay

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math/rand/v2"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/seed4c/moat/attest"
)

// Defaults of Config's zero values.
const (
	DefaultListenPort = 51820
	// DefaultEpoch is the PSK period. Each rotation costs one ECDH in the TPM per peer
	// and one handshake per pair; ten minutes keeps that negligible even on hardware
	// TPMs (tens of ms per ECDH) while bounding how long a leaked PSK is worth anything.
	DefaultEpoch = 10 * time.Minute
	// DefaultMTU of the TUN: a 1500-byte underlay less WireGuard's 80 bytes (IPv4 20,
	// UDP 8, WireGuard header 16 and tag 16; an IPv6 underlay needs 20 more).
	DefaultMTU = 1420
)

// PeerConfig is a node that may join this node's overlay, once its own attestation
// says so. Its keys are never configured: they come only from its attestation results.
type PeerConfig struct {
	// Subject is the attestation subject (agent identity) whose results admit the peer.
	Subject string `yaml:"subject"`
	// Endpoint is where to reach it first on the underlay; zero when it connects first
	// (behind NAT). WireGuard follows the peer when it roams: an authenticated packet
	// from a new address moves the endpoint, and the Node never resets it afterwards.
	Endpoint netip.AddrPort `yaml:"endpoint"`
	// Address is its overlay address: its only allowed IP, so it can send nothing with
	// another source and receive nothing addressed elsewhere.
	Address netip.Addr `yaml:"address"`
}

// Config configures a Node.
type Config struct {
	// ListenPort is the UDP port on the underlay; default 51820.
	ListenPort int `yaml:"listen_port"`
	// Address is this node's overlay address with the overlay's prefix (100.64.0.1/24).
	Address netip.Prefix `yaml:"address"`
	// KeyFile holds the WireGuard private key sealed by the node's SE (required).
	KeyFile string `yaml:"key_file"`
	// PCRs the key is sealed to; default the measurement PCR.
	PCRs []int `yaml:"pcrs"`
	// Epoch is the pre-shared key period; default 10 min, at least 1 s.
	Epoch time.Duration `yaml:"epoch"`
	// Keepalive, when set, keeps NAT mappings open (25 s is WireGuard's advice).
	Keepalive time.Duration `yaml:"keepalive"`
	Peers     []PeerConfig  `yaml:"peers"`
	// EpochClock is the clock PSK epochs are counted on; default time.Now (tests move
	// it forward). Attestation expiry is always judged on the wall clock, the one the
	// verifier stamps results with.
	EpochClock func() time.Time `yaml:"-"`
}

func (c *Config) setDefaults() error {
	if c.ListenPort == 0 {
		c.ListenPort = DefaultListenPort
	}
	if len(c.PCRs) == 0 {
		c.PCRs = []int{attest.DefaultMeasurementPCR}
	}
	if c.Epoch == 0 {
		c.Epoch = DefaultEpoch
	}
	if c.EpochClock == nil {
		c.EpochClock = time.Now
	}
	var errs []error
	if c.Epoch < time.Second || c.Epoch%time.Second != 0 {
		errs = append(errs, fmt.Errorf("epoch %v: a whole number of seconds, at least 1 s", c.Epoch))
	}
	if err := CheckKeepalive(c.Keepalive); err != nil {
		errs = append(errs, fmt.Errorf("keepalive %w", err))
	}
	if !c.Address.IsValid() || !c.Address.Addr().Is4() {
		errs = append(errs, fmt.Errorf("address %v: want an IPv4 address with the overlay's prefix", c.Address))
	}
	return errors.Join(append(errs, c.CheckPeers(c.Peers))...)
}

// MaxKeepalive is the longest persistent keepalive WireGuard takes: its interval is a
// 16-bit count of seconds.
const MaxKeepalive = 65535 * time.Second

// CheckKeepalive refuses a keepalive WireGuard cannot be given as is: negative, not a
// whole number of seconds (the UAPI counts seconds, so 500ms would turn it off), or
// past MaxKeepalive (the UAPI would refuse it when the peer is configured). 0 is off.
// The gateway's configuration checks its overlay's with it before any node is made.
func CheckKeepalive(d time.Duration) error {
	if d < 0 || d%time.Second != 0 || d > MaxKeepalive {
		return fmt.Errorf("%v: 0 (off) or a whole number of seconds up to %d s", d, MaxKeepalive/time.Second)
	}
	return nil
}

// CheckPeers reports peers this node could not configure: subjects empty or repeated,
// addresses outside the overlay's prefix, repeated or the node's own.
func (c *Config) CheckPeers(peers []PeerConfig) error {
	var errs []error
	seen := map[string]bool{}
	addrs := map[netip.Addr]bool{c.Address.Addr(): true}
	for _, p := range peers {
		switch {
		case p.Subject == "" || seen[p.Subject]:
			errs = append(errs, fmt.Errorf("peer %q: empty or duplicate subject", p.Subject))
		case !p.Address.Is4() || !c.Address.Contains(p.Address) || addrs[p.Address]:
			errs = append(errs, fmt.Errorf("peer %s: address %v is not a free address of %v", p.Subject, p.Address, c.Address.Masked()))
		}
		seen[p.Subject], addrs[p.Address] = true, true
	}
	return errors.Join(errs...)
}

// Stats counts what a Node did.
type Stats struct {
	Added     uint64 `json:"peers_added"`
	Removed   uint64 `json:"peers_removed"`
	Refused   uint64 `json:"results_refused"` // affirming results the overlay could not use (no overlay key)
	Rotations uint64 `json:"rotations"`
	// LastRotation is how long the last rotation took (an ECDH in the SE and a UAPI set
	// per peer, and the handshakes it started).
	LastRotation time.Duration `json:"last_rotation_ns"`
	// LastRemoval is how long the last removal took, from the result's arrival to the
	// peer gone from WireGuard.
	LastRemoval time.Duration `json:"last_removal_ns"`
}

type peerState struct {
	cfg     PeerConfig
	party   Party
	expires time.Time
	since   time.Time
}

// Node is one machine's overlay: its sealed static key, its WireGuard engine and its
// peers, which it configures from attestation results only (it is a
// verifier.Subscriber). Its methods are safe for concurrent use.
//
// Rotation: at every epoch boundary the Node derives each peer's new PSK in its SE and
// sets it; the side with the lower WireGuard key then starts a handshake, so the next
// session uses the new PSK at once. The running session is untouched (WireGuard keys
// each session by its own handshake; the PSK is an input to handshakes only), so
// connections see no gap. Both ends rotate on their own clocks: a handshake started
// while the other end is still in the previous epoch fails and WireGuard retries it
// every 5 s for 90 s while the current session carries the traffic, so a clock skew
// up to a minute costs nothing but those retries.
type Node struct {
	cfg     Config
	se      attest.SE
	eng     Engine
	log     *slog.Logger
	private Key
	self    Party

	mu     sync.Mutex
	byName map[string]PeerConfig    // the configured peers (SetPeers changes them)
	last   map[string]attest.Result // every subject's latest result that is not refused
	peers  map[string]*peerState
	rekey  map[string]*rekey // peers owed a handshake (added, or a rotation) that has not completed yet
	epoch  uint64
	closed bool
	stats  Stats
	wake   chan struct{}
}

// NewNode configures eng with the node's private key and port. private comes from
// LoadOrCreateKey with the same SE.
func NewNode(cfg Config, se attest.SE, private Key, eng Engine, log *slog.Logger) (*Node, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, fmt.Errorf("overlay config: %w", err)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	pub, err := PublicKey(private)
	if err != nil {
		return nil, err
	}
	ecdhPub, err := se.ECDHPublicKey()
	if err != nil {
		return nil, fmt.Errorf("overlay: the SE's key-agreement key: %w", err)
	}
	n := &Node{cfg: cfg, se: se, eng: eng, log: log, private: private,
		self:   Party{WireGuard: pub, ECDH: ecdhPub.Bytes()},
		byName: map[string]PeerConfig{}, last: map[string]attest.Result{}, peers: map[string]*peerState{}, rekey: map[string]*rekey{}, wake: make(chan struct{}, 1),
		epoch: Epoch(cfg.EpochClock(), cfg.Epoch)}
	for _, p := range cfg.Peers {
		n.byName[p.Subject] = p
	}
	if err := eng.Configure(setDevice(private, cfg.ListenPort)); err != nil {
		return nil, err
	}
	log.Info("overlay node ready", "public_key", pub.String(), "address", cfg.Address, "port", cfg.ListenPort, "peers", len(cfg.Peers))
	return n, nil
}

// PublicKey is the node's WireGuard public key, the one its agent binds into quotes.
func (n *Node) PublicKey() Key { return n.self.WireGuard }

// OverlayKey is the node's SE key-agreement public key (SEC 1), bound into quotes too.
func (n *Node) OverlayKey() []byte { return slices.Clone(n.self.ECDH) }

// Notify takes an attestation result (it implements verifier.Subscriber). A result
// that admits a configured peer adds it with the keys the result vouches for (or keeps
// it, renewing its expiry); one that evicts it, or an admitting result that has already
// expired, removes it at once. Refused results change nothing (attest.StatusRefused).
func (n *Node) Notify(res attest.Result) {
	arrived := time.Now()
	if res.Status == attest.StatusRefused {
		return
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return
	}
	n.last[res.Subject] = res
	if pc, ok := n.byName[res.Subject]; ok {
		n.resultLocked(pc, res, arrived)
	}
}

// resultLocked applies a result about a configured peer.
func (n *Node) resultLocked(pc PeerConfig, res attest.Result, arrived time.Time) {
	if !res.Admits(time.Now()) {
		n.removeLocked(res.Subject, string(res.Status)+" "+fmt.Sprint(res.Reasons), arrived)
		return
	}
	party, err := partyOf(res)
	if err != nil {
		n.stats.Refused++
		n.removeLocked(res.Subject, err.Error(), arrived)
		n.log.Warn("overlay peer attested but not usable", "subject", res.Subject, "error", err)
		return
	}
	if p, ok := n.peers[res.Subject]; ok {
		if p.party.WireGuard == party.WireGuard && bytes.Equal(p.party.ECDH, party.ECDH) {
			p.expires = res.Expires
			n.poke()
			return
		}
		n.removeLocked(res.Subject, "attested with new keys", arrived)
	}
	if err := n.addLocked(pc, party, res.Expires); err != nil {
		n.log.Error("add overlay peer", "subject", res.Subject, "error", err)
		return
	}
	n.poke()
}

func partyOf(res attest.Result) (Party, error) {
	wg, err := ParseKey(res.WireGuardKey)
	if err != nil {
		return Party{}, fmt.Errorf("WireGuard key vouched for: %w", err)
	}
	if len(res.OverlayKey) == 0 {
		return Party{}, errors.New("its quote binds no overlay (ECDH) key: no pre-shared key can be derived with it")
	}
	return Party{WireGuard: wg, ECDH: slices.Clone(res.OverlayKey)}, nil
}

func (n *Node) addLocked(pc PeerConfig, party Party, expires time.Time) error {
	if party.WireGuard == n.self.WireGuard {
		return errors.New("the peer's vouched WireGuard key is this node's own")
	}
	for s, p := range n.peers {
		if p.party.WireGuard == party.WireGuard {
			return fmt.Errorf("its WireGuard key is already configured for %s", s)
		}
	}
	psk, err := DerivePSK(n.se, n.self, party, n.epoch)
	if err != nil {
		return err
	}
	err = n.eng.Configure(setPeer(peerConfig{PublicKey: party.WireGuard, PSK: psk, Endpoint: pc.Endpoint,
		AllowedIPs: []netip.Prefix{netip.PrefixFrom(pc.Address, 32)}, Keepalive: n.cfg.Keepalive}))
	if err != nil {
		return err
	}
	n.peers[pc.Subject] = &peerState{cfg: pc, party: party, expires: expires, since: time.Now()}
	n.stats.Added++
	n.log.Info("overlay peer added", "subject", pc.Subject, "public_key", party.WireGuard.String(), "address", pc.Address, "epoch", n.epoch)
	// Handshake now rather than at the first packet, so the link is known to carry
	// traffic (a gateway admits the backends behind it only then) before any tenant
	// packet waits on it. Only one end starts at once, the one with the lower key (as
	// after a rotation): two initiations crossing each other can leave wireguard-go
	// with a session that carries one direction only until its 15 s no-reply rekey
	// (both ends are usually configured within milliseconds of each other, from the
	// same round of results). The other end starts its own handshake a moment later
	// unless one has completed by then: it covers the case where it was configured
	// last and the lower end's initiation, arriving before, was dropped. Without an
	// endpoint the peer initiates (it is behind NAT).
	if pc.Endpoint.IsValid() {
		now := time.Now()
		if n.initiates(party) {
			n.rekey[pc.Subject] = &rekey{since: now, tried: now}
			if err := n.eng.Handshake(party.WireGuard); err != nil {
				n.log.Debug("first handshake", "subject", pc.Subject, "error", err)
			}
		} else {
			n.rekey[pc.Subject] = &rekey{since: now, tried: now.Add(followerHandshakeDelay() - rekeyInterval)}
		}
	}
	return nil
}

// followerHandshakeDelay is how long the end with the higher key waits for the other
// end's handshake before it starts one itself: well above the time a handshake takes
// between configured peers (2 ms here), well below wireguard-go's 5 s retry; random
// in [250 ms, 750 ms) so that no schedule keeps it in step with the other end's
// initiations.
func followerHandshakeDelay() time.Duration {
	return 250*time.Millisecond + rand.N(500*time.Millisecond)
}

// initiates says whether this end starts the handshakes with party when both could:
// the end with the lower WireGuard key does.
func (n *Node) initiates(party Party) bool {
	return bytes.Compare(n.self.WireGuard[:], party.WireGuard[:]) < 0
}

func (n *Node) removeLocked(subject, why string, arrived time.Time) {
	p, ok := n.peers[subject]
	if !ok {
		return
	}
	if err := n.eng.Configure(removePeer(p.party.WireGuard)); err != nil {
		// The peer stays configured: say so loudly; the next result retries.
		n.log.Error("remove overlay peer", "subject", subject, "error", err)
		return
	}
	delete(n.peers, subject)
	delete(n.rekey, subject)
	n.stats.Removed++
	n.stats.LastRemoval = time.Since(arrived)
	n.log.Warn("overlay peer removed", "subject", subject, "public_key", p.party.WireGuard.String(), "why", why)
}

func (n *Node) poke() {
	select {
	case n.wake <- struct{}{}:
	default:
	}
}

// SetPeers replaces the configured peers (the gateway's desired state changed). A
// peer no longer configured, or whose address or endpoint changed, is removed from
// WireGuard at once; a newly configured one is added at once if its latest result
// still admits it, else at its next admitting result.
func (n *Node) SetPeers(peers []PeerConfig) error {
	if err := n.cfg.CheckPeers(peers); err != nil {
		return fmt.Errorf("overlay peers: %w", err)
	}
	arrived := time.Now()
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return errClosed
	}
	byName := map[string]PeerConfig{}
	for _, p := range peers {
		byName[p.Subject] = p
	}
	for _, s := range slices.Sorted(maps.Keys(n.peers)) {
		switch pc, ok := byName[s]; {
		case !ok:
			n.removeLocked(s, "no longer an overlay peer", arrived)
		case pc != n.peers[s].cfg:
			n.removeLocked(s, "its overlay configuration changed", arrived)
		}
	}
	n.byName = byName
	n.cfg.Peers = slices.Clone(peers)
	for _, p := range peers {
		if _, on := n.peers[p.Subject]; !on {
			if res, ok := n.last[p.Subject]; ok && res.Admits(arrived) {
				n.resultLocked(p, res, arrived)
			}
		}
	}
	return nil
}

// Rotate moves every peer to the PSK of the current epoch, if the epoch changed since
// the last rotation (Run calls it at every boundary). It returns the epoch.
func (n *Node) Rotate() (uint64, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return 0, errClosed
	}
	e := Epoch(n.cfg.EpochClock(), n.cfg.Epoch)
	if e == n.epoch {
		return e, nil
	}
	return e, n.rotateLocked(e)
}

func (n *Node) rotateLocked(e uint64) error {
	start := time.Now()
	n.epoch = e
	var errs []error
	for _, s := range slices.Sorted(maps.Keys(n.peers)) {
		p := n.peers[s]
		psk, err := DerivePSK(n.se, n.self, p.party, e)
		if err == nil {
			err = n.eng.Configure(setPeer(peerConfig{PublicKey: p.party.WireGuard, PSK: psk, UpdateOnly: true}))
		}
		if err == nil && n.initiates(p.party) {
			now := time.Now()
			n.rekey[s] = &rekey{since: now, tried: now}
			err = n.eng.Handshake(p.party.WireGuard)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("rotate the pre-shared key of %s: %w", s, err))
		}
	}
	n.stats.Rotations++
	n.stats.LastRotation = time.Since(start)
	n.log.Info("overlay pre-shared keys rotated", "epoch", e, "peers", len(n.peers), "duration", n.stats.LastRotation)
	return errors.Join(errs...)
}

// rekeyInterval is how often a handshake owed to a peer (after it was added, or after
// a rotation: under the new PSK) is started again until one completes: WireGuard
// ignores an initiation request within RekeyTimeout (5 s) of the previous one, fails
// one the other side answers with the previous epoch's PSK, and gives up retrying on
// its own after 90 s (the other end may admit this one later than that).
const rekeyInterval = 5*time.Second + 100*time.Millisecond

type rekey struct{ since, tried time.Time }

// rekeyLocked starts again the handshakes owed to peers that have not completed
// yet, and returns when to look again (zero: nothing pending).
func (n *Node) rekeyLocked() time.Time {
	if len(n.rekey) == 0 {
		return time.Time{}
	}
	dev, err := n.eng.Status()
	if err != nil {
		n.log.Error("overlay status", "error", err)
		return time.Now().Add(rekeyInterval)
	}
	last := map[Key]time.Time{}
	for _, p := range dev.Peers {
		last[p.PublicKey] = p.LastHandshake
	}
	var due time.Time
	for s, r := range n.rekey {
		p := n.peers[s]
		if last[p.party.WireGuard].After(r.since) {
			delete(n.rekey, s)
			continue
		}
		if time.Since(r.tried) >= rekeyInterval {
			r.tried = time.Now()
			if err := n.eng.Handshake(p.party.WireGuard); err != nil {
				n.log.Warn("overlay handshake", "subject", s, "error", err)
			}
		}
		if next := r.tried.Add(rekeyInterval); due.IsZero() || next.Before(due) {
			due = next
		}
	}
	return due
}

// expireLocked removes peers whose last admitting result has expired without renewal
// (the verifier also issues an "expired" result; this does not depend on it), and
// returns when the next expiry is due.
func (n *Node) expireLocked(now time.Time) time.Time {
	var next time.Time
	for s, p := range n.peers {
		if !now.Before(p.expires) {
			n.removeLocked(s, "attestation expired at "+p.expires.UTC().Format(time.RFC3339Nano), now)
			continue
		}
		if next.IsZero() || p.expires.Before(next) {
			next = p.expires
		}
	}
	return next
}

// Run rotates PSKs at every epoch boundary and removes peers whose attestation expired,
// until ctx ends.
func (n *Node) Run(ctx context.Context) error {
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		case <-n.wake:
		}
		if _, err := n.Rotate(); err != nil {
			n.log.Error("overlay rotation", "error", err)
		}
		n.mu.Lock()
		wait := EpochStart(n.epoch+1, n.cfg.Epoch).Sub(n.cfg.EpochClock())
		now := time.Now()
		for _, due := range []time.Time{n.expireLocked(now), n.rekeyLocked()} {
			if !due.IsZero() && due.Sub(now) < wait {
				wait = due.Sub(now)
			}
		}
		n.mu.Unlock()
		t.Reset(max(wait, time.Millisecond))
	}
}

// PeerView is a configured peer as Status reports it.
type PeerView struct {
	Subject string    `json:"subject"`
	Address string    `json:"address"`
	Since   time.Time `json:"since"`
	Expires time.Time `json:"attestation_expires"`
	PeerStatus
}

// Status is the node's state for operators and APIs: no private or pre-shared key.
type Status struct {
	PublicKey  Key        `json:"public_key"`
	Address    string     `json:"address"`
	ListenPort int        `json:"listen_port"`
	Epoch      uint64     `json:"epoch"`
	Peers      []PeerView `json:"peers"`
	Stats      Stats      `json:"stats"`
}

// Status returns the node's state, WireGuard's view included (filtered, ParseStatus).
func (n *Node) Status() (Status, error) {
	dev, err := n.eng.Status()
	if err != nil {
		return Status{}, err
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	st := Status{PublicKey: n.self.WireGuard, Address: n.cfg.Address.String(), ListenPort: dev.ListenPort, Epoch: n.epoch, Stats: n.stats}
	byKey := map[Key]PeerStatus{}
	for _, p := range dev.Peers {
		byKey[p.PublicKey] = p
	}
	for _, s := range slices.Sorted(maps.Keys(n.peers)) {
		p := n.peers[s]
		st.Peers = append(st.Peers, PeerView{Subject: s, Address: p.cfg.Address.String(), Since: p.since, Expires: p.expires, PeerStatus: byKey[p.party.WireGuard]})
	}
	return st, nil
}

// Peers lists the subjects configured now.
func (n *Node) Peers() []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return slices.Sorted(maps.Keys(n.peers))
}

// Close removes every peer and closes the engine.
func (n *Node) Close() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return errClosed
	}
	n.closed = true
	return n.eng.Close()
}
