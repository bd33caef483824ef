package reconcile

import (
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/seed4c/moat/controlapi/state"
)

// Links is the overlay as admission sees it: whether the link with an overlay peer
// can carry traffic now. A backend reached through an overlay peer (the peer is its
// host, or it is another site's VIP behind the peer) is admitted only while its own
// attestation admits it and that link is up; it is evicted on the pass that sees the
// link down, as on an evicting result. The gateway's overlay implements it (reconcile
// does not import dataplane/overlay); FakeLinks stands for it in tests.
//
// Contract: Link is cheap and never waits (it runs on every pass, under the
// reconciler's lock); the implementation calls Reconciler.LinksChanged whenever the
// answer for some subject may have changed (the reconciler then passes at once), and
// reports in LinkState.Until when an up link lapses by itself unless renewed (the
// reconciler passes then too).
type Links interface {
	Link(subject string, now time.Time) LinkState
}

// LinkState is a link as Links reports it.
type LinkState struct {
	// Up: the link carries traffic both ways now.
	Up bool
	// Why the link is not up, for the backend's reason ("no handshake yet", ...).
	Why string
	// Until is when an up link lapses unless renewed (zero: it does not lapse by
	// itself).
	Until time.Time
}

// FakeLinks is a Links whose states a test sets (a subject not set is down, "unknown
// peer"). It calls Changed, when set, after every Set, as a real implementation calls
// Reconciler.LinksChanged.
type FakeLinks struct {
	Changed func()

	mu sync.Mutex
	m  map[string]LinkState
}

// Set sets a subject's link.
func (f *FakeLinks) Set(subject string, l LinkState) {
	f.mu.Lock()
	if f.m == nil {
		f.m = map[string]LinkState{}
	}
	f.m[subject] = l
	changed := f.Changed
	f.mu.Unlock()
	if changed != nil {
		changed()
	}
}

// Link implements Links.
func (f *FakeLinks) Link(subject string, now time.Time) LinkState {
	f.mu.Lock()
	defer f.mu.Unlock()
	l, ok := f.m[subject]
	if !ok {
		return LinkState{Why: "unknown peer"}
	}
	if l.Up && !l.Until.IsZero() && !now.Before(l.Until) {
		return LinkState{Why: "lapsed at " + l.Until.UTC().Format(time.RFC3339Nano)}
	}
	return l
}

// LinksChanged tells the reconciler that a link may have gone up or down: it passes
// at once.
func (r *Reconciler) LinksChanged() { r.poke() }

// overlayView is what a pass needs of the overlay peers: which peer each backend is
// reached through.
type overlayView struct {
	byName    map[string]*state.OverlayPeer
	bySubject map[string]*state.OverlayPeer
	carriers  map[string][]*state.OverlayPeer // tenant -> peers carrying its segment
	segments  map[string]netip.Prefix         // tenant -> its segment's prefix
}

func newOverlayView(sn *state.Snapshot) *overlayView {
	v := &overlayView{byName: map[string]*state.OverlayPeer{}, bySubject: map[string]*state.OverlayPeer{},
		carriers: map[string][]*state.OverlayPeer{}, segments: map[string]netip.Prefix{}}
	for i := range sn.OverlayPeers {
		p := &sn.OverlayPeers[i]
		v.byName[p.Name], v.bySubject[p.Subject] = p, p
		for _, t := range p.Tenants {
			v.carriers[t] = append(v.carriers[t], p)
		}
	}
	for _, t := range sn.Tenants {
		if t.Overlay != nil {
			v.segments[t.Name] = t.Overlay.Address.Masked()
		}
	}
	return v
}

// behind returns the overlay peer a backend is reached through: nil for a backend the
// gateway reaches directly. A non-empty problem means the backend is on a segment but
// no peer can be told to be its host: it cannot be admitted (its frames would go to
// whichever peer answers on the segment).
//
// In order: the peer a site backend names (Backend.OverlayPeer); the peer with the
// most specific route of the backend's tenant covering its address (another site's
// prefix); for an address on the tenant's segment, the peer that is the backend's host
// (same attestation subject: one host, one agent), else the peer whose routes go via
// that address (another gateway's segment address). A backend on a segment is never
// guessed to be behind some peer: a wrong guess would admit it on another machine's
// link.
func (v *overlayView) behind(b *state.Backend) (peer *state.OverlayPeer, problem string) {
	if b.OverlayPeer != "" {
		if p := v.byName[b.OverlayPeer]; p != nil {
			return p, ""
		}
		return nil, "overlay peer " + b.OverlayPeer + " is not configured" // the store refuses it
	}
	best := -1
	for _, p := range v.carriers[b.Tenant] {
		for _, r := range p.Routes {
			if r.Tenant == b.Tenant && r.Dst.Contains(b.Addr) && r.Dst.Bits() > best {
				peer, best = p, r.Dst.Bits()
			}
		}
	}
	if peer != nil {
		return peer, ""
	}
	seg, ok := v.segments[b.Tenant]
	if !ok || !seg.Contains(b.Addr) {
		return nil, ""
	}
	carriers := v.carriers[b.Tenant]
	if p := v.bySubject[b.Subject()]; p != nil && slices.Contains(p.Tenants, b.Tenant) {
		return p, ""
	}
	for _, p := range carriers {
		for _, r := range p.Routes {
			if r.Tenant == b.Tenant && r.Via == b.Addr {
				return p, ""
			}
		}
	}
	return nil, fmt.Sprintf("its address %v is on tenant %s's overlay segment, but none of the %d overlay peers carrying the segment is its host %s",
		b.Addr, b.Tenant, len(carriers), b.Subject())
}
