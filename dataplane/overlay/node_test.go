package overlay

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"log/slog"
	"net/netip"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/conn/bindtest"
	"golang.zx2c4.com/wireguard/tun/tuntest"

	"github.com/seed4c/moat/attest"
	"github.com/seed4c/moat/attest/fakese"
)

// pairNode is one side of an in-memory overlay: real wireguard-go over a channel TUN
// and a channel bind (no kernel, no root).
type pairNode struct {
	node *Node
	se   *fakese.SE
	tun  *tuntest.ChannelTUN
	// inbound holds what the node wrote to its TUN: a goroutine empties the channel TUN
	// at once, since wireguard-go's write to it is unbuffered and a write nobody reads
	// stalls that peer's receive path (and with it key confirmation and removal).
	inbound chan []byte
	addr    netip.Addr
	name    string
	key     Key
	// offset is added to the node's clock: tests move it into another PSK epoch.
	offset *atomic.Int64
}

func (p *pairNode) clock() time.Time { return time.Now().Add(time.Duration(p.offset.Load())) }

// advance moves the node's clock by d and wakes its Run loop.
func (p *pairNode) advance(d time.Duration) {
	p.offset.Add(int64(d))
	p.node.poke()
}

func (p *pairNode) result(status attest.Status, expires time.Time) attest.Result {
	ov, _ := p.se.ECDHPublicKey()
	return attest.Result{Subject: p.name, Status: status, Issued: time.Now(), Expires: expires,
		WireGuardKey: p.node.PublicKey().bytes(), OverlayKey: ov.Bytes()}
}

func (k Key) bytes() []byte { return append([]byte(nil), k[:]...) }

func newFakeSE(t testing.TB) *fakese.SE {
	t.Helper()
	se, err := fakese.New()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { se.Close() })
	return se
}

// newPair builds nodes "a" (100.64.0.1) and "b" (100.64.0.2), each configured to accept
// the other, neither yet knowing any key.
func newPair(t testing.TB) [2]*pairNode {
	t.Helper()
	binds := bindtest.NewChannelBinds()
	var out [2]*pairNode
	names := [2]string{"a", "b"}
	for i := range out {
		p := &pairNode{offset: new(atomic.Int64), se: newFakeSE(t), tun: tuntest.NewChannelTUN(), name: names[i],
			addr: netip.AddrFrom4([4]byte{100, 64, 0, byte(i + 1)}), inbound: make(chan []byte, 1024)}
		go func() {
			for pkt := range p.tun.Inbound { // closed with the TUN
				select {
				case p.inbound <- pkt:
				default: // nobody is waiting for it: a stale copy
				}
			}
		}()
		other := 1 - i
		cfg := Config{Address: netip.PrefixFrom(p.addr, 24), KeyFile: filepath.Join(t.TempDir(), "wg.sealed"), Epoch: time.Minute,
			EpochClock: p.clock, Peers: []PeerConfig{{Subject: names[other],
				Endpoint: netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(i+1)), // bindtest's channel endpoints
				Address:  netip.AddrFrom4([4]byte{100, 64, 0, byte(other + 1)})}}}
		key, err := LoadOrCreateKey(p.se, cfg.KeyFile, []int{15})
		if err != nil {
			t.Fatal(err)
		}
		p.key = key
		lg := testLog(t, names[i])
		wg := NewWireGuard(p.tun.TUN(), binds[i], lg)
		if p.node, err = NewNode(cfg, p.se, key, wg, lg); err != nil {
			t.Fatal(err)
		}
		if err := wg.Up(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { p.node.Close() })
		go p.node.Run(t.Context()) // as its owner does: rotation, expiry, handshakes owed
		out[i] = p
	}
	return out
}

// pingSeq numbers echoes so that each ping waits for its own packet: a copy of an
// earlier one (staged during a handshake and delivered after it) must not count as
// crossing later.
var pingSeq atomic.Uint32

