package overlay

import (
	"fmt"
	"os/exec"
	"slices"
	"testing"
	"time"

	"github.com/seed4c/moat/attest"
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
	pair, err := NewBenchPair([2]string{netns.UniqueName("ovbench"), netns.UniqueName("ovbench")}, mtu)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { pair.Close() })
	waited, err := pair.WaitOverlay(b.Context(), 30*time.Second)
	if err != nil {
		b.Fatal(err)
	}
	if waited > time.Second {
		b.Logf("the overlay carried TCP %v after setup", waited.Round(time.Millisecond))
	}
	var plain, overlay []IPerfRun
	var off OffloadCounters
	for range 5 {
		for _, c := range []struct {
			path BenchPath
			into *[]IPerfRun
		}{{BenchVeth, &plain}, {BenchOverlay, &overlay}} {
			before, err := pair.Offloads()
			if err != nil {
				b.Fatal(err)
			}
			r, err := pair.IPerf(b.Context(), c.path, 2)
			if err != nil {
				b.Fatal(err)
			}
			if c.path == BenchOverlay {
				after, err := pair.Offloads()
				if err != nil {
					b.Fatal(err)
				}
				off.Add(after, before)
			}
			*c.into = append(*c.into, r)
		}
	}
	p, o := medianOf(plain, IPerfRun.Gbits), medianOf(overlay, IPerfRun.Gbits)
	b.ReportMetric(p, "veth-Gbit/s")
	b.ReportMetric(o, "overlay-Gbit/s")
	b.ReportMetric(o/p, "overlay/veth")
	b.ReportMetric(medianOf(overlay, IPerfRun.SelfCores), "overlay-wg-cores")
	b.ReportMetric(medianOf(overlay, IPerfRun.IPerfCores), "overlay-iperf3-cores")
	b.ReportMetric(medianOf(plain, IPerfRun.IPerfCores), "veth-iperf3-cores")
	b.Logf("plain veth %.2f Gbit/s %v; overlay %.2f Gbit/s %v; ratio %.2f", p, gbits(plain), o, gbits(overlay), o/p)
	b.Logf("cores (median): plain: iperf3 %.2f; overlay: wireguard-go (this process, both ends, with the kernel work done in its system calls) %.2f, iperf3 %.2f; other processes on the machine %.2f and %.2f",
		medianOf(plain, IPerfRun.IPerfCores), medianOf(overlay, IPerfRun.SelfCores), medianOf(overlay, IPerfRun.IPerfCores),
		medianOf(plain, IPerfRun.OtherCores), medianOf(overlay, IPerfRun.OtherCores))
	b.Logf("offloads, overlay runs: %s", off)
	if err := off.Check(mtu); err != nil {
		b.Error(err)
	}
}

func gbits(runs []IPerfRun) []string {
	var out []string
	for _, r := range runs {
		out = append(out, fmt.Sprintf("%.2f", r.Gbits()))
	}
	return out
}

func medianOf(runs []IPerfRun, f func(IPerfRun) float64) float64 {
	var v []float64
	for _, r := range runs {
		v = append(v, f(r))
	}
	slices.Sort(v)
	return v[len(v)/2]
}
