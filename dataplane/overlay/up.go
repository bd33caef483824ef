package overlay

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"

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
func Up(cfg Config, m Machine, se attest.SE, links Links, fw Firewall, log *slog.Logger) (n *Node, err error) {
	if m.Device == "" {
		m.Device = DefaultDevice
	}
	if m.MTU == 0 {
		m.MTU = DefaultMTU
	}
	if err := cfg.setDefaults(); err != nil {
		return nil, fmt.Errorf("overlay config: %w", err)
	}
	flood, err := m.validate(cfg)
	if err != nil {
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
	if n, err = NewNode(cfg, se, key, wg, log); err != nil {
		return nil, err
	}
	if err := wg.Up(); err != nil {
		return nil, err
	}
	if err := links.SetupDevice(m.Device, cfg.Address); err != nil {
		return nil, err
	}
	for i, s := range m.Segments {
		if err := links.SetupSegment(s, cfg.Address.Addr(), flood[i], SegmentMTU(m.MTU)); err != nil {
			return nil, err
		}
	}
	if err := fw.Apply(Ruleset(cfg, m.Segments, m.Device, m.MTU)); err != nil {
		return nil, err
	}
	if log != nil {
		log.Info("overlay up", "device", m.Device, "mtu", m.MTU, "offloads", Offloads(t), "segments", len(m.Segments))
	}
	return n, nil
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
