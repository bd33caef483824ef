package state

import (
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strings"

	"github.com/seed4c/moat/controlapi/kv"
)

// Overlay peers (operators only: they are the gateway's infrastructure, not a
// tenant's).

func (s *Store) CreateOverlayPeer(p OverlayPeer) (OverlayPeer, error) {
	return create(s, overlayPeers, &p, nil)
}
func (s *Store) GetOverlayPeer(name string) (OverlayPeer, error) {
	return getOne(s, overlayPeers, name)
}
func (s *Store) UpdateOverlayPeer(p OverlayPeer, ifMatch uint64) (OverlayPeer, error) {
	return update(s, overlayPeers, &p, ifMatch, nil)
}
func (s *Store) ListOverlayPeers(after string, limit int) ([]OverlayPeer, string, error) {
	return listSome(s, overlayPeers, "", after, limit)
}

// DeleteOverlayPeer refuses a peer that backends (other sites) go through.
func (s *Store) DeleteOverlayPeer(name string, ifMatch uint64) error {
	return remove(s, overlayPeers, name, ifMatch, func(tx kv.Tx) error {
		n := 0
		var derr error
		err := tx.Scan(backends.bucket, "", "", func(_ string, raw []byte) bool {
			var b Backend
			if derr = decodeJSON(raw, &b); derr != nil {
				return false
			}
			if b.OverlayPeer == name {
				n++
			}
			return true
		})
		if err := errors.Join(err, derr); err != nil {
			return err
		}
		if n > 0 {
			return fmt.Errorf("overlay peer %s is the site of %d backends: %w", name, n, ErrInUse)
		}
		return nil
	})
}

