package underlay

import (
	"bytes"
	"testing"
	"time"

	"github.com/seed4c/moat/internal/netns"
)

// A capture on one interface must hold only that interface's frames, from its first
// one: a socket created with ETH_P_ALL and bound afterwards queued frames of every
// interface in between (a TUN's bare IP packets failed an underlay verdict in CI).
func TestPrivilegedCaptureOnlyItsInterface(t *testing.T) {
	netns.RequireRoot(t)
	h, err := netns.NewHost(netns.UniqueName("cap"))
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	peer, err := netns.NewHost(netns.UniqueName("capp"))
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	if _, _, err := netns.Veth(h, "wan", peer, "other"); err != nil {
		t.Fatal(err)
	}
	marker := []byte("moat-capture-leak-marker")
	stop, err := h.FloodLoopback(marker)
	if err != nil {
		t.Fatal(err)
	}
	defer stop()

	for i := range 20 {
		capture, err := Start(h, "wan")
		if err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Millisecond)
		for _, f := range capture.Stop() {
			if bytes.Contains(f, marker) {
				t.Fatalf("capture %d on wan holds a loopback frame: % x", i, f[:min(len(f), 48)])
			}
		}
	}
}
