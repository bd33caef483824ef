package overlay

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/seed4c/moat/attest"
	"github.com/seed4c/moat/attest/fakese"
	"github.com/seed4c/moat/internal/netns"
)

// This file is the overlay's throughput fixture, shared by BenchmarkPrivilegedOverlayTCP
// and `moat bench` (bench/overlay.go) so that both measure the same thing the same way.
// It is not part of a node's life: nothing in the agent or gateway uses it, and its
// fake SEs (attest/fakese) attest nothing.

// BenchPath is the link a BenchPair measures: the plain veth or the overlay on it.
type BenchPath string

const (
	// BenchVeth is the veth between the namespaces, without the overlay.
	BenchVeth BenchPath = "veth"
	// BenchOverlay is the WireGuard overlay, carried on that same veth.
	BenchOverlay BenchPath = "overlay"
)

// BenchPair is two network namespaces joined by a veth named "wan" (Hosts[i] has
// 192.0.2.(i+1)/24 on it) with an overlay node in each (100.64.0.(i+1)/24 on its TUN),
// each holding its WireGuard key sealed by a fake SE and admitted by the other.
// Hosts[0] is the client end of IPerf, Hosts[1] the server end.
type BenchPair struct {
	Hosts [2]*netns.Host
	Nodes [2]*Node
	// MTU of the veth; the TUNs have MTU less WireGuard's overhead.
	MTU int

	ses [2]*fakese.SE
	dir string // the sealed keys
}

func benchUnderlay(i int) netip.Addr { return netip.AddrFrom4([4]byte{192, 0, 2, byte(i + 1)}) }
func benchOverlay(i int) netip.Addr  { return netip.AddrFrom4([4]byte{100, 64, 0, byte(i + 1)}) }

// NewBenchPair builds a BenchPair in namespaces named names (which must not exist) with
// a veth of MTU mtu. On error everything it made is removed again; on success Close
// removes it.
func NewBenchPair(names [2]string, mtu int) (p *BenchPair, err error) {
	p = &BenchPair{MTU: mtu}
	defer func() {
		if err != nil {
			err = errors.Join(err, p.Close())
			p = nil
		}
	}()
	if p.dir, err = os.MkdirTemp("", "moat-ovbench-"); err != nil {
		return p, fmt.Errorf("bench pair key directory: %w", err)
	}
	for i := range p.Hosts {
		if p.Hosts[i], err = netns.NewHost(names[i]); err != nil {
			return p, fmt.Errorf("bench pair namespace: %w", err)
		}
	}
	if _, _, err := netns.Veth(p.Hosts[0], "wan", p.Hosts[1], "wan"); err != nil {
		return p, fmt.Errorf("bench pair veth: %w", err)
	}
	subjects := [2]string{"x", "y"}
	for i, h := range p.Hosts {
		wan, err := h.Link("wan")
		if err != nil {
			return p, fmt.Errorf("bench pair %s: %w", h.Name, err)
		}
		if err := h.Netlink().LinkSetMTU(wan, mtu); err != nil {
			return p, fmt.Errorf("bench pair %s: veth MTU %d: %w", h.Name, mtu, err)
		}
		if err := h.AddAddr("wan", netip.PrefixFrom(benchUnderlay(i), 24).String()); err != nil {
			return p, fmt.Errorf("bench pair %s: %w", h.Name, err)
		}
		if p.ses[i], err = fakese.New(); err != nil {
			return p, fmt.Errorf("bench pair %s: fake SE: %w", h.Name, err)
		}
		cfg := Config{Address: netip.PrefixFrom(benchOverlay(i), 24), KeyFile: filepath.Join(p.dir, fmt.Sprintf("wg%d.sealed", i)),
			Peers: []PeerConfig{{Subject: subjects[1-i], Endpoint: netip.AddrPortFrom(benchUnderlay(1-i), DefaultListenPort),
				Address: benchOverlay(1 - i)}}}
		err = h.Do(func() (err error) {
			// The TUN's MTU keeps the overlay's packets within the veth's MTU, as
			// DefaultMTU does within 1500.
			p.Nodes[i], err = Up(cfg, Machine{MTU: mtu - (1500 - DefaultMTU)}, p.ses[i], NetlinkLinks{NL: h.Netlink()}, NFT{Command: h.Command}, slog.New(slog.DiscardHandler))
			return err
		})
		if err != nil {
			return p, fmt.Errorf("bench pair %s: overlay up: %w", h.Name, err)
		}
	}
	// Each admits the other as an affirming attestation result would.
	for i, n := range p.Nodes {
		other := p.Nodes[1-i]
		wg := other.PublicKey()
		n.Notify(attest.Result{Subject: subjects[1-i], Status: attest.StatusAffirming, Expires: time.Now().Add(time.Hour),
			WireGuardKey: wg[:], OverlayKey: other.OverlayKey()})
	}
	return p, nil
}

