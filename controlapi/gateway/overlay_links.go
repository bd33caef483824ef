package gateway

import (
	"context"
	"maps"
	"time"

	"github.com/seed4c/moat/attest"
	"github.com/seed4c/moat/controlapi/reconcile"
	"github.com/seed4c/moat/dataplane/overlay"
)

// The overlay's links as admission sees them (reconcile.Links): the reconciler admits
// a backend reached through an overlay peer only while the link with that peer is up.
//
// A link is up when all three hold:
//
//  1. the peer is configured in WireGuard here: this gateway's own verifier admits it
//     now, with the keys its quotes vouch for;
//  2. the peer's latest verdict on this gateway (its verifier's answer to this
//     gateway's agent) is affirming and not expired: the peer configures the gateway
//     only while that holds and removes it when it lapses;
//  3. a WireGuard handshake has completed since the peer was (last) configured here.
//     Completing one needs the peer to hold this gateway's vouched static key and the
//     pre-shared key derived inside both TPMs, so it proves what (2) only reports: the
//     peer has configured the gateway, with the right keys, and packets pass both ways
//     on the underlay. A verdict alone would also admit on a host whose overlay is
//     misconfigured (a wrong subject or endpoint for the gateway), a black hole.
//
// Not required: a recent handshake. WireGuard keeps no session on an idle link (keys
// are dropped after 3 minutes and renegotiated by the next packet, which waits one
// round trip in wireguard-go's queue, not dropped), so an old handshake means an idle
// link, not a broken one. A peer that removes the gateway does so on a verdict (2)
// that this gateway's agent sees too, or at its expiry, which is the link's Until.
//
// Both ends start a handshake as soon as they configure the other (overlay.Node), so
// the link is up one round trip after the second appraisal; the gateway polls
// WireGuard's handshake times only while a link waits for its handshake.

const (
	linkPoll     = 10 * time.Millisecond // while a link waits for its handshake
	linkIdlePoll = time.Second           // otherwise (results and rounds wake it at once)
)

// Link implements reconcile.Links.
func (o *gatewayOverlay) Link(subject string, now time.Time) reconcile.LinkState {
	o.linkMu.Lock()
	l, ok := o.links[subject]
	o.linkMu.Unlock()
	switch {
	case !ok:
		return reconcile.LinkState{Why: "not an overlay peer of this gateway yet"}
	case l.Up && !l.Until.IsZero() && !now.Before(l.Until):
		return reconcile.LinkState{Why: "the appraisals vouching for it expired at " + l.Until.UTC().Format(time.RFC3339Nano)}
	}
	return l
}

// pokeLinks asks the link watcher to look again now.
func (o *gatewayOverlay) pokeLinks() {
	select {
	case o.linkWake <- struct{}{}:
	default:
	}
}

// watchLinks keeps the links current until ctx ends, calling changed whenever one
// changed.
func (o *gatewayOverlay) watchLinks(ctx context.Context, changed func()) {
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-o.linkWake:
		case <-t.C:
		}
		wait := linkIdlePoll
		if o.refreshLinks(changed) {
			wait = linkPoll
		}
		t.Reset(wait)
	}
}

// refreshLinks recomputes every peer's link from the node's status and the agents'
// verdicts and reports whether some link waits for its handshake.
func (o *gatewayOverlay) refreshLinks(changed func()) (waiting bool) {
	now := time.Now()
	st, err := o.ov.Status()
	if err != nil {
		o.log.Error("overlay status", "error", err)
		return true
	}
	configured := map[string]overlay.PeerView{}
	for _, p := range st.Peers {
		configured[p.Subject] = p
	}
	o.pinMu.Lock()
	subjects := maps.Clone(o.subject)
	o.pinMu.Unlock()
	verdicts := map[string]*attest.Result{}
	o.mu.Lock()
	for name, a := range o.agents {
		verdicts[name] = a.agent.Status().LastResult
	}
	o.mu.Unlock()

	links := map[string]reconcile.LinkState{}
	for name, subject := range subjects {
		p, on := configured[subject]
		v := verdicts[name]
		var l reconcile.LinkState
		switch {
		case !on:
			l.Why = "not a WireGuard peer: this gateway's appraisal of it does not admit it (yet)"
		case v == nil:
			l.Why = "its verifier has not appraised this gateway yet"
		case v.Status != attest.StatusAffirming || !now.Before(v.Expires):
			l.Why = "its verifier's latest verdict on this gateway is " + string(v.Status)
			if v.Status == attest.StatusAffirming {
				l.Why += ", expired"
			}
		case p.LastHandshake.Before(p.Since):
			l.Why = "no WireGuard handshake yet"
			waiting = true
		default:
			l = reconcile.LinkState{Up: true, Until: v.Expires}
			if p.Expires.Before(l.Until) {
				l.Until = p.Expires
			}
		}
		links[subject] = l
	}
	o.linkMu.Lock()
	// A renewal moves Until later at every round: the reconciler sees it at its next
	// pass (or at the old Until, which it then finds extended). Only a change of state,
	// or an earlier lapse, needs a pass now.
	same := maps.EqualFunc(links, o.links, func(a, b reconcile.LinkState) bool {
		return a.Up == b.Up && a.Why == b.Why && !a.Until.Before(b.Until)
	})
	o.links = links
	o.linkMu.Unlock()
	if !same && changed != nil {
		changed()
	}
	return waiting
}
