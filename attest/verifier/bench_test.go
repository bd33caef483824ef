package verifier_test

import (
	"context"
	"fmt"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/seed4c/moat/attest"
	"github.com/seed4c/moat/attest/verifier"
)

// benchHosts enrolls n fake-SE hosts with a verifier on the real clock and returns
// them; the fake emits byte-identical TPM structures (conformance suite), so the
// verifier's work per evidence is what it is for a real TPM's.
func benchHosts(b *testing.B, n int, sub verifier.Subscriber, resultTTL time.Duration) (*verifier.Verifier, []*host) {
	pol := verifier.Policies{}
	v, err := verifier.New(verifier.Config{
		Policies: pol, NonceTTL: time.Hour, ResultTTL: resultTTL, Subscriber: sub,
		MaxNonces: 1 << 22, MaxNoncesPerChannel: 1 << 22, Logger: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { v.Close() })
	hosts := make([]*host, n)
	for i := range hosts {
		h := newHost(b, fmt.Sprintf("tenant-%d/web", i), newFakeB(b))
		pol[h.id] = h.policy(b)
		if _, err := agentEnroll(h, v); err != nil {
			b.Fatal(err)
		}
		hosts[i] = h
	}
	return v, hosts
}

// evidences pre-collects count rounds of evidence, round-robin over the hosts, so the
// timed loop measures the verifier alone.
func evidences(b *testing.B, v *verifier.Verifier, hosts []*host, count int) []*attest.Evidence {
	out := make([]*attest.Evidence, count)
	for i := range out {
		h := hosts[i%len(hosts)]
		ch, err := v.Challenge(context.Background(), &attest.ChallengeRequest{Version: 1, Identity: h.id}, h.tls)
		if err != nil {
			b.Fatal(err)
		}
		if out[i], err = agentCollect(h, ch); err != nil {
			b.Fatal(err)
		}
	}
	return out
}

// BenchmarkAppraise measures full appraisals (nonce, signature, quote decoding,
// binding, counters, PCR digest, log decoding and replay, reference values, result,
// expiry timer, publication) on one goroutine, over 32 subjects.
// Run: go test -run '^$' -bench Appraise -cpu 1 -benchtime 20000x ./attest/verifier
func BenchmarkAppraise(b *testing.B) {
	v, hosts := benchHosts(b, 32, nil, time.Minute)
	evs := evidences(b, v, hosts, b.N)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		h := hosts[i%len(hosts)]
		r, err := v.Appraise(context.Background(), evs[i], h.tls)
		if err != nil || r.Status != attest.StatusAffirming {
			b.Fatalf("appraisal %d: %s %v %v", i, r.Status, r.Reasons, err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "verifications/s")
}

// BenchmarkAppraiseParallel is BenchmarkAppraise on every CPU the benchmark gets.
func BenchmarkAppraiseParallel(b *testing.B) {
	v, hosts := benchHosts(b, 32, nil, time.Minute)
	evs := evidences(b, v, hosts, b.N)
	var next atomic.Int64
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			i := int(next.Add(1) - 1)
			h := hosts[i%len(hosts)]
			if _, err := v.Appraise(context.Background(), evs[i], h.tls); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "verifications/s")
}

// BenchmarkExpiryNotification measures how late the subscriber learns that a result
// expired: the time from the result's Expires to the Notify call. This is the
// verifier's share of the gateway's failure-to-eviction budget.
// Run: go test -run '^$' -bench ExpiryNotification -benchtime 100x ./attest/verifier
func BenchmarkExpiryNotification(b *testing.B) {
	expired := make(chan time.Time, 1)
	sub := verifier.SubscriberFunc(func(r attest.Result) {
		if r.Status == attest.StatusExpired {
			expired <- time.Now()
		}
	})
	const ttl = 5 * time.Millisecond
	v, hosts := benchHosts(b, 1, sub, ttl)
	var late time.Duration
	var worst time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		ev := evidences(b, v, hosts, 1)[0]
		b.StartTimer()
		r, err := v.Appraise(context.Background(), ev, hosts[0].tls)
		if err != nil {
			b.Fatal(err)
		}
		d := (<-expired).Sub(r.Expires)
		late += d
		worst = max(worst, d)
	}
	b.ReportMetric(float64(late.Microseconds())/float64(b.N), "µs-late/expiry")
	b.ReportMetric(float64(worst.Microseconds()), "µs-late-worst")
}