// Close stops the nodes and removes the namespaces (and with them the veth and TUNs)
// and the sealed keys. It is safe on a partly built pair.
func (p *BenchPair) Close() error {
	var errs []error
	for i, n := range p.Nodes {
		if n != nil {
			if err := n.Close(); err != nil && !errors.Is(err, errClosed) {
				errs = append(errs, err)
			}
			p.Nodes[i] = nil
		}
	}
	for i, se := range p.ses {
		if se != nil {
			se.Close()
			p.ses[i] = nil
		}
	}
	for i, h := range p.Hosts {
		if h != nil {
			errs = append(errs, h.Close())
			p.Hosts[i] = nil
		}
	}
	if p.dir != "" {
		errs = append(errs, os.RemoveAll(p.dir))
		p.dir = ""
	}
	return errors.Join(errs...)
}

// WaitOverlay waits until TCP crosses the overlay both ways (a SYN from Hosts[0] to a
// closed port of Hosts[1] and its RST), so that a measurement after it sees the data
// path only, and returns how long that took. Both ends start a handshake as they add
// each other; the link often carries traffic only after wireguard-go's 5 s retry and,
// now and then, after its 15 s no-reply rehandshake: a timeout of 30 s covers both.
func (p *BenchPair) WaitOverlay(ctx context.Context, timeout time.Duration) (time.Duration, error) {
	start := time.Now()
	addr := netip.AddrPortFrom(benchOverlay(1), 9).String()
	for {
		t := time.Now()
		c, err := p.Hosts[0].Dial(&net.Dialer{Timeout: time.Second}, "tcp", addr)
		if err == nil {
			c.Close()
		}
		if err == nil || errors.Is(err, unix.ECONNREFUSED) {
			return time.Since(start), nil
		}
		// Until the handshake completes a SYN waits out the dial's timeout; an error
		// that came sooner is not worth retrying at once.
		if time.Since(t) < 100*time.Millisecond {
			time.Sleep(50 * time.Millisecond)
		}
		if ctx.Err() != nil {
			return time.Since(start), ctx.Err()
		}
		if time.Since(start) > timeout {
			return time.Since(start), fmt.Errorf("no TCP through the overlay after %v: %w", timeout, err)
		}
	}
}

// IPerfRun is one iperf3 test: its throughput and the CPU time, over the client's run,
// that this process (the overlay's wireguard-go, both ends), both iperf3 processes and
// the whole machine used. Kernel work is counted where it ran: the receiving TCP stack
// mostly inside wireguard-go's TUN writes, the receiving UDP stack inside the sender's
// sendmmsg; softirq work on the whole machine only.
type IPerfRun struct {
	BitsPerSecond float64 // received, as the server counted it
	Seconds       float64 // wall time of the client's run
	Self          float64 // CPU seconds of this process
	IPerf3        float64 // CPU seconds of the iperf3 client and server
	Busy          float64 // CPU seconds the machine spent outside idle
}

// Gbits is the throughput in Gbit/s.
func (r IPerfRun) Gbits() float64 { return r.BitsPerSecond / 1e9 }

// SelfCores is this process's CPU in cores.
func (r IPerfRun) SelfCores() float64 { return r.Self / r.Seconds }

// IPerfCores is the iperf3 processes' CPU in cores.
func (r IPerfRun) IPerfCores() float64 { return r.IPerf3 / r.Seconds }

// BusyCores is the whole machine's busy cores: both ends and everything else.
func (r IPerfRun) BusyCores() float64 { return r.Busy / r.Seconds }

// OtherCores is what neither this process nor iperf3 used: other processes, and
// kernel work done outside their system calls.
func (r IPerfRun) OtherCores() float64 { return max(0, r.Busy-r.Self-r.IPerf3) / r.Seconds }

type iperfResult struct {
	Error string `json:"error"`
	End   struct {
		SumReceived struct {
			BitsPerSecond float64 `json:"bits_per_second"`
		} `json:"sum_received"`
	} `json:"end"`
}

