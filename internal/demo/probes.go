package demo

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/seed4c/moat/dataplane"
	"github.com/seed4c/moat/internal/netns"
	"github.com/seed4c/moat/internal/packet"
	"github.com/seed4c/moat/internal/topology"
)

// AskTimeout bounds every exchange of the scene's clients.
const AskTimeout = 3 * time.Second

// Conn is a client connection through the VIP and the backend that answered it.
type Conn struct {
	*topology.Conn
	Tenant  string
	Backend string
}

// Connect opens n connections from tn's client to the VIP at once and asks each which
// backend serves it.
func (s *Scene) Connect(tn *topology.Tenant, n int) ([]*Conn, error) { return Connect(s.Topo, tn, n) }

// Connect opens n connections from tn's client to topo's VIP at once and asks each
// which backend serves it.
func Connect(topo *topology.Topology, tn *topology.Tenant, n int) ([]*Conn, error) {
	vip := fmt.Sprintf("%s:%d", topo.Opts.VIP, topo.Opts.Port)
	out := make([]*Conn, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := topology.Dial(tn.Client, vip, AskTimeout)
			if err != nil {
				errs[i] = fmt.Errorf("tenant %s: dial %s: %w", tn.Name, vip, err)
				return
			}
			b, err := c.Ask("hello", AskTimeout)
			if err != nil {
				c.Close()
				errs[i] = fmt.Errorf("tenant %s: connection %d: %w", tn.Name, i, err)
				return
			}
			out[i] = &Conn{Conn: c, Tenant: tn.Name, Backend: b}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		CloseAll(out)
		return nil, err
	}
	return out, nil
}

// CloseAll closes connections (nil entries are skipped).
func CloseAll(conns []*Conn) {
	for _, c := range conns {
		if c != nil {
			c.Close()
		}
	}
}

// Spread counts connections per backend.
func Spread(conns []*Conn) map[string]int {
	m := map[string]int{}
	for _, c := range conns {
		m[c.Backend]++
	}
	return m
}

// SpoofMarker is in the payload of every spoofed frame, so a receiver can be caught.
var SpoofMarker = []byte("MOAT-SPOOF-PROBE")

// Spoof puts n frames on from's client wire with forged sources (the other tenant's
// client and backend addresses, the VIP, the gateway, foreign addresses) toward the
// VIP, backend addresses and client addresses, some shaped as backend replies, and
// returns how many of them any host of the tenant victim received.
func (s *Scene) Spoof(from, victim *topology.Tenant, n int) (int, error) {
	return Spoof(s.Topo, from, victim, n)
}

// Spoof is Scene.Spoof on any built topology.
func Spoof(topo *topology.Topology, from, victim *topology.Tenant, n int) (int, error) {
	var watchers []*netns.RawSocket
	defer func() {
		for _, w := range watchers {
			w.Close()
		}
	}()
	for _, h := range append([]*netns.Host{victim.Client}, backendHosts(victim)...) {
		rs, err := h.OpenRaw("eth0")
		if err != nil {
			return 0, err
		}
		watchers = append(watchers, rs)
		if err := rs.SetReadTimeout(50 * time.Millisecond); err != nil {
			return 0, err
		}
	}
	var (
		caught int
		mu     sync.Mutex
		wg     sync.WaitGroup
		stop   = make(chan struct{})
	)
	for _, rs := range watchers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 65536)
			for {
				select {
				case <-stop:
					return
				default:
				}
				if k, err := rs.Recv(buf); err == nil && bytes.Contains(buf[:k], SpoofMarker) {
					mu.Lock()
					caught++
					mu.Unlock()
				}
			}
		}()
	}

	spoofer, err := from.Client.OpenRaw("eth0")
	if err != nil {
		return 0, err
	}
	defer spoofer.Close()
	gwMAC, clientMAC, err := clientMACs(topo, from)
	if err != nil {
		return 0, err
	}
	r := rand.New(rand.NewPCG(uint64(n), 7))
	vip := topo.Opts.VIP
	sources := []netip.Addr{victim.ClientAddrs[0], victim.Backends[0].Addr, vip, victim.GWAddr, netip.MustParseAddr("192.0.2.7")}
	dests := []netip.AddrPort{netip.AddrPortFrom(vip, topo.Opts.Port), netip.AddrPortFrom(victim.ClientAddrs[0], 40000),
		netip.MustParseAddrPort("10.0.0.255:80")}
	for _, b := range victim.Backends {
		dests = append(dests, netip.AddrPortFrom(b.Addr, topo.Opts.BackendPort))
	}
	for i := range n {
		d := dests[r.IntN(len(dests))]
		f := packet.Frame{
			Src: clientMAC, Dst: gwMAC, SrcIP: sources[r.IntN(len(sources))], DstIP: d.Addr(),
			Proto: []uint8{6, 17}[r.IntN(2)], SrcPort: uint16(1024 + r.IntN(60000)), DstPort: d.Port(),
			TCPFlags: []uint8{packet.SYN, packet.ACK, packet.RST, packet.PSH | packet.ACK}[r.IntN(4)], Payload: SpoofMarker,
		}
		if i%5 == 0 { // shaped as a backend's reply toward the clients
			f.SrcIP, f.SrcPort = victim.Backends[0].Addr, topo.Opts.BackendPort
		}
		if err := spoofer.Send(f.Build()); err != nil {
			close(stop)
			wg.Wait()
			return 0, err
		}
	}
	time.Sleep(500 * time.Millisecond) // anything let through has arrived by now
	close(stop)
	wg.Wait()
	return caught, nil
}