// echo is tuntest.Ping with a sequence number of its own.
func echo(dst, src netip.Addr) []byte {
	pkt := tuntest.Ping(dst, src)
	const icmp = 20 // tuntest's IPv4 header has no options
	binary.BigEndian.PutUint16(pkt[len(pkt)-2:], uint16(pingSeq.Add(1)))
	pkt[icmp+2], pkt[icmp+3] = 0, 0
	var sum uint32
	for i := icmp; i+1 < len(pkt); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(pkt[i:]))
	}
	if (len(pkt)-icmp)%2 == 1 {
		sum += uint32(pkt[len(pkt)-1]) << 8
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	binary.BigEndian.PutUint16(pkt[icmp+2:], ^uint16(sum))
	return pkt
}

// ping sends an ICMP echo from a's TUN toward b and reports whether b's TUN received it
// within wait (a bound on a wait, not an assertion on time).
func ping(from, to *pairNode, wait time.Duration) bool {
	pkt := echo(to.addr, from.addr)
	select {
	case from.tun.Outbound <- pkt:
	case <-time.After(wait):
		return false
	}
	deadline := time.After(wait)
	for {
		select {
		case got := <-to.inbound:
			if bytes.Equal(got, pkt) {
				return true
			}
		case <-deadline:
			return false
		}
	}
}

func mustPing(t *testing.T, from, to *pairNode) {
	t.Helper()
	for range 20 { // the first packets wait for the handshake
		if ping(from, to, 500*time.Millisecond) {
			return
		}
	}
	fs, _ := from.node.Status()
	ts, _ := to.node.Status()
	t.Fatalf("no packet from %s reached %s through the overlay; %s: %+v; %s: %+v", from.name, to.name, from.name, fs, to.name, ts)
}

// waitOwedHandshakesTried waits until n has started every handshake it owes since
// its peers were added (the end with the higher key starts its first one late).
func waitOwedHandshakesTried(t *testing.T, n *Node) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		n.mu.Lock()
		pending := 0
		for _, r := range n.rekey {
			if r.tried.Before(r.since) { // the follower's first, still ahead (addLocked)
				pending++
			}
		}
		n.mu.Unlock()
		if pending == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d owed handshakes not started within 5 s", pending)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// notifyBoth gives each node the other's affirming result.
func notifyBoth(n [2]*pairNode) {
	exp := time.Now().Add(time.Hour)
	n[0].node.Notify(n[1].result(attest.StatusAffirming, exp))
	n[1].node.Notify(n[0].result(attest.StatusAffirming, exp))
}