// IPerf runs one single-stream iperf3 test of seconds from Hosts[0] to a one-shot
// server in Hosts[1] over path. Cancelling ctx kills both iperf3 processes.
func (p *BenchPair) IPerf(ctx context.Context, path BenchPath, seconds int) (IPerfRun, error) {
	var addr string
	switch path {
	case BenchVeth:
		addr = benchUnderlay(1).String()
	case BenchOverlay:
		addr = benchOverlay(1).String()
	default:
		return IPerfRun{}, fmt.Errorf("unknown bench path %q", path)
	}
	return iperf(ctx, p.Hosts[1], p.Hosts[0], addr, seconds)
}

func iperf(ctx context.Context, server, client *netns.Host, addr string, seconds int) (IPerfRun, error) {
	srv := server.Command("iperf3", "-s", "-1", "-B", addr)
	if err := srv.Start(); err != nil {
		return IPerfRun{}, fmt.Errorf("start iperf3 server on %s: %w", addr, err)
	}
	exited := make(chan struct{})
	go func() {
		srv.Wait()
		close(exited)
	}()
	defer func() {
		srv.Process.Kill()
		<-exited
	}()
	select { // until the server listens
	case <-time.After(300 * time.Millisecond):
	case <-ctx.Done():
		return IPerfRun{}, ctx.Err()
	}
	c := client.Command("iperf3", "-c", addr, "-t", strconv.Itoa(seconds), "-J", "--connect-timeout", "3000")
	var out, stderr bytes.Buffer
	c.Stdout, c.Stderr = &out, &stderr
	self0, busy0, t0 := selfCPU(), busyCPU(), time.Now()
	if err := c.Start(); err != nil {
		return IPerfRun{}, fmt.Errorf("start iperf3 client to %s: %w", addr, err)
	}
	kill := func() { c.Process.Kill() }
	// A client that hangs (a link that stopped carrying traffic) is killed well after
	// its run should have ended.
	timer := time.AfterFunc(time.Duration(seconds+15)*time.Second, kill)
	defer timer.Stop()
	defer context.AfterFunc(ctx, kill)()
	err := c.Wait()
	self1, busy1, t1 := selfCPU(), busyCPU(), time.Now()
	if ctx.Err() != nil {
		return IPerfRun{}, ctx.Err()
	}
	if err != nil {
		return IPerfRun{}, fmt.Errorf("iperf3 to %s: %w: %s %s", addr, err, strings.TrimSpace(stderr.String()), iperfError(out.Bytes()))
	}
	var r iperfResult
	if err := json.Unmarshal(out.Bytes(), &r); err != nil {
		return IPerfRun{}, fmt.Errorf("iperf3 to %s: output: %w", addr, err)
	}
	if r.Error != "" || r.End.SumReceived.BitsPerSecond == 0 {
		return IPerfRun{}, fmt.Errorf("iperf3 to %s: nothing received: %s", addr, r.Error)
	}
	select { // the one-shot server exits after the test
	case <-exited:
	case <-time.After(3 * time.Second):
		return IPerfRun{}, fmt.Errorf("iperf3 server on %s did not exit", addr)
	}
	return IPerfRun{BitsPerSecond: r.End.SumReceived.BitsPerSecond, Seconds: t1.Sub(t0).Seconds(), Self: self1 - self0,
		IPerf3: cpuOf(c.ProcessState) + cpuOf(srv.ProcessState), Busy: busy1 - busy0}, nil
}

// iperfError is the error iperf3 -J reports in its JSON, if any.
func iperfError(out []byte) string {
	var r iperfResult
	if json.Unmarshal(out, &r) != nil {
		return ""
	}
	return r.Error
}

func cpuOf(p *os.ProcessState) float64 { return (p.UserTime() + p.SystemTime()).Seconds() }

// selfCPU is the CPU time this process has used, in seconds.
func selfCPU() float64 {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
}

// busyCPU is the CPU time the whole machine has spent outside idle, in seconds.
func busyCPU() float64 {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	var busy float64
	for i, v := range f[1:] {
		if i == 3 || i == 4 || i >= 7 { // idle, iowait, steal; guest time is already in user
			continue
		}
		n, _ := strconv.ParseFloat(v, 64)
		busy += n
	}
	return busy / 100 // USER_HZ
}

