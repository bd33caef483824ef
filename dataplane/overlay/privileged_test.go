package overlay

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/seed4c/moat/internal/netns"
	"github.com/seed4c/moat/internal/topology"
)

// TestPrivilegedOverlay runs the scene (scene_test.go): two gateways with the fast
// path, a remote backend host, WireGuard between them with SE-held keys, mutual
// attestation, tenant segments inside.
func TestPrivilegedOverlay(t *testing.T) {
	s := newScene(t)
	a, r := s.nodes["gw-a"], s.nodes["host-r"]
	cla, clb := s.hosts["cla"], s.hosts["clb"]

	t.Run("balanced over local and remote backends, tenants apart across sites", func(t *testing.T) {
		cap, err := startCapture(s.wan)
		if err != nil {
			t.Fatal(err)
		}
		spreadA, connsA, err := connect(cla, 60)
		defer closeAll(connsA)
		if err != nil {
			t.Fatal(err)
		}
		spreadB, connsB, err := connect(clb, 20)
		defer closeAll(connsB)
		if err != nil {
			t.Fatal(err)
		}
		// Full-size segments both ways over the overlay: the MSS was clamped.
		big := strings.Repeat(markerBytes, 2000)
		for _, c := range append(connsA, connsB...) {
			if _, err := c.Ask(big, 5*time.Second); err != nil {
				t.Fatalf("a 64 kB exchange failed: %v", err)
			}
		}
		frames := cap.stop()
		t.Logf("tenant a: %v; tenant b: %v", spreadA, spreadB)
		if len(spreadA) != 3 || spreadA["local-a"] == 0 || spreadA["host-r"] == 0 || spreadA["site2-a"] == 0 {
			t.Fatalf("tenant a's connections %v: want local-a, host-r (overlay) and site2-a (overlay, gateway B)", spreadA)
		}
		if len(spreadB) != 1 || spreadB["site2-b"] != 20 {
			t.Fatalf("tenant b's connections %v: want all on site2-b", spreadB)
		}
		kinds, err := underlayVerdict(frames, DefaultListenPort, []byte(markerBytes[:16]))
		if err != nil {
			t.Fatalf("underlay capture (%d frames): %v", len(frames), err)
		}
		if kinds["transport-data"] == 0 {
			t.Fatalf("the capture saw no WireGuard data: %v", kinds)
		}
		t.Logf("underlay capture: %d frames, only WireGuard and ARP: %v", len(frames), kinds)
	})

	t.Run("a peer cannot send into another tenant's segment", func(t *testing.T) {
		// R carries tenant a only. Through its own, authenticated tunnel it sends A a
		// VXLAN frame with tenant b's VNI: an ARP request from 10.9.0.66 for A's segment
		// address. Had it reached tenant b's segment, A's kernel would now know
		// 10.9.0.66 on ov12. The same frame with tenant a's VNI is the control.
		probe := netip.MustParseAddr("10.9.0.66")
		for _, c := range []struct {
			vni     uint32
			dev     string
			arrives bool
		}{{12, "ov12", false}, {11, "ov11", true}} {
			if err := sendUDP(r.h, "", "100.64.0.1:4789", vxlanFrame(c.vni, netip.MustParseAddr("10.9.0.1")), 5); err != nil {
				t.Fatal(err)
			}
			if got := knowsNeighbour(t, a, c.dev, probe); got != c.arrives {
				t.Fatalf("VNI %d from R: reached %s at A: %v, want %v", c.vni, c.dev, got, c.arrives)
			}
		}
		// The same frame in plaintext from the underlay, with tenant b's VNI: dropped
		// before the VXLAN socket.
		if err := sendUDP(r.h, "", "192.0.2.1:4789", vxlanFrame(12, netip.MustParseAddr("10.9.0.1")), 5); err != nil {
			t.Fatal(err)
		}
		if knowsNeighbour(t, a, "ov12", probe) {
			t.Fatal("plaintext VXLAN from the underlay reached tenant b's segment at A")
		}
	})

	t.Run("PSK rotation keeps a long TCP stream alive", func(t *testing.T) {
		stream, err := dialBackend(cla, "host-r")
		if err != nil {
			t.Fatal(err)
		}
		defer stream.Close()
		before := map[string]time.Time{}
		for _, p := range mustStatus(t, a).Peers {
			before[p.Subject] = p.LastHandshake
		}
		errc := make(chan error, 1)
		stop := make(chan struct{})
		asked := 0
		go func() {
			for {
				select {
				case <-stop:
					errc <- nil
					return
				default:
				}
				if _, err := stream.Ask(fmt.Sprintf("%s-%d", markerBytes, asked), 5*time.Second); err != nil {
					errc <- err
					return
				}
				asked++
			}
		}()
		for _, n := range s.nodes {
			n.offset.Add(int64(epochPeriod))
			n.node.poke()
		}
		deadline := time.Now().Add(30 * time.Second)
		for {
			fresh := 0
			for _, p := range mustStatus(t, a).Peers {
				if p.LastHandshake.After(before[p.Subject]) {
					fresh++
				}
			}
			if fresh == 2 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("A did not complete handshakes under the new PSKs with both peers within 30 s: %+v", mustStatus(t, a).Peers)
			}
			time.Sleep(50 * time.Millisecond)
		}
		time.Sleep(300 * time.Millisecond)
		close(stop)
		if err := <-errc; err != nil {
			t.Fatalf("the stream broke across the rotation after %d exchanges: %v", asked, err)
		}
		st := mustStatus(t, a)
		t.Logf("epoch %d: %d exchanges, no error; rotation took %v at A", st.Epoch, asked, st.Stats.LastRotation)
	})

	t.Run("endpoints roam", func(t *testing.T) {
		stream, err := dialBackend(cla, "host-r")
		if err != nil {
			t.Fatal(err)
		}
		defer stream.Close()
		// R moves to another link and address (a host switching networks); its old
		// link disappears. Only R's keepalive tells A where it went.
		if err := s.moveUnderlay(r, "wan2", "192.0.2.33/24"); err != nil {
			t.Fatal(err)
		}
		for i := range 20 {
			if _, err := stream.Ask(fmt.Sprintf("after the move %d", i), 10*time.Second); err != nil {
				t.Fatalf("the stream did not follow R to its new address: %v", err)
			}
		}
		for _, p := range mustStatus(t, a).Peers {
			if p.Subject == "host-r" && p.Endpoint.Addr() != netip.MustParseAddr("192.0.2.33") {
				t.Fatalf("A still sends to R at %v", p.Endpoint)
			}
		}
	})

	t.Run("an evicted peer receives nothing afterwards", func(t *testing.T) {
		if err := os.WriteFile(r.app, []byte("application release 1, with a backdoor\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		s.waitPeers(a, "gw-b")
		st := mustStatus(t, a)
		t.Logf("R evicted: peer removed from A %v after the result arrived", st.Stats.LastRemoval)
		time.Sleep(100 * time.Millisecond)
		rx0, err := linkStats(r.h, DefaultDevice)
		if err != nil {
			t.Fatal(err)
		}
		spread, conns, err := connect(cla, 30)
		closeAll(conns)
		if err != nil {
			t.Fatal(err)
		}
		if spread["host-r"] != 0 {
			t.Fatalf("new connections still reach the evicted host: %v", spread)
		}
		// A's kernel sends straight at R's segment address: WireGuard has no peer for it.
		if err := sendUDP(a.h, "ov11", "10.9.0.3:9", []byte(markerBytes), 20); err != nil {
			t.Fatal(err)
		}
		time.Sleep(300 * time.Millisecond)
		rx1, _ := linkStats(r.h, DefaultDevice)
		if rx1.RxPackets != rx0.RxPackets {
			t.Fatalf("R's overlay device received %d packets after its eviction", rx1.RxPackets-rx0.RxPackets)
		}
	})

	t.Run("a node whose measured state changed cannot unseal its key and never joins", func(t *testing.T) {
		s.stopNode(r)
		err := r.h.Do(func() error {
			_, err := Up(r.cfg, r.machine, r.se, NetlinkLinks{NL: r.h.Netlink()}, NFT{Command: r.h.Command}, nil)
			return err
		})
		if !errors.Is(err, ErrKeySealed) {
			t.Fatalf("R came back up after its measured state changed: %v", err)
		}
		t.Logf("R says: %v", err)
		if _, err := r.h.Link(DefaultDevice); err == nil {
			t.Fatal("R created its overlay device although it cannot join")
		}
		if got := a.node.Peers(); strings.Contains(strings.Join(got, ","), "host-r") {
			t.Fatalf("A has R as a peer: %v", got)
		}
	})
}

// knowsNeighbour waits a little for addr to appear in dev's neighbours at n.
func knowsNeighbour(t *testing.T, n *sceneNode, dev string, addr netip.Addr) bool {
	t.Helper()
	l, err := n.h.Link(dev)
	if err != nil {
		t.Fatal(err)
	}
	for range 10 {
		ns, err := n.h.Netlink().NeighList(l.Attrs().Index, netlink.FAMILY_V4)
		if err != nil {
			t.Fatal(err)
		}
		for _, nb := range ns {
			if nb.IP.Equal(addr.AsSlice()) {
				return true
			}
		}
		time.Sleep(50 * time.Millisecond) // a bounded wait for a frame in flight, not a timing assertion
	}
	return false
}

func mustStatus(t *testing.T, n *sceneNode) Status {
	t.Helper()
	st, err := n.node.Status()
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// dialBackend opens connections from a client to the VIP until one lands on backend.
func dialBackend(h *netns.Host, backend string) (*topology.Conn, error) {
	for range 200 {
		c, err := topology.Dial(h, "10.100.0.1:80", 3*time.Second)
		if err != nil {
			return nil, err
		}
		name, err := c.Ask("hello", 3*time.Second)
		if err == nil && name == backend {
			return c, nil
		}
		c.Close()
		if err != nil {
			return nil, err
		}
	}
	return nil, fmt.Errorf("no connection landed on %s", backend)
}

// moveUnderlay gives a node a new underlay link (a veth into the wan bridge) and
// address, then deletes its old underlay link.
func (s *scene) moveUnderlay(n *sceneNode, ifname, cidr string) error {
	port := "p" + ifname
	if _, _, err := netns.Veth(n.h, ifname, s.wan, port); err != nil {
		return err
	}
	br, err := s.wan.Link("br0")
	if err != nil {
		return err
	}
	pl, err := s.wan.Link(port)
	if err != nil {
		return err
	}
	if err := s.wan.Netlink().LinkSetMaster(pl, br); err != nil {
		return err
	}
	if err := n.h.AddAddr(ifname, cidr); err != nil {
		return err
	}
	old, err := n.h.Link("wan")
	if err != nil {
		return err
	}
	return n.h.Netlink().LinkDel(old)
}