// check covers the peer's own fields; checkOverlay what it refers to.
func (p *OverlayPeer) check() error {
	t, identity, ok := strings.Cut(p.Subject, "/")
	if !ok {
		return fmt.Errorf("overlay peer %s: subject %q: want <tenant>/<identity>", p.Name, p.Subject)
	}
	if err := names("overlay peer", p.Name, "subject's tenant", t, "subject's identity", identity, "policy", p.Policy); err != nil {
		return err
	}
	var errs []error
	if p.EKSHA256 != "" {
		if _, err := parseDigest(p.EKSHA256); err != nil {
			errs = append(errs, fmt.Errorf("ek_sha256: %w", err))
		}
	}
	if !p.Address.Is4() {
		errs = append(errs, fmt.Errorf("address %v: want the peer's IPv4 overlay address", p.Address))
	}
	if p.Endpoint.IsValid() && (!p.Endpoint.Addr().Is4() || p.Endpoint.Port() == 0) {
		errs = append(errs, fmt.Errorf("endpoint %v: want an IPv4 address and port, or nothing", p.Endpoint))
	}
	if u, err := url.Parse(p.Verifier); err != nil || u.Scheme != "https" || u.Host == "" {
		errs = append(errs, fmt.Errorf("verifier %q: want the https URL of the peer's verifier (the gateway attests to it)", p.Verifier))
	}
	if len(p.Tenants) == 0 {
		errs = append(errs, errors.New("tenants: name the tenants whose segments the peer carries"))
	}
	for i, t := range p.Tenants {
		if slices.Index(p.Tenants, t) != i {
			errs = append(errs, fmt.Errorf("tenants: %s listed twice", t))
		}
	}
	for _, r := range p.Routes {
		if !slices.Contains(p.Tenants, r.Tenant) || !r.Dst.IsValid() || !r.Dst.Addr().Is4() || !r.Via.Is4() {
			errs = append(errs, fmt.Errorf("route %v via %v: want an IPv4 prefix of one of the peer's tenants via an IPv4 address", r.Dst, r.Via))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("overlay peer %s: %w", p.Name, err)
	}
	return nil
}

// checkOverlay checks the overlay part of the configuration as a whole: VNIs unique,
// every peer's subject tenant and policy present, its tenants present with a segment,
// its routes' next hops on those segments, subjects and addresses unique; a backend
// that is another site names a peer that carries its tenant and routes its address.
func (sn *Snapshot) checkOverlay() error {
	var errs []error
	byName := map[string]*Tenant{}
	vnis := map[uint32]string{}
	for i := range sn.Tenants {
		t := &sn.Tenants[i]
		byName[t.Name] = t
		if t.Overlay == nil {
			continue
		}
		if other, taken := vnis[t.Overlay.VNI]; taken {
			errs = append(errs, fmt.Errorf("tenants %s and %s: both have overlay VNI %d", other, t.Name, t.Overlay.VNI))
		}
		vnis[t.Overlay.VNI] = t.Name
	}
	pols := map[string]bool{}
	for _, p := range sn.Policies {
		pols[p.key()] = true
	}
	subjects := map[string]string{}
	peersByName := map[string]*OverlayPeer{}
	for i := range sn.OverlayPeers {
		peersByName[sn.OverlayPeers[i].Name] = &sn.OverlayPeers[i]
	}
	for _, p := range sn.OverlayPeers {
		where := "overlay peer " + p.Name
		t, _, _ := strings.Cut(p.Subject, "/")
		if byName[t] == nil {
			errs = append(errs, fmt.Errorf("%s: subject %s: tenant %s: %w", where, p.Subject, t, ErrNotFound))
		} else if !pols[t+"/"+p.Policy] {
			errs = append(errs, fmt.Errorf("%s: policy %s/%s: %w", where, t, p.Policy, ErrNotFound))
		}
		if other, taken := subjects[p.Subject]; taken {
			errs = append(errs, fmt.Errorf("%s: subject %s is overlay peer %s already", where, p.Subject, other))
		}
		subjects[p.Subject] = p.Name
		for _, tn := range p.Tenants {
			if byName[tn] == nil || byName[tn].Overlay == nil {
				errs = append(errs, fmt.Errorf("%s: tenant %s has no overlay segment (its overlay field)", where, tn))
			}
		}
		for _, r := range p.Routes {
			if seg := byName[r.Tenant]; seg != nil && seg.Overlay != nil && (!seg.Overlay.Address.Contains(r.Via) || seg.Overlay.Address.Addr() == r.Via) {
				errs = append(errs, fmt.Errorf("%s: route %v via %v: the next hop is not a peer's address on tenant %s's segment %v", where, r.Dst, r.Via, r.Tenant, seg.Overlay.Address))
			}
		}
	}
	for i := range sn.Backends {
		b := &sn.Backends[i]
		if b.OverlayPeer == "" {
			continue
		}
		p := peersByName[b.OverlayPeer]
		where := "backend " + b.key()
		switch {
		case p == nil:
			errs = append(errs, fmt.Errorf("%s: overlay peer %s: %w", where, b.OverlayPeer, ErrNotFound))
		case !slices.Contains(p.Tenants, b.Tenant):
			errs = append(errs, fmt.Errorf("%s: overlay peer %s does not carry tenant %s", where, p.Name, b.Tenant))
		case !slices.ContainsFunc(p.Routes, func(r OverlayRoute) bool { return r.Tenant == b.Tenant && r.Dst.Contains(b.Addr) }):
			errs = append(errs, fmt.Errorf("%s: address %v: no route of tenant %s through overlay peer %s covers it", where, b.Addr, b.Tenant, p.Name))
		}
	}
	return errors.Join(errs...)
}

// SubjectOf is the attestation subject that admits a backend: its host's, or for
// another site (Backend.OverlayPeer) the peer gateway's ("" if the peer is gone).
func (s *Store) SubjectOf(b Backend) string {
	if b.OverlayPeer == "" {
		return b.Subject()
	}
	p, err := s.GetOverlayPeer(b.OverlayPeer)
	if err != nil {
		return ""
	}
	return p.Subject
}

// peersUsing counts the overlay peers for which used is true.
func peersUsing(tx kv.Tx, used func(*OverlayPeer) bool) (int, error) {
	n := 0
	var derr error
	err := tx.Scan(overlayPeers.bucket, "", "", func(_ string, raw []byte) bool {
		var p OverlayPeer
		if derr = decodeJSON(raw, &p); derr != nil {
			return false
		}
		if used(&p) {
			n++
		}
		return true
	})
	return n, errors.Join(err, derr)
}

// notUsedByPeers refuses to delete what overlay peers refer to.
func notUsedByPeers(tx kv.Tx, what string, used func(*OverlayPeer) bool) error {
	n, err := peersUsing(tx, used)
	if err != nil {
		return err
	}
	if n > 0 {
		return fmt.Errorf("%s is used by %d overlay peers: %w", what, n, ErrInUse)
	}
	return nil
}
