package overlay

import (
	"bufio"
	"encoding/hex"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// WireGuard's configuration protocol (UAPI, https://www.wireguard.com/xplatform/) speaks
// "key=value" lines. Its "get" output holds the device's private key and every peer's
// pre-shared key: it is parsed into Status, which keeps only an allow-list of fields,
// before anything else sees it, and the raw text never leaves the engine.

// PeerStatus is a peer as WireGuard reports it, without its pre-shared key.
type PeerStatus struct {
	PublicKey     Key            `json:"public_key"`
	HasPSK        bool           `json:"has_preshared_key"`
	Endpoint      netip.AddrPort `json:"endpoint,omitzero"`
	LastHandshake time.Time      `json:"last_handshake,omitzero"`
	TxBytes       uint64         `json:"tx_bytes"`
	RxBytes       uint64         `json:"rx_bytes"`
	Keepalive     time.Duration  `json:"persistent_keepalive_ns,omitempty"`
	AllowedIPs    []netip.Prefix `json:"allowed_ips"`
}

// DeviceStatus is the device as WireGuard reports it, without its private key.
type DeviceStatus struct {
	ListenPort int          `json:"listen_port"`
	Peers      []PeerStatus `json:"peers"`
}

// maxUAPILines bounds the dump parser: a device with thousands of peers is still far
// below it.
const maxUAPILines = 1 << 20

// ParseStatus parses a UAPI "get" dump into a DeviceStatus, keeping only the allowed
// fields: private_key and preshared_key (and any field this parser does not know) are
// dropped unread, so a secret cannot reach a log or an API through it.
func ParseStatus(dump string) (DeviceStatus, error) {
	var st DeviceStatus
	var peer *PeerStatus
	var sec, nsec int64
	flush := func() {
		if peer != nil {
			if sec != 0 || nsec != 0 {
				peer.LastHandshake = time.Unix(sec, nsec).UTC()
			}
			st.Peers = append(st.Peers, *peer)
		}
		peer, sec, nsec = nil, 0, 0
	}
	sc := bufio.NewScanner(strings.NewReader(dump))
	sc.Buffer(make([]byte, 0, 256), 4096)
	for n := 0; sc.Scan(); n++ {
		if n >= maxUAPILines {
			return DeviceStatus{}, fmt.Errorf("uapi dump: more than %d lines", maxUAPILines)
		}
		line := sc.Text()
		if line == "" {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			return DeviceStatus{}, fmt.Errorf("uapi dump: line %d has no '='", n+1)
		}
		var err error
		switch k {
		case "private_key", "fwmark", "protocol_version", "errno":
			// private_key is a secret; the others say nothing an operator needs.
		case "listen_port":
			st.ListenPort, err = strconv.Atoi(v)
		case "public_key":
			flush()
			peer = &PeerStatus{}
			peer.PublicKey, err = parseHexKey(v)
		default:
			if peer == nil {
				continue // an unknown device field: not allow-listed
			}
			switch k {
			case "preshared_key":
				peer.HasPSK = strings.Trim(v, "0") != "" // only whether one is set
			case "endpoint":
				peer.Endpoint, err = netip.ParseAddrPort(v)
			case "last_handshake_time_sec":
				if sec, err = strconv.ParseInt(v, 10, 64); err == nil && (sec < 0 || sec > maxHandshakeSec) {
					err = fmt.Errorf("%d s is not a time after 1970 and before the year 10000", sec)
				}
			case "last_handshake_time_nsec":
				if nsec, err = strconv.ParseInt(v, 10, 64); err == nil && (nsec < 0 || nsec >= 1e9) {
					err = fmt.Errorf("%d ns is not a fraction of a second", nsec)
				}
			case "tx_bytes":
				peer.TxBytes, err = strconv.ParseUint(v, 10, 64)
			case "rx_bytes":
				peer.RxBytes, err = strconv.ParseUint(v, 10, 64)
			case "persistent_keepalive_interval":
				var s uint64
				s, err = strconv.ParseUint(v, 10, 16)
				peer.Keepalive = time.Duration(s) * time.Second
			case "allowed_ip":
				var p netip.Prefix
				p, err = netip.ParsePrefix(v)
				peer.AllowedIPs = append(peer.AllowedIPs, p)
			}
		}
		if err != nil {
			return DeviceStatus{}, fmt.Errorf("uapi dump: line %d (%s): %w", n+1, k, err)
		}
	}
	if err := sc.Err(); err != nil {
		return DeviceStatus{}, fmt.Errorf("uapi dump: %w", err)
	}
	flush()
	return st, nil
}

// maxHandshakeSec is the last second of the year 9999: a handshake time past it would
// make a status that JSON cannot carry (time.Time refuses to marshal it), which
// FuzzParseStatus found.
var maxHandshakeSec = time.Date(9999, 12, 31, 23, 59, 59, 0, time.UTC).Unix()

func parseHexKey(s string) (Key, error) {
	if len(s) != 64 {
		return Key{}, fmt.Errorf("key of %d hex digits, want 64", len(s))
	}
	b, err := hex.DecodeString(s)
	if err != nil {
		return Key{}, err
	}
	return ParseKey(b)
}

// peerConfig is one peer's "set" section.
type peerConfig struct {
	PublicKey  Key
	PSK        Key
	Endpoint   netip.AddrPort // zero: keep what WireGuard knows (the peer may have roamed)
	AllowedIPs []netip.Prefix // replaces the peer's allowed IPs
	Keepalive  time.Duration
	UpdateOnly bool // change an existing peer only; never create one
}

// setPeer renders a "set" operation for one peer.
func setPeer(p peerConfig) string {
	var b strings.Builder
	fmt.Fprintf(&b, "public_key=%s\n", p.PublicKey.hex())
	if p.UpdateOnly {
		b.WriteString("update_only=true\n")
	}
	fmt.Fprintf(&b, "preshared_key=%s\n", p.PSK.hex())
	if p.Endpoint.IsValid() {
		fmt.Fprintf(&b, "endpoint=%s\n", p.Endpoint)
	}
	if p.AllowedIPs != nil {
		b.WriteString("replace_allowed_ips=true\n")
		for _, a := range p.AllowedIPs {
			fmt.Fprintf(&b, "allowed_ip=%s\n", a)
		}
	}
	if p.Keepalive > 0 {
		fmt.Fprintf(&b, "persistent_keepalive_interval=%d\n", int(p.Keepalive/time.Second))
	}
	return b.String()
}

// removePeer renders a "set" operation removing a peer.
func removePeer(k Key) string {
	return fmt.Sprintf("public_key=%s\nremove=true\n", k.hex())
}

// setDevice renders the device section: its private key and port.
func setDevice(private Key, port int) string {
	return fmt.Sprintf("private_key=%s\nlisten_port=%d\n", private.hex(), port)
}
