package overlay

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/seed4c/moat/attest"
	"github.com/seed4c/moat/attest/fakese"
	"github.com/seed4c/moat/attest/tpm"
	"github.com/seed4c/moat/internal/netns"
)

// BenchmarkHandshake: from both sides hearing an affirming result to the first packet
// through: a PSK derivation in each SE, a peer added on each side, one handshake (in
// memory: wireguard-go on channel TUNs and binds).
func BenchmarkHandshake(b *testing.B) {
	n := newPair(b)
	for b.Loop() {
		for i, p := range n {
			p.node.Notify(n[1-i].result(attest.StatusContraindicated, time.Now()))
		}
		exp := time.Now().Add(time.Hour)
		n[0].node.Notify(n[1].result(attest.StatusAffirming, exp))
		n[1].node.Notify(n[0].result(attest.StatusAffirming, exp))
		for !ping(n[0], n[1], time.Second) {
		}
	}
}

// BenchmarkRotation: one rotation of a node with one peer: ECDH in the SE, HKDF, UAPI
// set, handshake initiation sent.
func BenchmarkRotation(b *testing.B) {
	n := newPair(b)
	exp := time.Now().Add(time.Hour)
	n[0].node.Notify(n[1].result(attest.StatusAffirming, exp))
	n[1].node.Notify(n[0].result(attest.StatusAffirming, exp))
	for b.Loop() {
		n[0].offset.Add(int64(time.Minute))
		if _, err := n[0].node.Rotate(); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkPSKDerivation: the per-peer SE cost of a rotation on the TPM reference
// implementation (TPM2_ECDH_ZGen through go-tpm) and on the pure-Go fake.
func BenchmarkPSKDerivation(b *testing.B) {
	sim, err := tpm.OpenSimulator("")
	if err != nil {
		b.Fatal(err)
	}
	defer sim.Close()
	fake := newFakeSE(b)
	other, _ := fake.ECDHPublicKey()
	for _, c := range []struct {
		name string
		se   attest.SE
	}{{"simulator", sim}, {"fake", fake}} {
		b.Run(c.name, func(b *testing.B) {
			self, _ := c.se.ECDHPublicKey()
			for b.Loop() {
				if _, err := DerivePSK(c.se, Party{WireGuard: Key{1}, ECDH: self.Bytes()}, Party{WireGuard: Key{2}, ECDH: other.Bytes()}, 1); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkPrivilegedOverlayTCP measures single-stream TCP throughput (iperf3, 2 s a
// run) between two namespaces over a plain veth and over the overlay on that same veth
// (wireguard-go on kernel TUNs with their offloads, PSKs from the SEs), interleaved,
// five rounds, and reports the medians, their ratio and the CPU each path used. The two
// namespaces share this machine's two cores: both ends' wireguard-go, TCP stacks and
// iperf3 compete for them.
//
// mtu=1500 is the comparison: an ordinary underlay (TUN 1420). mtu=9000 gives both
// paths a jumbo-frame underlay (veth 9000, TUN 8920): the same bytes in a sixth of the
// WireGuard packets, recorded to separate per-packet from per-byte costs.
//
// Besides the figures it logs the evidence that the offloads are in effect during the
// overlay runs (bytes per TUN read and write, per underlay UDP packet and per datagram
// the receiving socket got) and fails if they are not; and the CPU that other
// processes took meanwhile, which this shared machine needs to judge a run by.
func BenchmarkPrivilegedOverlayTCP(b *testing.B) {
	netns.RequireRoot(b)
	if _, err := exec.LookPath("iperf3"); err != nil {
		b.Skip("iperf3 not installed (.ci/deps installs it)")
	}
	for _, mtu := range []int{1500, 9000} {
		b.Run(fmt.Sprintf("mtu=%d", mtu), func(b *testing.B) { benchTCP(b, mtu) })
	}
}

func benchTCP(b *testing.B, mtu int) {
	hosts, _ := newKernelPair(b, mtu)
	waitOverlay(b, hosts)
	var plain, overlay []iperfRun
	var off offloadCounters
	for range 5 {
		for _, c := range []struct {
			addr string
			into *[]iperfRun
		}{{"192.0.2.2", &plain}, {"100.64.0.2", &overlay}} {
			before := readOffloadCounters(b, hosts)
			r, err := iperf(hosts[1], hosts[0], c.addr, 2)
			if err != nil {
				b.Fatal(err)
			}
			if c.into == &overlay {
				off.add(readOffloadCounters(b, hosts), before)
			}
			*c.into = append(*c.into, r)
		}
	}
	p, o := medianOf(plain, iperfRun.gbits), medianOf(overlay, iperfRun.gbits)
	b.ReportMetric(p, "veth-Gbit/s")
	b.ReportMetric(o, "overlay-Gbit/s")
	b.ReportMetric(o/p, "overlay/veth")
	b.ReportMetric(medianOf(overlay, iperfRun.selfCores), "overlay-wg-cores")
	b.ReportMetric(medianOf(overlay, iperfRun.iperfCores), "overlay-iperf3-cores")
	b.ReportMetric(medianOf(plain, iperfRun.iperfCores), "veth-iperf3-cores")
	b.Logf("plain veth %.2f Gbit/s %v; overlay %.2f Gbit/s %v; ratio %.2f", p, gbits(plain), o, gbits(overlay), o/p)
	b.Logf("cores (median): plain: iperf3 %.2f; overlay: wireguard-go (this process, both ends, with the kernel work done in its system calls) %.2f, iperf3 %.2f; other processes on the machine %.2f and %.2f",
		medianOf(plain, iperfRun.iperfCores), medianOf(overlay, iperfRun.selfCores), medianOf(overlay, iperfRun.iperfCores),
		medianOf(plain, iperfRun.otherCores), medianOf(overlay, iperfRun.otherCores))
	b.Logf("offloads, overlay runs: wireguard-go read %.1f kB per TUN read (TSO), wrote %.1f kB per TUN write (GRO); underlay %.1f kB per UDP packet (GSO), %.1f kB per datagram the receiving socket got (GRO)",
		off.tunRead.per()/1e3, off.tunWrite.per()/1e3, off.underlay.per()/1e3, off.underlay.bytes/float64(off.datagrams)/1e3)
	// Without the offloads every one of these would be a single packet of at most the
	// underlay's MTU.
	for name, v := range map[string]float64{"TUN read": off.tunRead.per(), "TUN write": off.tunWrite.per(),
		"UDP send": off.underlay.per(), "UDP receive": off.underlay.bytes / float64(off.datagrams)} {
		if v < 2*float64(mtu) {
			b.Errorf("%s: %.0f bytes per packet: offloads not in effect", name, v)
		}
	}
}

// waitOverlay waits until TCP crosses the overlay both ways (a SYN to a closed port
// and its RST), so that the first overlay run measures the data path only. Both ends
// start a handshake as they add each other; the link often carries traffic only after
// wireguard-go's 5 s retry and, now and then, after its 15 s no-reply rehandshake.
func waitOverlay(b *testing.B, hosts [2]*netns.Host) {
	start := time.Now()
	for {
		c, err := hosts[0].Dial(&net.Dialer{Timeout: time.Second}, "tcp", "100.64.0.2:9")
		if err == nil {
			c.Close()
		}
		if err == nil || errors.Is(err, unix.ECONNREFUSED) {
			if d := time.Since(start); d > time.Second {
				b.Logf("the overlay carried TCP %v after setup", d.Round(time.Millisecond))
			}
			return
		}
		if time.Since(start) > 30*time.Second {
			b.Fatalf("no TCP through the overlay: %v", err)
		}
	}
}

// newKernelPair builds two namespaces joined by a veth (192.0.2.1 and .2, MTU mtu) with
// an overlay node in each (100.64.0.1 and .2, TUN MTU mtu less WireGuard's overhead),
// each admitting the other.
func newKernelPair(b testing.TB, mtu int) ([2]*netns.Host, [2]*Node) {
	var hosts [2]*netns.Host
	for i := range hosts {
		h, err := netns.NewHost(netns.UniqueName("ovbench"))
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { h.Close() })
		hosts[i] = h
	}
	if _, _, err := netns.Veth(hosts[0], "wan", hosts[1], "wan"); err != nil {
		b.Fatal(err)
	}
	names := [2]string{"x", "y"}
	var nodes [2]*Node
	var ses [2]*fakese.SE
	for i, h := range hosts {
		wan, err := h.Link("wan")
		if err != nil {
			b.Fatal(err)
		}
		if err := h.Netlink().LinkSetMTU(wan, mtu); err != nil {
			b.Fatal(err)
		}
		if err := h.AddAddr("wan", fmt.Sprintf("192.0.2.%d/24", i+1)); err != nil {
			b.Fatal(err)
		}
		ses[i] = newFakeSE(b)
		cfg := Config{Address: netip.MustParsePrefix(fmt.Sprintf("100.64.0.%d/24", i+1)), KeyFile: filepath.Join(b.TempDir(), "wg.sealed"),
			Peers: []PeerConfig{{Subject: names[1-i], Endpoint: netip.MustParseAddrPort(fmt.Sprintf("192.0.2.%d:%d", 2-i, DefaultListenPort)),
				Address: netip.MustParseAddr(fmt.Sprintf("100.64.0.%d", 2-i))}}}
		err = h.Do(func() (err error) {
			nodes[i], err = Up(cfg, Machine{MTU: mtu - (1500 - DefaultMTU)}, ses[i], NetlinkLinks{NL: h.Netlink()}, NFT{Command: h.Command}, slog.New(slog.DiscardHandler))
			return err
		})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { nodes[i].Close() })
	}
	for i := range nodes {
		ov, _ := ses[1-i].ECDHPublicKey()
		nodes[i].Notify(attest.Result{Subject: names[1-i], Status: attest.StatusAffirming, Expires: time.Now().Add(time.Hour),
			WireGuardKey: nodes[1-i].PublicKey().bytes(), OverlayKey: ov.Bytes()})
	}
	return hosts, nodes
}

func gbits(runs []iperfRun) []string {
	var out []string
	for _, r := range runs {
		out = append(out, fmt.Sprintf("%.2f", r.gbits()))
	}
	return out
}

// iperfRun is one iperf3 test: its throughput and the CPU (in cores, over the client's
// run) that this process (the overlay's wireguard-go, both ends), both iperf3 processes
// and everything else on the machine used meanwhile. Kernel work is counted where it
// ran: the receiving TCP stack mostly inside wireguard-go's TUN writes, the receiving
// UDP stack inside the sender's sendmmsg.
type iperfRun struct {
	bps                          float64
	self, iperf3, others, second float64
}

func (r iperfRun) gbits() float64      { return r.bps / 1e9 }
func (r iperfRun) selfCores() float64  { return r.self / r.second }
func (r iperfRun) iperfCores() float64 { return r.iperf3 / r.second }
func (r iperfRun) otherCores() float64 { return r.others / r.second }

type iperfResult struct {
	Error string `json:"error"`
	End   struct {
		SumReceived struct {
			BitsPerSecond float64 `json:"bits_per_second"`
		} `json:"sum_received"`
	} `json:"end"`
}

// iperf runs one iperf3 test from client to a one-shot server on addr.
func iperf(server, client *netns.Host, addr string, seconds int) (iperfRun, error) {
	srv := server.Command("iperf3", "-s", "-1", "-B", addr)
	if err := srv.Start(); err != nil {
		return iperfRun{}, err
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
	time.Sleep(300 * time.Millisecond) // until the server listens
	c := client.Command("iperf3", "-c", addr, "-t", fmt.Sprint(seconds), "-J", "--connect-timeout", "3000")
	kill := time.AfterFunc(time.Duration(seconds+15)*time.Second, func() { c.Process.Kill() })
	defer kill.Stop()
	self0, busy0, t0 := selfCPU(), busyCPU(), time.Now()
	out, err := c.Output()
	self1, busy1, t1 := selfCPU(), busyCPU(), time.Now()
	if err != nil {
		return iperfRun{}, fmt.Errorf("iperf3 to %s: %v: %s", addr, err, out)
	}
	var r iperfResult
	if err := json.Unmarshal(out, &r); err != nil {
		return iperfRun{}, fmt.Errorf("iperf3 output: %w", err)
	}
	if r.Error != "" || r.End.SumReceived.BitsPerSecond == 0 {
		return iperfRun{}, fmt.Errorf("iperf3 to %s: nothing received: %s", addr, r.Error)
	}
	select { // the one-shot server exits after the test
	case <-exited:
	case <-time.After(3 * time.Second):
		return iperfRun{}, fmt.Errorf("iperf3 server on %s did not exit", addr)
	}
	run := iperfRun{bps: r.End.SumReceived.BitsPerSecond, self: self1 - self0, second: t1.Sub(t0).Seconds(),
		iperf3: cpuOf(c.ProcessState) + cpuOf(srv.ProcessState)}
	run.others = max(0, busy1-busy0-run.self-run.iperf3)
	return run, nil
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

// offloadCounters sums, over the overlay runs, what crossed the TUNs and the underlay:
// TCP read by wireguard-go from the client's TUN, written into the server's, UDP sent
// on the client's underlay, and the datagrams the server's UDP socket received.
type offloadCounters struct {
	tunRead, tunWrite, underlay packetCount
	datagrams                   uint64
}

type packetCount struct{ bytes, packets float64 }

func (c packetCount) per() float64 { return c.bytes / c.packets }

func (o *offloadCounters) add(after, before offloadCounters) {
	for _, c := range []struct{ sum, a, b *packetCount }{{&o.tunRead, &after.tunRead, &before.tunRead},
		{&o.tunWrite, &after.tunWrite, &before.tunWrite}, {&o.underlay, &after.underlay, &before.underlay}} {
		c.sum.bytes += c.a.bytes - c.b.bytes
		c.sum.packets += c.a.packets - c.b.packets
	}
	o.datagrams += after.datagrams - before.datagrams
}

func readOffloadCounters(b *testing.B, hosts [2]*netns.Host) offloadCounters {
	stats := func(h *netns.Host, name string) *netlink.LinkStatistics {
		l, err := h.Link(name)
		if err != nil {
			b.Fatal(err)
		}
		return l.Attrs().Statistics
	}
	var o offloadCounters
	t0, t1, w0 := stats(hosts[0], DefaultDevice), stats(hosts[1], DefaultDevice), stats(hosts[0], "wan")
	o.tunRead = packetCount{float64(t0.TxBytes), float64(t0.TxPackets)}
	o.tunWrite = packetCount{float64(t1.RxBytes), float64(t1.RxPackets)}
	o.underlay = packetCount{float64(w0.TxBytes), float64(w0.TxPackets)}
	err := hosts[1].Do(func() error {
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
					o.datagrams, err = strconv.ParseUint(f[i], 10, 64)
					return err
				}
			}
		}
		return errors.New("no Udp InDatagrams in /proc/net/snmp")
	})
	if err != nil {
		b.Fatal(err)
	}
	return o
}

func medianOf(runs []iperfRun, f func(iperfRun) float64) float64 {
	var v []float64
	for _, r := range runs {
		v = append(v, f(r))
	}
	slices.Sort(v)
	return v[len(v)/2]
}
