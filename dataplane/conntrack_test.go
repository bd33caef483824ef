package dataplane

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/seed4c/moat/internal/netns"
	"github.com/seed4c/moat/internal/packet"
	"github.com/seed4c/moat/tenant"
)

// TestPrivilegedConntrackStamps: entries keep 32-bit jiffies stamps compared modulo
// 2^32 (bpf/lib/clock.h). An entry stamped within its lifetime is alive, one stamped
// beyond it is expired, and one stamped a little after the clock the program read
// (another CPU refreshed it meanwhile) is alive, not taken for 2^32 ticks old.
func TestPrivilegedConntrackStamps(t *testing.T) {
	env, dp, c := smallEnv(t, DefaultConfig())
	hz, err := KernelHZ()
	if err != nil {
		t.Fatal(err)
	}
	lifetime := uint32(toJiffies(DefaultConfig().CTTCPTimeout, hz))
	var tid, other uint32
	for _, b := range c.Backends {
		tid = b.TenantID
	}
	c1 := env.ifindex["c1"]
	for i, tc := range []struct {
		name  string
		age   int64 // ticks before the clock; negative: after it
		alive bool
	}{
		{"fresh", 0, true},
		{"within its lifetime", int64(lifetime) - 100, true},
		{"beyond its lifetime", int64(lifetime) + 100, false},
		{"stamped after the clock was read", -50, true},
	} {
		sport := uint16(7300 + i)
		var picked uint32
		err := env.gw.Do(func() error {
			if v, _ := runProg(t, dp, clientFrame(6, sport, 80, packet.SYN), c1); v != XDPRedirect {
				t.Fatalf("%s: SYN got %s", tc.name, v)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		k := gatewayCtKey{TenantId: tid, Saddr: addrRaw(ap("10.0.0.2")), Daddr: addrRaw(ap("10.100.0.1")), Sport: portRaw(sport),
			Dport: portRaw(80), Proto: 6, Dir: CTDirForward}
		var e gatewayCtEntry
		if err := dp.objs.Conntrack.Lookup(&k, &e); err != nil {
			t.Fatalf("%s: forward entry: %v", tc.name, err)
		}
		picked = e.BackendId
		// Point the entry at the other backend: a live entry keeps the flow there, an
		// expired one lets Maglev pick again (picked).
		for _, b := range c.Backends {
			if b.ServiceID == e.ServiceId && b.ID != picked {
				other = b.ID
			}
		}
		now, _, err := readJiffies()
		if err != nil {
			t.Fatal(err)
		}
		e.BackendId = other
		e.LastSeen = uint32(int64(uint32(now)) - tc.age)
		e.Route.Time = 0 // no cached route: the entry is read, not short-cut
		if err := dp.objs.Conntrack.Put(&k, &e); err != nil {
			t.Fatal(err)
		}
		var out []byte
		if err := env.gw.Do(func() error {
			var v Verdict
			v, out = runProg(t, dp, clientFrame(6, sport, 80, packet.ACK), c1)
			if v != XDPRedirect {
				t.Fatalf("%s: ACK got %s", tc.name, v)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		dst := netip.AddrFrom4([4]byte(out[30:34]))
		wantID := picked
		if tc.alive {
			wantID = other
		}
		want := c.Backends[slices.IndexFunc(c.Backends, func(b tenant.BackendEntry) bool { return b.ID == wantID })].Addr
		if dst != want {
			t.Errorf("%s (stamp %d ticks old): ACK sent to %s, want %s", tc.name, tc.age, dst, want)
		}
	}
}

// A lifetime the 32-bit stamps cannot measure is refused at load time.
func TestLifetimeBeyondClockRefused(t *testing.T) {
	opts := DefaultOptions("x")
	opts.Config.CTTCPTimeout = 200 * 24 * time.Hour
	_, err := newSpec(opts)
	if err == nil || !strings.Contains(err.Error(), "the fast path's clock measures at most") {
		t.Fatalf("got %v, want the lifetime refused", err)
	}
}

// TestPrivilegedStaleConntrackReplaced: a conntrack map pinned by a version with
// another entry layout is replaced on Open, with a warning, instead of making the
// instance unloadable.
func TestPrivilegedStaleConntrackReplaced(t *testing.T) {
	netns.RequireRoot(t)
	opts := DefaultOptions(netns.UniqueName("t"))
	opts.MaxFlows = 1024
	var logs bytes.Buffer
	opts.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	t.Cleanup(func() { Remove(opts) })
	if err := ensureBPFFS(opts.PinRoot); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(opts.PinDir(), 0o700); err != nil {
		t.Fatal(err)
	}
	// The previous version's entry: 72 bytes.
	old, err := ebpf.NewMap(&ebpf.MapSpec{Name: "conntrack", Type: ebpf.LRUHash, KeySize: 20, ValueSize: 72, MaxEntries: 1024})
	if err != nil {
		t.Fatal(err)
	}
	if err := old.Pin(filepath.Join(opts.PinDir(), "conntrack")); err != nil {
		t.Fatal(err)
	}
	old.Close()
	dp, err := Open(opts)
	if err != nil {
		t.Fatalf("Open over a stale conntrack pin: %v", err)
	}
	defer dp.Close()
	if got, want := dp.objs.Conntrack.ValueSize(), uint32(binary.Size(gatewayCtEntry{})); got != want {
		t.Fatalf("conntrack value size %d, want %d", got, want)
	}
	if !strings.Contains(logs.String(), "replacing the pinned conntrack map") {
		t.Fatalf("no warning logged: %q", logs.String())
	}
}

// TestPrivilegedLostEntryRestored: a flow's two conntrack entries live and die
// together. The LRU map evicts an entry its direction has not used lately, whatever
// the other direction does: the reply entry of an upload, the forward entry of a
// one-way stream from the backend. While the flow carries packets in the other
// direction, the next refresh of that direction's entry (at most every CTRefresh)
// writes the lost entry again, so replies are not dropped as no_service for the rest
// of the flow, and the client's next segment is not balanced again (to another
// backend, once the service's Maglev table changed). Deleting an entry here stands in
// for the eviction; ageing the other entry's stamp past CTRefresh, for the wait.
func TestPrivilegedLostEntryRestored(t *testing.T) {
	env, dp, c := smallEnv(t, DefaultConfig())
	hz, err := KernelHZ()
	if err != nil {
		t.Fatal(err)
	}
	refresh := uint32(toJiffies(DefaultConfig().CTRefresh, hz))
	c1, b1 := env.ifindex["c1"], env.ifindex["b1"]
	tid := c.Backends[0].TenantID
	client, vip := ap("10.0.0.2"), ap("10.100.0.1")
	const sport = 7400

	fwdKey := gatewayCtKey{TenantId: tid, Saddr: addrRaw(client), Daddr: addrRaw(vip), Sport: portRaw(sport),
		Dport: portRaw(80), Proto: 6, Dir: CTDirForward}
	run := func(what string, frame []byte, ifindex uint32, want Verdict) []byte {
		t.Helper()
		var out []byte
		if err := env.gw.Do(func() error {
			var v Verdict
			v, out = runProg(t, dp, frame, ifindex)
			if v != want {
				t.Fatalf("%s: %s, want %s", what, v, want)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		return out
	}
	age := func(k *gatewayCtKey, ticks uint32) {
		t.Helper()
		var e gatewayCtEntry
		if err := dp.objs.Conntrack.Lookup(k, &e); err != nil {
			t.Fatalf("age entry: %v", err)
		}
		now, _, err := readJiffies()
		if err != nil {
			t.Fatal(err)
		}
		e.LastSeen = uint32(now) - ticks
		if err := dp.objs.Conntrack.Put(k, &e); err != nil {
			t.Fatal(err)
		}
	}

	out := run("SYN", clientFrame(6, sport, 80, packet.SYN), c1, XDPRedirect)
	backend := netip.AddrFrom4([4]byte(out[30:34]))
	bport := binary.BigEndian.Uint16(out[36:38])
	repKey := gatewayCtKey{TenantId: tid, Saddr: addrRaw(backend), Daddr: addrRaw(client), Sport: portRaw(bport),
		Dport: portRaw(sport), Proto: 6, Dir: CTDirReply}
	var fwd, rep gatewayCtEntry
	if err := dp.objs.Conntrack.Lookup(&fwdKey, &fwd); err != nil {
		t.Fatalf("forward entry after the SYN: %v", err)
	}
	if err := dp.objs.Conntrack.Lookup(&repKey, &rep); err != nil {
		t.Fatalf("reply entry after the SYN: %v", err)
	}
	reply := packet.Frame{SrcIP: backend, DstIP: client, Proto: 6, SrcPort: bport, DstPort: sport, TCPFlags: packet.SYN | packet.ACK}.Build()

	// The reply entry is lost while the client keeps sending.
	if err := dp.objs.Conntrack.Delete(&repKey); err != nil {
		t.Fatal(err)
	}
	run("client segment within the refresh interval", clientFrame(6, sport, 80, packet.ACK), c1, XDPRedirect)
	run("reply before the forward entry's refresh", reply, b1, XDPDrop)
	age(&fwdKey, refresh+1)
	run("client segment that refreshes the forward entry", clientFrame(6, sport, 80, packet.ACK), c1, XDPRedirect)
	var again gatewayCtEntry
	if err := dp.objs.Conntrack.Lookup(&repKey, &again); err != nil {
		t.Fatalf("reply entry not written again by the forward refresh: %v", err)
	}
	if again.BackendId != rep.BackendId || again.ServiceId != rep.ServiceId || again.Vip != rep.Vip ||
		again.Vport != rep.Vport || again.Ifindex != rep.Ifindex {
		t.Errorf("reply entry written again as %+v, want the flow's %+v", again, rep)
	}
	out = run("reply after the forward refresh", reply, b1, XDPRedirect)
	if src := netip.AddrFrom4([4]byte(out[26:30])); src != vip {
		t.Errorf("reply leaves from %s, want the VIP %s", src, vip)
	}

	// The forward entry is lost while the backend keeps sending.
	if err := dp.objs.Conntrack.Delete(&fwdKey); err != nil {
		t.Fatal(err)
	}
	age(&repKey, refresh+1)
	run("reply that refreshes the reply entry", reply, b1, XDPRedirect)
	var fwdAgain gatewayCtEntry
	if err := dp.objs.Conntrack.Lookup(&fwdKey, &fwdAgain); err != nil {
		t.Fatalf("forward entry not written again by the reply refresh: %v", err)
	}
	if fwdAgain.BackendId != fwd.BackendId || fwdAgain.ServiceId != fwd.ServiceId {
		t.Errorf("forward entry written again for backend %d service %d, want %d %d",
			fwdAgain.BackendId, fwdAgain.ServiceId, fwd.BackendId, fwd.ServiceId)
	}
	if fwdAgain.Route.Time != 0 {
		t.Errorf("forward entry written again with a route the forward direction never checked")
	}
	out = run("client segment after the reply refresh", clientFrame(6, sport, 80, packet.ACK), c1, XDPRedirect)
	if dst := netip.AddrFrom4([4]byte(out[30:34])); dst != backend {
		t.Errorf("client segment sent to %s, want the flow's backend %s", dst, backend)
	}
}

// TestPrivilegedFlushConntrack: a flush deletes every entry, more than one batch of
// them; a flow's next client packet is balanced again (to the same backend: the Maglev
// table did not change) and writes both entries anew, and a reply of a flushed flow
// that has not sent since is dropped as no_service.
func TestPrivilegedFlushConntrack(t *testing.T) {
	env, dp, _ := smallEnv(t, DefaultConfig())
	c1, b1 := env.ifindex["c1"], env.ifindex["b1"]
	const flows = 5000 // more than one batch of ClearMap
	var first, last []byte
	err := env.gw.Do(func() error {
		for i := range flows {
			v, out := runProg(t, dp, clientFrame(6, uint16(10000+i), 80, packet.SYN), c1)
			if v != XDPRedirect {
				return fmt.Errorf("SYN %d: %s", i, v)
			}
			if i == 0 {
				first = out
			}
			if i == flows-1 {
				last = out
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	n, err := dp.FlushConntrack()
	if err != nil {
		t.Fatal(err)
	}
	if n != 2*flows {
		t.Errorf("flush deleted %d entries, want %d", n, 2*flows)
	}
	if cts, err := dp.ConntrackEntries(); err != nil || len(cts) != 0 {
		t.Fatalf("after the flush: %d entries (%v)", len(cts), err)
	}
	// The last flow's backend answers: its reply entry is gone.
	reply := packet.Frame{SrcIP: netip.AddrFrom4([4]byte(last[30:34])), DstIP: ap("10.0.0.2"), Proto: 6,
		SrcPort: binary.BigEndian.Uint16(last[36:38]), DstPort: 10000 + flows - 1, TCPFlags: packet.ACK}.Build()
	err = env.gw.Do(func() error {
		if v, _ := runProg(t, dp, reply, b1); v != XDPDrop {
			t.Errorf("reply of a flushed flow: %s, want drop", v)
		}
		v, out := runProg(t, dp, clientFrame(6, 10000, 80, packet.ACK), c1)
		if v != XDPRedirect {
			t.Fatalf("first flow's next segment: %s", v)
		}
		if !bytes.Equal(out[30:38], first[30:38]) {
			t.Errorf("first flow balanced to %x after the flush, before to %x", out[30:38], first[30:38])
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if cts, err := dp.ConntrackEntries(); err != nil || len(cts) != 2 {
		t.Errorf("after one flow's segment: %d entries (%v), want its two", len(cts), err)
	}
	c, err := dp.Counters()
	if err != nil {
		t.Fatal(err)
	}
	if c.Reasons[DropNoService].Packets != 1 {
		t.Errorf("no_service drops %d, want the flushed flow's reply", c.Reasons[DropNoService].Packets)
	}
}

// TestPrivilegedFlushPinnedConntrack: the operator's flush (moat dataplane
// flush-conntrack) empties a running instance's conntrack through its pin, says when
// there is no such instance, and refuses a map of another layout rather than guess at
// its keys.
func TestPrivilegedFlushPinnedConntrack(t *testing.T) {
	env, dp, _ := smallEnv(t, DefaultConfig())
	c1 := env.ifindex["c1"]
	err := env.gw.Do(func() error {
		for i := range 10 {
			if v, _ := runProg(t, dp, clientFrame(6, uint16(11000+i), 80, packet.SYN), c1); v != XDPRedirect {
				return fmt.Errorf("SYN %d: %s", i, v)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if n, err := FlushPinnedConntrack(dp.Options()); err != nil || n != 20 {
		t.Fatalf("flush through the pin: %d entries deleted (%v), want 20", n, err)
	}
	if cts, err := dp.ConntrackEntries(); err != nil || len(cts) != 0 {
		t.Errorf("after the flush: %d entries (%v)", len(cts), err)
	}

	if _, err := FlushPinnedConntrack(DefaultOptions(netns.UniqueName("t"))); !errors.Is(err, ErrNoInstance) {
		t.Errorf("flush of an instance that does not exist: %v, want ErrNoInstance", err)
	}

	other := DefaultOptions(netns.UniqueName("t"))
	t.Cleanup(func() { os.RemoveAll(other.PinDir()) })
	if err := os.MkdirAll(other.PinDir(), 0o700); err != nil {
		t.Fatal(err)
	}
	old, err := ebpf.NewMap(&ebpf.MapSpec{Name: "conntrack", Type: ebpf.LRUHash, KeySize: 20, ValueSize: 72, MaxEntries: 16})
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	if err := old.Pin(filepath.Join(other.PinDir(), "conntrack")); err != nil {
		t.Fatal(err)
	}
	if _, err := FlushPinnedConntrack(other); err == nil || !strings.Contains(err.Error(), "not this version's") {
		t.Errorf("flush of a map of another layout: %v, want a refusal", err)
	}
}