// admitBoth gives each node the other's affirming result and waits for the handshake
// the nodes start on their own. Sending before it completes would make the sender
// initiate too: two initiations crossing can leave wireguard-go (its handshake workers
// race on one peer's state) with a session that carries one direction only, until its
// 15 s no-reply rekey. Nodes keep the handshakes they start apart (addLocked).
func admitBoth(t *testing.T, n [2]*pairNode) {
	t.Helper()
	notifyBoth(n)
	deadline := time.Now().Add(10 * time.Second)
	for lastHandshake(t, n[0]).IsZero() || lastHandshake(t, n[1]).IsZero() {
		if time.Now().After(deadline) {
			t.Fatal("no handshake within 10 s of both nodes admitting each other")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestPeersOnlyFromAttestation(t *testing.T) {
	n := newPair(t)
	if ping(n[0], n[1], 300*time.Millisecond) {
		t.Fatal("a packet crossed before either side was attested")
	}
	// Results about subjects that are not peers, refused results and results without an
	// overlay key configure nothing.
	stranger := n[1].result(attest.StatusAffirming, time.Now().Add(time.Hour))
	stranger.Subject = "somebody-else"
	n[0].node.Notify(stranger)
	refused := n[1].result(attest.StatusRefused, time.Now().Add(time.Hour))
	n[0].node.Notify(refused)
	noOverlay := n[1].result(attest.StatusAffirming, time.Now().Add(time.Hour))
	noOverlay.OverlayKey = nil
	n[0].node.Notify(noOverlay)
	if got := n[0].node.Peers(); len(got) != 0 {
		t.Fatalf("peers configured without a usable attestation: %v", got)
	}
	admitBoth(t, n)
	mustPing(t, n[0], n[1])
	mustPing(t, n[1], n[0])
}

// An attacker who got a gateway to attest some key of its own for the peer's subject
// (it cannot: the verifier refuses keys that are not the quoted ones) still could not
// complete a handshake as the peer: WireGuard authenticates the static key. Here the
// gateway is given a key that is not the peer's: nothing crosses.
func TestPeerWithAnotherKeyNeverCompletesAHandshake(t *testing.T) {
	n := newPair(t)
	forged := n[1].result(attest.StatusAffirming, time.Now().Add(time.Hour))
	other, err := PublicKey(Key{1, 2, 3})
	if err != nil {
		t.Fatal(err)
	}
	forged.WireGuardKey = other.bytes()
	n[0].node.Notify(forged)
	n[1].node.Notify(n[0].result(attest.StatusAffirming, time.Now().Add(time.Hour)))
	for range 3 {
		if ping(n[1], n[0], 300*time.Millisecond) || ping(n[0], n[1], 300*time.Millisecond) {
			t.Fatal("a packet crossed with a key the peer does not hold")
		}
	}
}

// A PSK derived from another SE's key (a peer whose ECDH key is not the one vouched
// for) makes every handshake fail.
func TestMismatchedPSKNeverCompletesAHandshake(t *testing.T) {
	n := newPair(t)
	liar := n[1].result(attest.StatusAffirming, time.Now().Add(time.Hour))
	ov, _ := newFakeSE(t).ECDHPublicKey()
	liar.OverlayKey = ov.Bytes()
	n[0].node.Notify(liar)
	n[1].node.Notify(n[0].result(attest.StatusAffirming, time.Now().Add(time.Hour)))
	for range 3 {
		if ping(n[1], n[0], 300*time.Millisecond) || ping(n[0], n[1], 300*time.Millisecond) {
			t.Fatal("a packet crossed although the two sides derived different PSKs")
		}
	}
	st, err := n[0].node.Status()
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Peers) != 1 || !st.Peers[0].LastHandshake.IsZero() {
		t.Fatalf("status %+v: want one peer that never completed a handshake", st.Peers)
	}
}

func TestEvictionRemovesPeer(t *testing.T) {
	n := newPair(t)
	admitBoth(t, n)
	mustPing(t, n[0], n[1])
	for _, status := range []attest.Status{attest.StatusContraindicated, attest.StatusExpired} {
		n[0].node.Notify(n[1].result(status, time.Now()))
		if got := n[0].node.Peers(); len(got) != 0 {
			t.Fatalf("%s result left peers %v", status, got)
		}
		for range 3 {
			if ping(n[0], n[1], 200*time.Millisecond) || ping(n[1], n[0], 200*time.Millisecond) {
				t.Fatalf("a packet crossed after the peer's %s result", status)
			}
		}
		n[0].node.Notify(n[1].result(attest.StatusAffirming, time.Now().Add(time.Hour)))
		mustPing(t, n[0], n[1])
	}
	// An affirming result that has expired by the time it arrives removes too.
	n[0].node.Notify(n[1].result(attest.StatusAffirming, time.Now().Add(-time.Second)))
	if got := n[0].node.Peers(); len(got) != 0 {
		t.Fatalf("an expired affirming result left peers %v", got)
	}
	st, _ := n[0].node.Status()
	t.Logf("removal: %v from the result's arrival to the peer gone", st.Stats.LastRemoval)
}

// Without any result from the verifier, the Node removes a peer whose last affirming
// result expired.
func TestLocalExpiryRemovesPeer(t *testing.T) {
	n := newPair(t)
	n[0].node.Notify(n[1].result(attest.StatusAffirming, time.Now().Add(300*time.Millisecond)))
	if len(n[0].node.Peers()) != 1 {
		t.Fatal("peer not added")
	}
	deadline := time.Now().Add(10 * time.Second)
	for len(n[0].node.Peers()) != 0 {
		if time.Now().After(deadline) {
			t.Fatal("peer still configured 10 s after its attestation expired")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Rotation: both sides move to the next epoch's PSK; a new handshake under it happens
// at once and traffic goes on.
func TestRotationRekeysWithNewPSK(t *testing.T) {
	n := newPair(t)
	admitBoth(t, n)
	mustPing(t, n[0], n[1])
	before := lastHandshake(t, n[0])
	for _, p := range n {
		p.advance(time.Minute)
	}
	// WireGuard refuses a new initiation within 5 s of the last: the node retries.
	deadline := time.Now().Add(30 * time.Second)
	for !lastHandshake(t, n[0]).After(before) {
		if time.Now().After(deadline) {
			t.Fatal("no handshake under the new PSK within 30 s of the rotation")
		}
		mustPing(t, n[0], n[1])
		time.Sleep(100 * time.Millisecond)
	}
	mustPing(t, n[0], n[1])
	mustPing(t, n[1], n[0])
	st, _ := n[0].node.Status()
	if st.Stats.Rotations == 0 {
		t.Fatal("no rotation counted")
	}
	t.Logf("rotation took %v (ECDH in the SE, UAPI set, handshake started)", st.Stats.LastRotation)
	// One side alone in a further epoch: its handshakes fail, the running session
	// still carries traffic.
	n[0].advance(time.Minute)
	for range 5 {
		mustPing(t, n[0], n[1])
		mustPing(t, n[1], n[0])
	}
}

func lastHandshake(t *testing.T, p *pairNode) time.Time {
	t.Helper()
	st, err := p.node.Status()
	if err != nil || len(st.Peers) != 1 {
		t.Fatalf("status: %+v, %v", st, err)
	}
	return st.Peers[0].LastHandshake
}

// Nothing the node exposes holds its private key or a pre-shared key, in any encoding.
func TestStatusHoldsNoSecret(t *testing.T) {
	n := newPair(t)
	admitBoth(t, n)
	mustPing(t, n[0], n[1])
	st, err := n[0].node.Status()
	if err != nil {
		t.Fatal(err)
	}
	raw, err := json.Marshal(st)
	if err != nil {
		t.Fatal(err)
	}
	n[0].node.mu.Lock() // its Run loop may be rotating
	party, epoch := n[0].node.peers["b"].party, n[0].node.epoch
	n[0].node.mu.Unlock()
	psk, err := DerivePSK(n[0].se, n[0].node.self, party, epoch)
	if err != nil {
		t.Fatal(err)
	}
	for what, k := range map[string]Key{"private key": n[0].key, "pre-shared key": psk} {
		for _, enc := range []string{k.hex(), k.String(), strings.TrimRight(k.String(), "=")} {
			if strings.Contains(string(raw), enc) || strings.Contains(strings.ToLower(string(raw)), strings.ToLower(enc)) {
				t.Fatalf("status exposes the %s: %s", what, raw)
			}
		}
	}
	if !st.Peers[0].HasPSK || st.Peers[0].LastHandshake.IsZero() || st.Peers[0].PublicKey != n[1].node.PublicKey() {
		t.Fatalf("status lost what it should say: %s", raw)
	}
	t.Logf("status: %s", raw)
}

// testLog sends a node's log, wireguard-go's handshakes included, to the test's log
// (printed when it fails), until the test's cleanups are over: wireguard-go's
// goroutines may log after its device closed, when t.Log would panic.
func testLog(t testing.TB, name string) *slog.Logger {
	w := &testWriter{t: t, name: name}
	t.Cleanup(func() { // registered before the nodes' own: runs after them
		w.mu.Lock()
		w.done = true
		w.mu.Unlock()
	})
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testWriter struct {
	t    testing.TB
	name string
	mu   sync.Mutex
	done bool
}

func (w *testWriter) Write(b []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Log(w.name + ": " + strings.TrimSpace(string(b)))
	}
	return len(b), nil
}
