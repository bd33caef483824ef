// Package underlay captures, in tests, what crosses the network an overlay runs on,
// and checks that it holds nothing but WireGuard: no tenant packet in plaintext.
package underlay

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"golang.org/x/sys/unix"

	"github.com/seed4c/moat/internal/netns"
)

// Capture records frames (AF_PACKET, ETH_P_ALL: what tcpdump sees, GSO super-packets
// included) until stopped.
type Capture struct {
	fd     int
	mu     sync.Mutex
	frames [][]byte
	done   chan struct{}
}

// Start captures in h: on ifname, both directions; or, ifname "", on every interface,
// each frame once, as it leaves a port (in a namespace holding the underlay's bridge,
// every frame between two nodes).
func Start(h *netns.Host, ifname string) (*Capture, error) {
	c := &Capture{done: make(chan struct{})}
	ifindex := 0
	err := h.Do(func() error {
		if ifname != "" {
			ifi, err := net.InterfaceByName(ifname)
			if err != nil {
				return err
			}
			ifindex = ifi.Index
		}
		// Protocol 0 at creation: the socket receives nothing until bind names the
		// protocol and the interface. Created with ETH_P_ALL, it would queue frames of
		// every interface (a TUN's bare IP packets among them) in the window before bind.
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		c.fd = fd
		if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifindex}); err != nil {
			unix.Close(fd)
			return err
		}
		return unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Usec: 100000})
	})
	if err != nil {
		return nil, fmt.Errorf("capture socket: %w", err)
	}
	go func() {
		defer close(c.done)
		buf := make([]byte, 1<<16)
		for {
			n, from, err := unix.Recvfrom(c.fd, buf, 0)
			if err != nil {
				if err == unix.EAGAIN || err == unix.EINTR {
					continue
				}
				return
			}
			ll, ok := from.(*unix.SockaddrLinklayer)
			if !ok {
				continue
			}
			if (ifindex != 0 && ll.Ifindex == ifindex) || (ifindex == 0 && ll.Pkttype == unix.PACKET_OUTGOING) {
				c.mu.Lock()
				c.frames = append(c.frames, bytes.Clone(buf[:n]))
				c.mu.Unlock()
			}
		}
	}()
	return c, nil
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// Stop ends the capture and returns the frames.
func (c *Capture) Stop() [][]byte {
	unix.Shutdown(c.fd, unix.SHUT_RDWR)
	unix.Close(c.fd)
	select {
	case <-c.done:
	case <-time.After(2 * time.Second):
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.frames
}

// Verdict classifies captured underlay frames: every IPv4 packet must be UDP to or
// from the WireGuard port holding a well-formed WireGuard message (or ARP), and no
// frame may contain the plaintext marker. It returns counts by kind and the first
// violation.
func Verdict(frames [][]byte, port uint16, marker []byte) (map[string]int, error) {
	kinds := map[string]int{}
	for i, f := range frames {
		if bytes.Contains(f, marker) {
			return kinds, fmt.Errorf("frame %d carries the tenant's plaintext", i)
		}
		p := gopacket.NewPacket(f, layers.LayerTypeEthernet, gopacket.Default)
		if arp := p.Layer(layers.LayerTypeARP); arp != nil {
			kinds["arp"]++
			continue
		}
		ip, _ := p.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
		if ip == nil {
			return kinds, fmt.Errorf("frame %d is neither ARP nor IPv4: %v", i, p)
		}
		udp, _ := p.Layer(layers.LayerTypeUDP).(*layers.UDP)
		if udp == nil || (uint16(udp.SrcPort) != port && uint16(udp.DstPort) != port) {
			return kinds, fmt.Errorf("frame %d is not WireGuard's UDP: %v", i, p)
		}
		kind, err := WireGuardMessage(udp.Payload)
		if err != nil {
			return kinds, fmt.Errorf("frame %d: %w", i, err)
		}
		kinds[kind]++
	}
	return kinds, nil
}

// WireGuardMessage checks the framing of a WireGuard message (the first one of a GSO
// super-packet): type 1–4, three zero bytes, the fixed sizes of handshake messages.
func WireGuardMessage(b []byte) (string, error) {
	if len(b) < 4 || b[1] != 0 || b[2] != 0 || b[3] != 0 {
		return "", fmt.Errorf("not a WireGuard message: % x", b[:min(len(b), 8)])
	}
	switch t := binary.LittleEndian.Uint32(b[:4]); {
	case t == 1 && len(b) == 148:
		return "handshake-initiation", nil
	case t == 2 && len(b) == 92:
		return "handshake-response", nil
	case t == 3 && len(b) == 64:
		return "cookie-reply", nil
	case t == 4 && len(b) >= 32:
		return "transport-data", nil
	default:
		return "", fmt.Errorf("WireGuard type %d with %d bytes", t, len(b))
	}
}
