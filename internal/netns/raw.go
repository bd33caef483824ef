package netns

import (
	"encoding/binary"
	"fmt"
	"net"
	"time"

	"golang.org/x/sys/unix"
)

// RawSocket sends and receives whole Ethernet frames on one interface of a host
// (AF_PACKET): how tests put malformed or spoofed frames on a wire.
type RawSocket struct {
	fd int
	to *unix.SockaddrLinklayer // made once: Send must not allocate (paced senders)
}

func htons(v uint16) uint16 {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], v)
	return binary.NativeEndian.Uint16(b[:])
}

// OpenRaw opens a raw socket on ifname inside the host.
func (h *Host) OpenRaw(ifname string) (*RawSocket, error) {
	var s *RawSocket
	err := h.Do(func() error {
		ifi, err := net.InterfaceByName(ifname)
		if err != nil {
			return fmt.Errorf("raw socket on %s: %w", ifname, err)
		}
		// Protocol 0 until bind: created with ETH_P_ALL, the socket would queue frames
		// of every interface in the namespace before bind narrows it to ifname.
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("raw socket on %s: %w", ifname, err)
		}
		if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifi.Index}); err != nil {
			unix.Close(fd)
			return fmt.Errorf("bind raw socket to %s: %w", ifname, err)
		}
		s = &RawSocket{fd: fd, to: &unix.SockaddrLinklayer{Ifindex: ifi.Index}}
		return nil
	})
	return s, err
}

// Send transmits frame as is.
func (s *RawSocket) Send(frame []byte) error {
	if err := unix.Sendto(s.fd, frame, 0, s.to); err != nil {
		return fmt.Errorf("send raw frame: %w", err)
	}
	return nil
}

// Close closes the socket.
func (s *RawSocket) Close() error { return unix.Close(s.fd) }

// SetReadTimeout bounds each Recv.
func (s *RawSocket) SetReadTimeout(d time.Duration) error {
	tv := unix.NsecToTimeval(d.Nanoseconds())
	if err := unix.SetsockoptTimeval(s.fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		return fmt.Errorf("raw socket read timeout: %w", err)
	}
	return nil
}

// Recv reads one frame seen on the interface (either direction); it returns
// os.ErrDeadlineExceeded-like errors (EAGAIN) when the read timeout passes.
func (s *RawSocket) Recv(buf []byte) (int, error) {
	n, _, err := unix.Recvfrom(s.fd, buf, 0)
	return n, err
}