func backendHosts(tn *topology.Tenant) []*netns.Host {
	var out []*netns.Host
	for _, b := range tn.Backends {
		out = append(out, b.Host)
	}
	return out
}

func clientMACs(topo *topology.Topology, tn *topology.Tenant) (gw, client net.HardwareAddr, err error) {
	gl, err := topo.GW.Link(tn.ClientIface)
	if err != nil {
		return nil, nil, err
	}
	cl, err := tn.Client.Link("eth0")
	if err != nil {
		return nil, nil, err
	}
	return gl.Attrs().HardwareAddr, cl.Attrs().HardwareAddr, nil
}

// SendMalformed puts each kind of malformed frame on tn's client wire each times and
// returns the drop counts it must cause, by reason.
func (s *Scene) SendMalformed(tn *topology.Tenant, each int) (map[dataplane.Reason]uint64, error) {
	return SendMalformed(s.Topo, tn, each)
}

// SendMalformed is Scene.SendMalformed on any built topology.
func SendMalformed(topo *topology.Topology, tn *topology.Tenant, each int) (map[dataplane.Reason]uint64, error) {
	gwMAC, clientMAC, err := clientMACs(topo, tn)
	if err != nil {
		return nil, err
	}
	valid := packet.Frame{Src: clientMAC, Dst: gwMAC, SrcIP: tn.ClientAddrs[0],
		DstIP: topo.Opts.VIP, Proto: 6, SrcPort: 5555, DstPort: topo.Opts.Port}.Build()
	mk := func(f func(b []byte) []byte) []byte { return f(append([]byte(nil), valid...)) }
	kinds := []struct {
		reason dataplane.Reason
		frame  []byte
	}{
		{dataplane.DropTruncatedL3, mk(func(b []byte) []byte { return b[:14+12] })},
		{dataplane.DropBadIHL, mk(func(b []byte) []byte { b[14] = 0x43; return b })},
		{dataplane.DropBadIPLen, mk(func(b []byte) []byte { b[16], b[17] = 0x05, 0xdc; fixIPCsum(b); return b })},
		{dataplane.DropBadIPLen, mk(func(b []byte) []byte { b[16], b[17] = 0, 12; fixIPCsum(b); return b })},
		{dataplane.DropBadIPVersion, mk(func(b []byte) []byte { b[14] = 0x65; return b })},
		{dataplane.DropTruncatedL4, mk(func(b []byte) []byte { b[16], b[17] = 0, 30; fixIPCsum(b); return b[:14+30] })},
		{dataplane.DropBadTCPHdr, mk(func(b []byte) []byte { b[14+20+12] = 0x20; return b })},
		{dataplane.DropBadIPCsum, mk(func(b []byte) []byte { b[24] ^= 0x5a; return b })},
		{dataplane.DropFragment, mk(func(b []byte) []byte { b[20] = 0x20; fixIPCsum(b); return b })},
		{dataplane.DropTruncatedL2, mk(func(b []byte) []byte { return append(b[:12:12], 0x81, 0x00, 0x00) })},
		{dataplane.DropVLANStacked, mk(func(b []byte) []byte { b[12], b[13] = 0x88, 0xa8; return b })},
	}
	raw, err := tn.Client.OpenRaw("eth0")
	if err != nil {
		return nil, err
	}
	defer raw.Close()
	want := map[dataplane.Reason]uint64{}
	for _, k := range kinds {
		for range each {
			if err := raw.Send(k.frame); err != nil {
				return nil, err
			}
		}
		want[k.reason] += uint64(each)
	}
	return want, nil
}

func fixIPCsum(b []byte) {
	b[24], b[25] = 0, 0
	c := packet.Checksum(b[14:34], 0)
	b[24], b[25] = byte(c>>8), byte(c)
}

// WaitCounted waits (up to timeout) until the reason counters have grown from base by
// at least want, and returns what they grew by.
func (s *Scene) WaitCounted(base dataplane.Counters, want map[dataplane.Reason]uint64, timeout time.Duration) (map[dataplane.Reason]uint64, error) {
	return WaitCounted(s.DP.Counters, base, want, timeout)
}

// WaitCounted is Scene.WaitCounted over any counter reader.
func WaitCounted(read func() (dataplane.Counters, error), base dataplane.Counters, want map[dataplane.Reason]uint64, timeout time.Duration) (map[dataplane.Reason]uint64, error) {
	deadline := time.Now().Add(timeout)
	for {
		now, err := read()
		if err != nil {
			return nil, err
		}
		got := map[dataplane.Reason]uint64{}
		done := true
		for r, n := range want {
			got[r] = now.Reasons[r].Packets - base.Reasons[r].Packets
			if got[r] < n {
				done = false
			}
		}
		if done || time.Now().After(deadline) {
			return got, nil
		}
		time.Sleep(20 * time.Millisecond)
	}
}
