package overlay

import (
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"sync"

	"golang.zx2c4.com/wireguard/conn"

	"github.com/seed4c/moat/attest"
)

// DefaultDevice is the overlay's TUN.
const DefaultDevice = "moat-wg"

// Machine is what Up sets up besides the Node: the TUN, its segments and firewall.
type Machine struct {
	// Device is the TUN's name; default DefaultDevice.
	Device string `yaml:"device"`
	// MTU of the TUN; default DefaultMTU. Segments get MTU-50.
	MTU int `yaml:"mtu"`
	// Segments are the tenants this node carries across the overlay.
	Segments []Segment `yaml:"segments"`
}

// Up brings a node up in the calling thread's network namespace: it unseals (or, the
// first time, creates and seals) the WireGuard key, creates the TUN, starts
// wireguard-go with its offloads, opens its UDP port, addresses the TUN, builds the
// tenant segments and applies the firewall. A key that cannot be unsealed stops it
// before anything is created: the error wraps ErrKeySealed and the node never joins.
func Up(cfg Config, m Machine, se attest.SE, links Links, fw Firewall, log *slog.Logger) (*Node, error) {
	o, err := Start(cfg, m, se, links, fw, log)
	if err != nil {
		return nil, err
	}
	return o.Node, nil
}

// Overlay is a node with its plumbing (TUN, tenant segments, firewall) as Start
// brings it up; Apply changes its peers and segments live, as a gateway's desired
// state changes.
type Overlay struct {
	*Node
	cfg   Config
	m     Machine
	links Links
	fw    Firewall
	log   *slog.Logger

	mu      sync.Mutex
	segs    map[uint32]Segment // applied, by VNI
	flood   map[uint32][]netip.Addr
	ruleset string
}

