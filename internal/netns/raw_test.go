package netns

import (
	"bytes"
	"net"
	"testing"
	"time"
)

// floodLoopback sends UDP datagrams carrying marker over h's loopback until stop is
// closed: traffic on another interface than the one a raw socket is opened on.
func floodLoopback(t *testing.T, h *Host, marker []byte, stop <-chan struct{}) <-chan struct{} {
	t.Helper()
	sink, err := h.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c, err := h.Dial(&net.Dialer{}, "udp4", sink.LocalAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer sink.Close()
		defer c.Close()
		for {
			select {
			case <-stop:
				return
			default:
			}
			_, _ = c.Write(marker)
		}
	}()
	return done
}

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
	stop := make(chan struct{})
	done := floodLoopback(t, h, marker, stop)
	defer func() { close(stop); <-done }()

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
