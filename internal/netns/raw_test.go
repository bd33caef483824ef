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

// Send delivers the frame to the far end of the interface, and allocates nothing: the
// benchmark's paced senders call it every few microseconds, and a sender that
// allocates is drafted into the garbage collector's work whenever the system it
// measures allocates, stalling the traffic at the moment being measured.
func TestPrivilegedRawSendDeliversWithoutAllocating(t *testing.T) {
	RequireRoot(t)
	h, err := NewHost(UniqueName("rawa"))
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	peer, err := NewHost(UniqueName("rawb"))
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	if _, _, err := Veth(h, "tx", peer, "rx"); err != nil {
		t.Fatal(err)
	}
	out, err := h.OpenRaw("tx")
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	in, err := peer.OpenRaw("rx")
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	if err := in.SetReadTimeout(time.Second); err != nil {
		t.Fatal(err)
	}
	frame := make([]byte, 60)
	copy(frame, []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 0, 0, 0, 0, 1, 0x88, 0xb5}) // local experimental EtherType
	copy(frame[14:], "moat-raw-send")
	if allocs := testing.AllocsPerRun(100, func() {
		if err := out.Send(frame); err != nil {
			t.Fatal(err)
		}
	}); allocs != 0 {
		t.Errorf("Send allocates %.1f times per frame", allocs)
	}
	buf := make([]byte, 1<<16)
	for {
		n, err := in.Recv(buf)
		if err != nil {
			t.Fatalf("the far end got no frame sent: %v", err)
		}
		if bytes.Equal(buf[:n], frame) {
			return
		}
	}
}