// Start is Up returning the Overlay: the node with its plumbing, to change with Apply
// and tear down with Close.
func Start(cfg Config, m Machine, se attest.SE, links Links, fw Firewall, log *slog.Logger) (o *Overlay, err error) {
	if m.Device == "" {
		m.Device = DefaultDevice
	}
	if m.MTU == 0 {
		m.MTU = DefaultMTU
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := cfg.setDefaults(); err != nil {
		return nil, fmt.Errorf("overlay config: %w", err)
	}
	if _, err := m.validate(cfg); err != nil {
		return nil, fmt.Errorf("overlay config: %w", err)
	}
	key, err := LoadOrCreateKey(se, cfg.KeyFile, cfg.PCRs)
	if err != nil {
		return nil, err
	}
	t, err := CreateTUN(m.Device, m.MTU)
	if err != nil {
		return nil, err
	}
	wg := NewWireGuard(t, conn.NewDefaultBind(), log)
	defer func() {
		if err != nil {
			wg.Close()
		}
	}()
	o = &Overlay{cfg: cfg, m: m, links: links, fw: fw, log: log, segs: map[uint32]Segment{}, flood: map[uint32][]netip.Addr{}}
	if o.Node, err = NewNode(cfg, se, key, wg, log); err != nil {
		return nil, err
	}
	if err := wg.Up(); err != nil {
		return nil, err
	}
	if err := links.SetupDevice(m.Device, cfg.Address); err != nil {
		return nil, err
	}
	if _, err := o.Apply(cfg.Peers, m.Segments); err != nil {
		return nil, err
	}
	log.Info("overlay up", "device", m.Device, "mtu", m.MTU, "offloads", Offloads(t), "segments", len(m.Segments))
	return o, nil
}

// Apply makes peers and segs the node's: segments no longer wanted are deleted, new
// ones built (after deleting any device of the same name an earlier process left),
// changed ones rebuilt, or only their flood lists and routes updated; the firewall is
// replaced when its ruleset changes; then the Node's peers are set (SetPeers). It
// returns the segments it built, whose fast-path ends a gateway must attach.
func (o *Overlay) Apply(peers []PeerConfig, segs []Segment) (built []Segment, err error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	cfg := o.cfg
	cfg.Peers = peers
	if err := cfg.CheckPeers(peers); err != nil {
		return nil, fmt.Errorf("overlay config: %w", err)
	}
	m := o.m
	m.Segments = segs
	flood, err := m.validate(cfg)
	if err != nil {
		return nil, fmt.Errorf("overlay config: %w", err)
	}
	want := map[uint32]bool{}
	for _, s := range segs {
		want[s.VNI] = true
	}
	for _, vni := range slices.Sorted(maps.Keys(o.segs)) {
		if !want[vni] {
			if err := o.links.RemoveSegment(o.segs[vni]); err != nil {
				return built, err
			}
			delete(o.segs, vni)
			delete(o.flood, vni)
		}
	}
	mtu := SegmentMTU(o.m.MTU)
	for i, s := range segs {
		prev, had := o.segs[s.VNI]
		switch {
		case had && sameDevices(prev, s):
			if !slices.Equal(prev.Routes, s.Routes) || !slices.Equal(o.flood[s.VNI], flood[i]) {
				if err := o.links.UpdateSegment(prev, s, flood[i]); err != nil {
					return built, err
				}
			}
		default:
			_ = o.links.RemoveSegment(s) // what an earlier process, or the previous version, left
			delete(o.segs, s.VNI)
			if err := o.links.SetupSegment(s, cfg.Address.Addr(), flood[i], mtu); err != nil {
				return built, err
			}
			built = append(built, s)
		}
		o.segs[s.VNI], o.flood[s.VNI] = s, flood[i]
	}
	if rs := Ruleset(cfg, segs, o.m.Device, o.m.MTU); rs != o.ruleset {
		if err := o.fw.Apply(rs); err != nil {
			return built, err
		}
		o.ruleset = rs
	}
	return built, o.Node.SetPeers(peers)
}

// sameDevices reports whether two versions of a segment have the same devices and
// addresses (only their flood lists and routes may differ).
func sameDevices(a, b Segment) bool {
	return a.Tenant == b.Tenant && a.VNI == b.VNI && a.Address == b.Address && a.Table == b.Table && a.FastPath == b.FastPath
}

// Close closes the node (its TUN goes with wireguard-go), deletes the segments and
// the firewall's tables.
func (o *Overlay) Close() error {
	o.mu.Lock()
	defer o.mu.Unlock()
	errs := []error{o.Node.Close()}
	for _, vni := range slices.Sorted(maps.Keys(o.segs)) {
		errs = append(errs, o.links.RemoveSegment(o.segs[vni]))
	}
	o.segs = map[uint32]Segment{}
	if o.ruleset != "" {
		errs = append(errs, o.fw.Apply(RemoveRuleset()))
		o.ruleset = ""
	}
	return errors.Join(errs...)
}

// validate checks the segments against the peers and returns each one's flood list.
func (m Machine) validate(cfg Config) ([][]netip.Addr, error) {
	addrOf := map[string]netip.Addr{}
	for _, p := range cfg.Peers {
		addrOf[p.Subject] = p.Address
	}
	var errs []error
	vnis := map[uint32]bool{}
	flood := make([][]netip.Addr, len(m.Segments))
	for i, s := range m.Segments {
		if s.VNI == 0 || s.VNI >= 1<<24 || vnis[s.VNI] {
			errs = append(errs, fmt.Errorf("segment %s: VNI %d zero, too large or used twice", s.Tenant, s.VNI))
		}
		vnis[s.VNI] = true
		if !s.Address.IsValid() || !s.Address.Addr().Is4() {
			errs = append(errs, fmt.Errorf("segment %s: address %v", s.Tenant, s.Address))
		}
		for _, p := range s.Peers {
			a, ok := addrOf[p]
			if !ok {
				errs = append(errs, fmt.Errorf("segment %s: peer %q is not configured", s.Tenant, p))
			}
			flood[i] = append(flood[i], a)
		}
	}
	if SegmentMTU(m.MTU) < 576 {
		errs = append(errs, fmt.Errorf("mtu %d leaves segments less than 576 bytes", m.MTU))
	}
	return flood, errors.Join(errs...)
}