// OffloadCounters are what crossed the TUNs and the underlay in the client-to-server
// direction: TCP read by wireguard-go from the client's TUN, written into the server's,
// UDP sent on the client's underlay, and the datagrams the server's UDP socket
// received. Read them before and after overlay runs and Add the difference: bytes per
// packet above the MTU show the offloads at work.
type OffloadCounters struct {
	TUNRead, TUNWrite, Underlay PacketCount
	Datagrams                   uint64
}

// PacketCount is bytes and packets of one counter.
type PacketCount struct{ Bytes, Packets float64 }

// Per is bytes per packet.
func (c PacketCount) Per() float64 { return c.Bytes / c.Packets }

// Add adds after less before to o.
func (o *OffloadCounters) Add(after, before OffloadCounters) {
	for _, c := range []struct{ sum, a, b *PacketCount }{{&o.TUNRead, &after.TUNRead, &before.TUNRead},
		{&o.TUNWrite, &after.TUNWrite, &before.TUNWrite}, {&o.Underlay, &after.Underlay, &before.Underlay}} {
		c.sum.Bytes += c.a.Bytes - c.b.Bytes
		c.sum.Packets += c.a.Packets - c.b.Packets
	}
	o.Datagrams += after.Datagrams - before.Datagrams
}

// PerDatagram is underlay bytes per datagram the receiving socket got.
func (o OffloadCounters) PerDatagram() float64 { return o.Underlay.Bytes / float64(o.Datagrams) }

// String is the evidence in kB per read, write, packet and datagram.
func (o OffloadCounters) String() string {
	return fmt.Sprintf("wireguard-go read %.1f kB per TUN read (TSO), wrote %.1f kB per TUN write (GRO); underlay %.1f kB per UDP packet (GSO), %.1f kB per datagram the receiving socket got (GRO)",
		o.TUNRead.Per()/1e3, o.TUNWrite.Per()/1e3, o.Underlay.Per()/1e3, o.PerDatagram()/1e3)
}

// Check reports every counter that moved less than two packets of mtu at a time:
// without the offloads each of them would be a single packet of at most the underlay's
// MTU.
func (o OffloadCounters) Check(mtu int) error {
	var errs []error
	for _, c := range []struct {
		name string
		v    float64
	}{{"TUN read", o.TUNRead.Per()}, {"TUN write", o.TUNWrite.Per()}, {"UDP send", o.Underlay.Per()}, {"UDP receive", o.PerDatagram()}} {
		if !(c.v >= 2*float64(mtu)) { // NaN (nothing counted) fails too
			errs = append(errs, fmt.Errorf("%s: %.0f bytes per packet: offloads not in effect", c.name, c.v))
		}
	}
	return errors.Join(errs...)
}

// Offloads reads the pair's OffloadCounters.
func (p *BenchPair) Offloads() (OffloadCounters, error) {
	stats := func(h *netns.Host, name string) (*netlink.LinkStatistics, error) {
		l, err := h.Link(name)
		if err != nil {
			return nil, fmt.Errorf("offload counters: %w", err)
		}
		return l.Attrs().Statistics, nil
	}
	var o OffloadCounters
	t0, err := stats(p.Hosts[0], DefaultDevice)
	if err != nil {
		return o, err
	}
	t1, err := stats(p.Hosts[1], DefaultDevice)
	if err != nil {
		return o, err
	}
	w0, err := stats(p.Hosts[0], "wan")
	if err != nil {
		return o, err
	}
	o.TUNRead = PacketCount{float64(t0.TxBytes), float64(t0.TxPackets)}
	o.TUNWrite = PacketCount{float64(t1.RxBytes), float64(t1.RxPackets)}
	o.Underlay = PacketCount{float64(w0.TxBytes), float64(w0.TxPackets)}
	err = p.Hosts[1].Do(func() error {
		snmp, err := os.ReadFile("/proc/thread-self/net/snmp")
		if err != nil {
			return err
		}
		var names []string
		for _, l := range strings.Split(string(snmp), "\n") {
			f := strings.Fields(l)
			if len(f) == 0 || f[0] != "Udp:" {
				continue
			}
			if names == nil {
				names = f
				continue
			}
			for i, n := range names {
				if n == "InDatagrams" && i < len(f) {
					o.Datagrams, err = strconv.ParseUint(f[i], 10, 64)
					return err
				}
			}
		}
		return errors.New("no Udp InDatagrams in /proc/net/snmp")
	})
	if err != nil {
		return o, fmt.Errorf("offload counters in %s: %w", p.Hosts[1].Name, err)
	}
	return o, nil
}
