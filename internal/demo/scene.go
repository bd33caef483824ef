// Package demo runs moat's reference scene (internal/topology) with the fast path on
// it: the `moat demo` command and the fast path's integration tests share it.
package demo

import (
	"errors"
	"fmt"
	"log/slog"

	"github.com/seed4c/moat/dataplane"
	"github.com/seed4c/moat/internal/netns"
	"github.com/seed4c/moat/internal/topology"
	"github.com/seed4c/moat/tenant"
)

// Scene is the topology with a fast path instance attached to the gateway.
type Scene struct {
	Topo     *topology.Topology
	DP       *dataplane.Dataplane
	Opts     dataplane.Options
	Compiled *tenant.Compiled
	Modes    map[string]dataplane.AttachMode
	peers    []*dataplane.CountPass
}

// NewScene builds the topology, starts the backends' servers, loads and attaches the
// fast path (instance name instance) and applies the topology's configuration. On
// error everything built so far is removed.
func NewScene(topo topology.Options, instance string, log *slog.Logger) (s *Scene, err error) {
	s = &Scene{Modes: map[string]dataplane.AttachMode{}}
	defer func() {
		if err != nil {
			s.Close()
			s = nil
		}
	}()
	if s.Topo, err = topology.Build(topo); err != nil {
		return nil, fmt.Errorf("build topology: %w", err)
	}
	if err := s.Topo.StartServers(); err != nil {
		return nil, err
	}
	s.Opts = dataplane.DefaultOptions(instance)
	s.Opts.Logger = log
	if err := s.Topo.GW.Do(func() (err error) { s.DP, err = dataplane.Open(s.Opts); return err }); err != nil {
		return nil, err
	}
	for _, h := range s.Topo.PeerHosts() {
		if err := s.attachPeer(h); err != nil {
			return nil, err
		}
	}
	// The maps are filled before the program meets a frame, so nothing arriving in
	// between is dropped as "no tenant".
	if err := s.Apply(s.Topo.Config()); err != nil {
		return nil, err
	}
	err = s.Topo.GW.Do(func() error {
		for _, ifname := range s.Topo.GatewayInterfaces() {
			mode, err := s.DP.Attach(ifname)
			if err != nil {
				return err
			}
			s.Modes[ifname] = mode
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return s, nil
}

// attachPeer gives a host's eth0 an XDP program: a veth delivers redirected frames
// only to a peer that has one.
func (s *Scene) attachPeer(h *netns.Host) error {
	return h.Do(func() error {
		l, err := h.Link("eth0")
		if err != nil {
			return err
		}
		cp, err := dataplane.AttachCountPass(l.Attrs().Index)
		if err != nil {
			return fmt.Errorf("%s: %w", h.Name, err)
		}
		s.peers = append(s.peers, cp)
		return nil
	})
}

// Apply compiles cfg (keeping ids stable) and writes it into the fast path.
func (s *Scene) Apply(cfg tenant.Config) error {
	var prev tenant.IDs
	if s.Compiled != nil {
		prev = s.Compiled.IDs
	}
	c, err := tenant.Compile(cfg, s.Topo, prev, s.Opts.Limits)
	if err != nil {
		return err
	}
	if err := s.Topo.GW.Do(func() error { return s.DP.Writer().Apply(c) }); err != nil {
		return err
	}
	s.Compiled = c
	return nil
}

// Close detaches and removes the fast path and deletes the topology.
func (s *Scene) Close() error {
	var errs []error
	for _, p := range s.peers {
		errs = append(errs, p.Close())
	}
	if s.DP != nil {
		errs = append(errs, s.DP.Close())
	}
	if s.Opts.Instance != "" {
		errs = append(errs, dataplane.Remove(s.Opts))
	}
	if s.Topo != nil {
		errs = append(errs, s.Topo.Close())
	}
	return errors.Join(errs...)
}
