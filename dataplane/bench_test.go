package dataplane

import (
	"fmt"
	"testing"
	"time"

	"github.com/seed4c/moat/internal/packet"
)

// BenchmarkFastPath measures the program per packet on each of its paths, with the
// kernel's own clock around the program (TimedRun), beside the floor: a program that
// only counts and passes, timed the same way, in alternation, in the same run. The
// ratio (x-floor) is the figure to compare across machines; ns/pkt is this machine's.
//
//	go test -run '^$' -bench FastPath ./dataplane/
func BenchmarkFastPath(b *testing.B) {
	env, dp, _ := smallEnv(b, DefaultConfig())
	floor, floorStats, err := loadFloor()
	if err != nil {
		b.Fatal(err)
	}
	defer floor.Close()
	defer floorStats.Close()
	c1, b1, c9 := env.ifindex["c1"], env.ifindex["b1"], env.ifindex["c9"]

	established := clientFrame(6, 7000, 80, packet.ACK)
	var backendPort uint16 = 8080
	var backendAddr string
	err = env.gw.Do(func() error {
		if _, _, err := TimedRun(dp.Program(), clientFrame(6, 7000, 80, packet.SYN), c1); err != nil {
			return err
		}
		cts, err := dp.ConntrackEntries()
		if err != nil {
			return err
		}
		for k, e := range cts {
			if k.Dir == CTDirReply && k.Dport == 7000 {
				backendAddr = fmt.Sprintf("%d.%d.%d.%d", k.Saddr[0], k.Saddr[1], k.Saddr[2], k.Saddr[3])
				backendPort = k.Sport
				_ = e
			}
		}
		return nil
	})
	if err != nil || backendAddr == "" {
		b.Fatalf("set up an established flow: %v (backend %q)", err, backendAddr)
	}
	reply := packet.Frame{SrcIP: ap(backendAddr), DstIP: ap("10.0.0.2"), Proto: 6, SrcPort: backendPort, DstPort: 7000, TCPFlags: packet.ACK}.Build()

	var sport uint16
	cases := []struct {
		name    string
		ifindex uint32
		want    Verdict
		frame   func() []byte
	}{
		{"isolation_drop_unknown_tenant", c9, XDPDrop, func() []byte { return established }},
		{"isolation_drop_cross_tenant", c1, XDPDrop, func() []byte { return clientFrame(6, 7000, 81, packet.ACK) }},
		{"new_flow", c1, XDPRedirect, func() []byte { sport++; return clientFrame(17, sport|1, 53, 0) }},
		{"conntrack_hit", c1, XDPRedirect, func() []byte { return established }},
		{"reply", b1, XDPRedirect, func() []byte { return reply }},
	}
	for _, tc := range cases {
		b.Run(tc.name, func(b *testing.B) {
			var moat, base time.Duration
			err := env.gw.Do(func() error {
				for i := 0; i < b.N; i++ {
					f := tc.frame()
					v, d, err := TimedRun(dp.Program(), f, tc.ifindex)
					if err != nil {
						return err
					}
					if v != tc.want {
						return fmt.Errorf("verdict %s, want %s", v, tc.want)
					}
					moat += d
					if _, d, err = TimedRun(floor, f, tc.ifindex); err != nil {
						return err
					}
					base += d
				}
				return nil
			})
			if err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(float64(moat.Nanoseconds())/float64(b.N), "ns/pkt")
			b.ReportMetric(float64(base.Nanoseconds())/float64(b.N), "floor-ns/pkt")
			b.ReportMetric(float64(moat)/float64(base), "x-floor")
		})
	}
}

// BenchmarkReadCounters: what a status request or a Prometheus scrape costs.
func BenchmarkReadCounters(b *testing.B) {
	_, dp, _ := smallEnv(b, DefaultConfig())
	for b.Loop() {
		if _, err := dp.Counters(); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkReadMapState: what the writer reads from the maps before its first Apply (a
// restarted daemon's first pass), every array slot among it: 65536 for the backends
// alone. BenchmarkReadStatus: what `moat status` reads.
//
//	go test -run '^$' -bench 'ReadArray|ReadMapState|ReadStatus' ./dataplane/
func BenchmarkReadMapState(b *testing.B) {
	_, dp, _ := smallEnv(b, DefaultConfig())
	w := dp.Writer()
	for b.Loop() {
		if _, err := w.readMapState(); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkReadStatus(b *testing.B) {
	_, dp, _ := smallEnv(b, DefaultConfig())
	for b.Loop() {
		if _, err := ReadStatus(dp.Options()); err != nil {
			b.Fatal(err)
		}
	}
}
