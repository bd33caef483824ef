package verifier_test

import (
	"bytes"
	"context"
	"log/slog"
	"testing"

	"github.com/seed4c/moat/attest"
	"github.com/seed4c/moat/attest/verifier"
)

// FuzzAppraise replaces parts of genuine, fresh evidence with fuzzed bytes: the quote,
// its signature, the measurement log, a PCR value. No input may panic the verifier,
// and none may be affirmed unless it is the genuine evidence.
func FuzzAppraise(f *testing.F) {
	f.Add([]byte{}, []byte{}, []byte{}, []byte{}, uint8(0))
	f.Add([]byte("MOATMLOG\x01\x0f\x00\x00\x00\x00"), []byte{0, 0x14, 0, 0x0b, 0, 0}, []byte{0xff, 0x54, 0x43, 0x47}, make([]byte, 32), uint8(15))
	// One verifier and host for the whole fuzz run (set up on f, so they live as long).
	pol := verifier.Policies{}
	v, err := verifier.New(verifier.Config{Policies: pol, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		f.Fatal(err)
	}
	h := newHost(f, "web-1", newFakeB(f))
	pol[h.id] = h.policy(f)
	if _, err := agentEnroll(h, v); err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, log, sig, quote, pcr []byte, mode uint8) {
		genuine := h.evidence(t, v)
		ev := *genuine
		ev.PCRs = append([]attest.PCRValue(nil), genuine.PCRs...)
		if mode&1 != 0 {
			ev.Log = log
		}
		if mode&2 != 0 {
			ev.Signature = sig
		}
		if mode&4 != 0 {
			ev.Quote = quote
		}
		if mode&8 != 0 {
			ev.PCRs[0].Digest = pcr
		}
		res, err := v.Appraise(context.Background(), &ev, h.tls)
		if res.Status == attest.StatusAffirming {
			if err != nil || !bytes.Equal(ev.Log, genuine.Log) || !bytes.Equal(ev.Quote, genuine.Quote) ||
				!bytes.Equal(ev.Signature, genuine.Signature) || !bytes.Equal(ev.PCRs[0].Digest, genuine.PCRs[0].Digest) {
				t.Fatalf("altered evidence affirmed (mode %d)", mode)
			}
		}
	})
}

// FuzzEnroll feeds arbitrary EK and AK public areas and certificates to enrollment:
// no panic, and nothing but a well-formed restricted AK gets a credential.
func FuzzEnroll(f *testing.F) {
	se := newFakeB(f)
	ek, _ := se.EndorsementKey()
	ak, _ := se.AttestationKey()
	f.Add(ek.Public, ak.Public, []byte{})
	f.Add(ak.Public, ek.Public, []byte{0x30, 0x03, 0x02, 0x01, 0x00})
	pol := verifier.Policies{"web-1": {Name: "p", MeasurementPCR: attest.DefaultMeasurementPCR,
		References: map[string][][32]byte{"/x": {{}}}, AllowedEKs: nil}}
	v, err := verifier.New(verifier.Config{Policies: pol, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, ekPub, akPub, cert []byte) {
		_, err := v.Enroll(context.Background(), &attest.EnrollRequest{Version: 1, Identity: "web-1", EKPublic: ekPub, AKPublic: akPub, EKCertificate: cert}, []byte("tls"))
		if err == nil {
			t.Fatal("enrollment accepted an EK that is neither certified nor allow-listed")
		}
	})
}
