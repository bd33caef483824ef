// Package packet builds Ethernet frames for tests and benchmarks: IPv4 with TCP or UDP,
// optionally 802.1Q-tagged, with correct checksums unless a test breaks them on
// purpose afterwards.
package packet

import (
	"encoding/binary"
	"net"
	"net/netip"
)

var be = binary.BigEndian

// Frame describes a frame to build.
type Frame struct {
	Src, Dst     net.HardwareAddr // default: locally administered dummies
	VLAN         uint16           // 0: untagged
	Tagged       bool             // tag even with VLAN 0 (priority tag)
	SrcIP, DstIP netip.Addr
	Proto        uint8 // 6 TCP, 17 UDP, anything else: raw payload after IPv4
	SrcPort      uint16
	DstPort      uint16
	TCPFlags     uint8 // default SYN for TCP
	TTL          uint8 // default 64
	Payload      []byte
	IPOptions    []byte // multiple of 4 bytes
	NoUDPCsum    bool
}

// TCP flag bits.
const (
	FIN = 0x01
	SYN = 0x02
	RST = 0x04
	PSH = 0x08
	ACK = 0x10
)

var (
	defaultSrc = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x01}
	defaultDst = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x02}
)

// Build returns the frame's bytes.
func (f Frame) Build() []byte {
	src, dst := f.Src, f.Dst
	if src == nil {
		src = defaultSrc
	}
	if dst == nil {
		dst = defaultDst
	}
	b := make([]byte, 0, 128+len(f.Payload))
	b = append(b, dst...)
	b = append(b, src...)
	if f.VLAN != 0 || f.Tagged {
		b = be.AppendUint16(b, 0x8100)
		b = be.AppendUint16(b, f.VLAN)
	}
	b = be.AppendUint16(b, 0x0800)
	l3 := len(b)

	var l4 []byte
	switch f.Proto {
	case 6:
		flags := f.TCPFlags
		if flags == 0 {
			flags = SYN
		}
		l4 = make([]byte, 20, 20+len(f.Payload))
		be.PutUint16(l4[0:], f.SrcPort)
		be.PutUint16(l4[2:], f.DstPort)
		be.PutUint32(l4[4:], 1)
		l4[12] = 5 << 4
		l4[13] = flags
		be.PutUint16(l4[14:], 65535)
		l4 = append(l4, f.Payload...)
	case 17:
		l4 = make([]byte, 8, 8+len(f.Payload))
		be.PutUint16(l4[0:], f.SrcPort)
		be.PutUint16(l4[2:], f.DstPort)
		be.PutUint16(l4[4:], uint16(8+len(f.Payload)))
		l4 = append(l4, f.Payload...)
	default:
		l4 = append([]byte(nil), f.Payload...)
	}

	ihl := 5 + len(f.IPOptions)/4
	ttl := f.TTL
	if ttl == 0 {
		ttl = 64
	}
	ip := make([]byte, ihl*4)
	ip[0] = 0x40 | byte(ihl)
	be.PutUint16(ip[2:], uint16(ihl*4+len(l4)))
	be.PutUint16(ip[4:], 0x1234)
	be.PutUint16(ip[6:], 0x4000) // DF
	ip[8] = ttl
	ip[9] = f.Proto
	s4, d4 := f.SrcIP.As4(), f.DstIP.As4()
	copy(ip[12:], s4[:])
	copy(ip[16:], d4[:])
	copy(ip[20:], f.IPOptions)
	be.PutUint16(ip[10:], Checksum(ip, 0))

	switch f.Proto {
	case 6:
		be.PutUint16(l4[16:], Checksum(l4, PseudoSum(s4, d4, 6, len(l4))))
	case 17:
		if !f.NoUDPCsum {
			c := Checksum(l4, PseudoSum(s4, d4, 17, len(l4)))
			if c == 0 {
				c = 0xffff
			}
			be.PutUint16(l4[6:], c)
		}
	}
	b = append(b, ip...)
	b = append(b, l4...)
	_ = l3
	return b
}

// PseudoSum is the partial sum of the IPv4 pseudo-header (source, destination,
// protocol, L4 length) that a TCP or UDP checksum starts from.
func PseudoSum(s, d [4]byte, proto uint8, n int) uint32 {
	return uint32(be.Uint16(s[0:])) + uint32(be.Uint16(s[2:])) + uint32(be.Uint16(d[0:])) +
		uint32(be.Uint16(d[2:])) + uint32(proto) + uint32(n)
}

// Checksum is the Internet checksum of b with an initial partial sum.
func Checksum(b []byte, initial uint32) uint16 {
	sum := initial
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(be.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

// Parsed is what Parse reads back from a frame.
type Parsed struct {
	Src, Dst     net.HardwareAddr
	Tagged       bool
	VLAN         uint16
	EtherType    uint16
	SrcIP, DstIP netip.Addr
	TTL          uint8
	Proto        uint8
	SrcPort      uint16
	DstPort      uint16
	IPCsumOK     bool
	L4CsumOK     bool
}

// Parse reads an untagged or tagged IPv4 TCP/UDP frame; ok is false for anything else.
func Parse(b []byte) (p Parsed, ok bool) {
	if len(b) < 14 {
		return p, false
	}
	p.Dst, p.Src = net.HardwareAddr(b[0:6]), net.HardwareAddr(b[6:12])
	p.EtherType = be.Uint16(b[12:])
	off := 14
	if p.EtherType == 0x8100 {
		if len(b) < 18 {
			return p, false
		}
		p.Tagged, p.VLAN, p.EtherType = true, be.Uint16(b[14:])&0x0fff, be.Uint16(b[16:])
		off = 18
	}
	if p.EtherType != 0x0800 || len(b) < off+20 {
		return p, false
	}
	ip := b[off:]
	ihl := int(ip[0]&0x0f) * 4
	tot := int(be.Uint16(ip[2:]))
	if ihl < 20 || tot < ihl || len(ip) < tot {
		return p, false
	}
	p.TTL, p.Proto = ip[8], ip[9]
	p.SrcIP = netip.AddrFrom4([4]byte(ip[12:16]))
	p.DstIP = netip.AddrFrom4([4]byte(ip[16:20]))
	p.IPCsumOK = Checksum(ip[:ihl], 0) == 0
	l4 := ip[ihl:tot]
	s4, d4 := p.SrcIP.As4(), p.DstIP.As4()
	switch p.Proto {
	case 6:
		if len(l4) < 20 {
			return p, false
		}
		p.L4CsumOK = Checksum(l4, PseudoSum(s4, d4, 6, len(l4))) == 0
	case 17:
		if len(l4) < 8 {
			return p, false
		}
		p.L4CsumOK = be.Uint16(l4[6:]) == 0 || Checksum(l4, PseudoSum(s4, d4, 17, len(l4))) == 0
	default:
		return p, true
	}
	p.SrcPort, p.DstPort = be.Uint16(l4[0:]), be.Uint16(l4[2:])
	return p, true
}
