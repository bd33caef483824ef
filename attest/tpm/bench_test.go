package tpm

import (
	"crypto/sha256"
	"testing"

	"github.com/seed4c/moat/attest"
	"github.com/seed4c/moat/attest/internal/swtpmtest"
)

// benchQuote measures one TPM2_Quote of the measurement PCR with 32 bytes of
// qualifying data, the agent's per-round TPM cost (the AK is created before timing).
func benchQuote(b *testing.B, se *SE) {
	qd := sha256.Sum256([]byte("nonce"))
	if _, err := se.Quote([]int{attest.DefaultMeasurementPCR}, qd[:]); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if _, err := se.Quote([]int{attest.DefaultMeasurementPCR}, qd[:]); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N)/1000, "ms/quote")
}

// Run: go test -run '^$' -bench Quote ./attest/tpm
func BenchmarkQuoteSimulator(b *testing.B) {
	se, err := OpenSimulator(EKECC)
	if err != nil {
		b.Fatal(err)
	}
	defer se.Close()
	benchQuote(b, se)
}

func BenchmarkQuoteSwtpm(b *testing.B) {
	sw := swtpmtest.Start(b)
	se, err := OpenSwtpm(sw.Addr, EKECC)
	if err != nil {
		b.Fatal(err)
	}
	defer se.Close()
	benchQuote(b, se)
}
