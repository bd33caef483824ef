package overlay

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"net/netip"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

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

// BenchmarkPrivilegedOverlayTCP measures single-stream TCP throughput (iperf3, 2 s)
// between two namespaces over a plain veth and over the overlay on that same veth
// (wireguard-go on kernel TUNs with their offloads, PSKs from the SEs), interleaved,
// three rounds, and reports the medians and their ratio. The two namespaces share this
// machine's two cores: both ends' crypto, TCP stacks and iperf3 compete for them.
func BenchmarkPrivilegedOverlayTCP(b *testing.B) {
	netns.RequireRoot(b)
	if _, err := exec.LookPath("iperf3"); err != nil {
		b.Skip("iperf3 not installed (.ci/deps installs it)")
	}
	hosts, _ := newKernelPair(b)
	var plain, overlay []float64
	for range 3 {
		for _, c := range []struct {
			addr string
			into *[]float64
		}{{"192.0.2.2", &plain}, {"100.64.0.2", &overlay}} {
			bps, err := iperf(hosts[1], hosts[0], c.addr, 2)
			if err != nil {
				b.Fatal(err)
			}
			*c.into = append(*c.into, bps)
		}
	}
	p, o := median(plain), median(overlay)
	b.ReportMetric(p/1e9, "veth-Gbit/s")
	b.ReportMetric(o/1e9, "overlay-Gbit/s")
	b.ReportMetric(o/p, "overlay/veth")
	for i, h := range hosts {
		out, _ := h.Command("ethtool", "-k", DefaultDevice).Output()
		for _, l := range strings.Split(string(out), "\n") {
			if strings.Contains(l, "segmentation-offload: on") || strings.Contains(l, "tx-checksumming: on") {
				b.Logf("node %d TUN: %s", i, strings.TrimSpace(l))
			}
		}
	}
	b.Logf("plain veth %.2f Gbit/s %v; overlay %.2f Gbit/s %v; ratio %.2f", p/1e9, gbits(plain), o/1e9, gbits(overlay), o/p)
}

// newKernelPair builds two namespaces joined by a veth (192.0.2.1 and .2) with an
// overlay node in each (100.64.0.1 and .2), each admitting the other.
func newKernelPair(b testing.TB) ([2]*netns.Host, [2]*Node) {
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
		if err := h.AddAddr("wan", fmt.Sprintf("192.0.2.%d/24", i+1)); err != nil {
			b.Fatal(err)
		}
		ses[i] = newFakeSE(b)
		cfg := Config{Address: netip.MustParsePrefix(fmt.Sprintf("100.64.0.%d/24", i+1)), KeyFile: filepath.Join(b.TempDir(), "wg.sealed"),
			Peers: []PeerConfig{{Subject: names[1-i], Endpoint: netip.MustParseAddrPort(fmt.Sprintf("192.0.2.%d:%d", 2-i, DefaultListenPort)),
				Address: netip.MustParseAddr(fmt.Sprintf("100.64.0.%d", 2-i))}}}
		err := h.Do(func() (err error) {
			nodes[i], err = Up(cfg, Machine{}, ses[i], NetlinkLinks{NL: h.Netlink()}, NFT{Command: h.Command}, slog.New(slog.DiscardHandler))
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

func gbits(v []float64) []string {
	var out []string
	for _, x := range v {
		out = append(out, fmt.Sprintf("%.2f", x/1e9))
	}
	return out
}

type iperfResult struct {
	End struct {
		SumReceived struct {
			BitsPerSecond float64 `json:"bits_per_second"`
		} `json:"sum_received"`
	} `json:"end"`
}

// iperf runs one iperf3 test from client to a one-shot server on addr.
func iperf(server, client *netns.Host, addr string, seconds int) (float64, error) {
	srv := server.Command("iperf3", "-s", "-1", "-B", addr)
	if err := srv.Start(); err != nil {
		return 0, err
	}
	defer func() {
		srv.Process.Kill()
		srv.Wait()
	}()
	time.Sleep(300 * time.Millisecond) // until the server listens
	c := client.Command("iperf3", "-c", addr, "-t", fmt.Sprint(seconds), "-J", "--connect-timeout", "3000")
	kill := time.AfterFunc(time.Duration(seconds+15)*time.Second, func() { c.Process.Kill() })
	defer kill.Stop()
	out, err := c.Output()
	if err != nil {
		return 0, fmt.Errorf("iperf3 to %s: %v: %s", addr, err, out)
	}
	var r iperfResult
	if err := json.Unmarshal(out, &r); err != nil {
		return 0, fmt.Errorf("iperf3 output: %w", err)
	}
	return r.End.SumReceived.BitsPerSecond, nil
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}
