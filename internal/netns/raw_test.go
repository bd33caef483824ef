package netns

import (
	"bytes"
	"testing"
	"time"
)

// A raw socket opened on one interface must never return a frame of another: opened
// with ETH_P_ALL before bind, it queued whatever crossed any interface in between
// (seen as a TUN's bare IP packet in an underlay capture).
func TestPrivilegedRawSocketOnlyItsInterface(t *testing.T) {
	RequireRoot(t)
	h, err := NewHost(UniqueName("raw"))
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	peer, err := NewHost(UniqueName("rawp"))
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	if _, _, err := Veth(h, "quiet", peer, "other"); err != nil {
		t.Fatal(err)
	}
	marker := []byte("moat-raw-socket-leak-marker")
	stop, err := h.FloodLoopback(marker)
	if err != nil {
		t.Fatal(err)
	}
	defer stop()

	buf := make([]byte, 1<<16)
	for i := range 60 {
		s, err := h.OpenRaw("quiet")
		if err != nil {
			t.Fatal(err)
		}
		if err := s.SetReadTimeout(time.Millisecond); err != nil {
			t.Fatal(err)
		}
		for {
			n, err := s.Recv(buf)
			if err != nil {
				break
			}
			if bytes.Contains(buf[:n], marker) {
				s.Close()
				t.Fatalf("socket %d on quiet returned a loopback frame: % x", i, buf[:min(n, 48)])
			}
		}
		s.Close()
	}
}
