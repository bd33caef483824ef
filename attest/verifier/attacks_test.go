package verifier_test

import (
	"bytes"
	"context"
	"crypto/ecdh"
	"crypto/rand"
	"crypto/sha256"
	"os"
	"testing"
	"time"

	"github.com/seed4c/moat/attest"
	"github.com/seed4c/moat/attest/agent"
	"github.com/seed4c/moat/attest/mlog"
	"github.com/seed4c/moat/attest/verifier"
)

func TestGoodPathFake(t *testing.T) {
	r := newRig(t, verifier.Config{})
	h := newHost(t, "tenant-a/web-1", newFake(t))
	r.add(t, h)
	res := mustAffirm(t)(h.attest(t, r.v))
	if res.TrustLevel != attest.TrustAllowListed || !bytes.Equal(res.WireGuardKey, h.wg) {
		t.Fatalf("result claims wrong: %+v", res)
	}
	if want := sha256.Sum256(h.tls); !bytes.Equal(res.TLSKeySHA256, want[:]) {
		t.Fatal("result does not name the TLS key that carried the evidence")
	}
	if got := r.rec.waitFor(t, h.id, attest.StatusAffirming); !got.Expires.Equal(res.Expires) {
		t.Fatalf("subscriber saw %+v, Appraise returned %+v", got, res)
	}
	if st, ok := r.v.Standing(h.id); !ok || !st.Admits(r.clock.Now()) {
		t.Fatalf("standing %+v does not admit", st)
	}
}

func TestReplayedEvidenceRefused(t *testing.T) {
	r := newRig(t, verifier.Config{})
	h := newHost(t, "web-1", newFake(t))
	r.add(t, h)
	ev := h.evidence(t, r.v)
	mustAffirm(t)(r.v.Appraise(context.Background(), ev, h.tls))
	res, err := r.v.Appraise(context.Background(), ev, h.tls)
	mustRefuse(t, res, err, attest.ReasonNonceReplayed)
	// The replay changed nothing: the subject is still admitted.
	if st, _ := r.v.Standing(h.id); st.Status != attest.StatusAffirming {
		t.Fatalf("a refused replay changed the standing to %s", st.Status)
	}
	if s := r.v.Stats(); s.Affirming != 1 || s.Refused != 1 {
		t.Fatalf("stats %+v, want one affirming and one refused", s)
	}
}

func TestExpiredNonceRefused(t *testing.T) {
	r := newRig(t, verifier.Config{NonceTTL: 5 * time.Second})
	h := newHost(t, "web-1", newFake(t))
	r.add(t, h)
	ev := h.evidence(t, r.v)
	r.clock.Advance(5 * time.Second)
	res, err := r.v.Appraise(context.Background(), ev, h.tls)
	mustRefuse(t, res, err, attest.ReasonNonceExpired)
}

func TestNonceIssuedForAnotherBackendRefused(t *testing.T) {
	r := newRig(t, verifier.Config{})
	a := newHost(t, "web-a", newFake(t))
	b := newHost(t, "web-b", newFake(t))
	r.add(t, a)
	r.add(t, b)
	// b's nonce, requested over a's channel (an attacker holding a's key asks in b's
	// name), then used for a's evidence.
	ch, err := r.v.Challenge(context.Background(), &attest.ChallengeRequest{Version: 1, Identity: b.id}, a.tls)
	if err != nil {
		t.Fatal(err)
	}
	ev, err := collect(a, ch)
	if err != nil {
		t.Fatal(err)
	}
	res, err := r.v.Appraise(context.Background(), ev, a.tls)
	mustRefuse(t, res, err, attest.ReasonNonceSubject)
}

func TestNonceIssuedToAnotherTLSKeyRefused(t *testing.T) {
	r := newRig(t, verifier.Config{})
	h := newHost(t, "web-1", newFake(t))
	r.add(t, h)
	ev := h.evidence(t, r.v)
	res, err := r.v.Appraise(context.Background(), ev, newTLSKey(t))
	mustRefuse(t, res, err, attest.ReasonNonceChannel)
}

func TestUnknownNonceRefused(t *testing.T) {
	r := newRig(t, verifier.Config{})
	h := newHost(t, "web-1", newFake(t))
	r.add(t, h)
	ev, err := collect(h, &attest.Challenge{Nonce: randomBytes(t, 32), PCRs: []int{attest.DefaultMeasurementPCR}})
	if err != nil {
		t.Fatal(err)
	}
	res, err := r.v.Appraise(context.Background(), ev, h.tls)
	mustRefuse(t, res, err, attest.ReasonNonceUnknown)
}

func TestTamperedApplicationBinaryContraindicated(t *testing.T) {
	r := newRig(t, verifier.Config{})
	h := newHost(t, "web-1", newFake(t))
	r.add(t, h)
	mustAffirm(t)(h.attest(t, r.v))
	if err := os.WriteFile(h.files[0], []byte("application binary v1 with a backdoor"), 0o600); err != nil {
		t.Fatal(err)
	}
	if n, err := h.measurer.Measure(); err != nil || n != 1 {
		t.Fatalf("measure after tampering: %d entries, %v", n, err)
	}
	res, err := h.attest(t, r.v)
	mustContraindicate(t, res, err, attest.ReasonReference)
	r.rec.waitFor(t, h.id, attest.StatusContraindicated)
	// Restoring the file does not restore trust: the tampered measurement stays in the
	// PCR (and so in the log) until the next reboot.
	if err := os.WriteFile(h.files[0], []byte(appFiles["app"]), 0o600); err != nil {
		t.Fatal(err)
	}
	h.measurer.Measure()
	res, err = h.attest(t, r.v)
	mustContraindicate(t, res, err, attest.ReasonReference)
}

func TestMissingFileContraindicated(t *testing.T) {
	r := newRig(t, verifier.Config{})
	h := newHost(t, "web-1", newFake(t))
	r.add(t, h)
	os.Remove(h.files[1])
	h.measurer.Measure()
	res, err := h.attest(t, r.v)
	mustContraindicate(t, res, err, attest.ReasonMissingMeasurement)
}

func TestLogThatDoesNotReplayContraindicated(t *testing.T) {
	r := newRig(t, verifier.Config{})
	h := newHost(t, "web-1", newFake(t))
	r.add(t, h)
	// The binary is tampered and measured; the agent (or whoever controls the host)
	// then presents a log that claims the good digest. The PCR does not lie.
	os.WriteFile(h.files[0], []byte("trojan"), 0o600)
	h.measurer.Measure()
	ev := h.evidence(t, r.v)
	l, err := mlog.Decode(ev.Log)
	if err != nil {
		t.Fatal(err)
	}
	l.Entries = l.Entries[:len(l.Entries)-1] // drop the incriminating entry
	if ev.Log, err = l.MarshalBinary(); err != nil {
		t.Fatal(err)
	}
	res, err := r.v.Appraise(context.Background(), ev, h.tls)
	mustContraindicate(t, res, err, attest.ReasonLogReplay)

	ev = h.evidence(t, r.v)
	l, _ = mlog.Decode(ev.Log)
	l.Entries[len(l.Entries)-1].Digest = sha256.Sum256([]byte(appFiles["app"])) // rewrite it as good
	ev.Log, _ = l.MarshalBinary()
	res, err = r.v.Appraise(context.Background(), ev, h.tls)
	mustContraindicate(t, res, err, attest.ReasonLogReplay)
}

func TestReportedPCRValuesNotQuotedContraindicated(t *testing.T) {
	r := newRig(t, verifier.Config{})
	h := newHost(t, "web-1", newFake(t))
	r.add(t, h)
	ev := h.evidence(t, r.v)
	ev.PCRs[0].Digest = bytes.Repeat([]byte{1}, 32)
	res, err := r.v.Appraise(context.Background(), ev, h.tls)
	mustContraindicate(t, res, err, attest.ReasonPCRDigest)
}

func TestQuoteSignedByAnotherKeyRefused(t *testing.T) {
	r := newRig(t, verifier.Config{})
	h := newHost(t, "web-1", newFake(t))
	r.add(t, h)
	// Same nonce, identity and keys, but quoted by another TPM: one the attacker
	// controls, with whatever PCR values it likes.
	ch, err := r.v.Challenge(context.Background(), &attest.ChallengeRequest{Version: 1, Identity: h.id}, h.tls)
	if err != nil {
		t.Fatal(err)
	}
	forger := newHost(t, h.id, newFake(t))
	forger.tls, forger.wg = h.tls, h.wg
	ev, err := collect(forger, ch)
	if err != nil {
		t.Fatal(err)
	}
	res, err := r.v.Appraise(context.Background(), ev, h.tls)
	mustRefuse(t, res, err, attest.ReasonSignature)
	// A bit flipped in a genuine quote breaks the signature as well.
	ev = h.evidence(t, r.v)
	ev.Quote[len(ev.Quote)-1] ^= 1
	res, err = r.v.Appraise(context.Background(), ev, h.tls)
	mustRefuse(t, res, err, attest.ReasonSignature)
}

func TestTLSKeyNotTheQuotedOneRefused(t *testing.T) {
	r := newRig(t, verifier.Config{})
	h := newHost(t, "web-1", newFake(t))
	r.add(t, h)
	// A relay terminates the agent's TLS and talks to the verifier with its own key:
	// it gets a nonce on its channel and has the agent quote it. The agent binds its
	// own TLS key; the verifier sees the relay's.
	relay := newTLSKey(t)
	ch, err := r.v.Challenge(context.Background(), &attest.ChallengeRequest{Version: 1, Identity: h.id}, relay)
	if err != nil {
		t.Fatal(err)
	}
	ev, err := collect(h, ch)
	if err != nil {
		t.Fatal(err)
	}
	res, err := r.v.Appraise(context.Background(), ev, relay)
	mustRefuse(t, res, err, attest.ReasonBinding)
}

func TestWireGuardKeyNotTheQuotedOneRefused(t *testing.T) {
	r := newRig(t, verifier.Config{})
	h := newHost(t, "web-1", newFake(t))
	r.add(t, h)
	ev := h.evidence(t, r.v)
	ev.WireGuardKey = randomBytes(t, 32) // an attacker's overlay key, to be configured as this backend's
	res, err := r.v.Appraise(context.Background(), ev, h.tls)
	mustRefuse(t, res, err, attest.ReasonBinding)
}

// The overlay derives each peer pair's pre-shared key from an ECDH with the peer's
// SE key: an attacker who could have the verifier vouch for a P-256 key of its own
// choosing would share that key with every gateway. Only the quoted key is vouched for;
// swapping it, adding one to evidence that bound none, or stripping the bound one is
// refused.
func TestOverlayECDHKeyNotTheQuotedOneRefused(t *testing.T) {
	r := newRig(t, verifier.Config{})
	se := newFake(t)
	h := newHost(t, "web-1", se)
	r.add(t, h)
	own, err := se.ECDHPublicKey()
	if err != nil {
		t.Fatal(err)
	}
	attacker, err := ecdh.P256().GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	overlayEvidence := func(bound []byte) *attest.Evidence {
		ch, err := r.v.Challenge(context.Background(), &attest.ChallengeRequest{Version: 1, Identity: h.id}, h.tls)
		if err != nil {
			t.Fatal(err)
		}
		ev, err := agent.CollectOverlay(h.se, ch, h.id, h.wg, h.tls, bound, h.measurer.Log())
		if err != nil {
			t.Fatal(err)
		}
		return ev
	}
	for name, tamper := range map[string]func(*attest.Evidence){
		"swapped for the attacker's": func(ev *attest.Evidence) { ev.OverlayKey = attacker.PublicKey().Bytes() },
		"stripped":                   func(ev *attest.Evidence) { ev.OverlayKey = nil },
	} {
		ev := overlayEvidence(own.Bytes())
		tamper(ev)
		res, err := r.v.Appraise(context.Background(), ev, h.tls)
		mustRefuse(t, res, err, attest.ReasonBinding)
		t.Logf("overlay key %s: refused", name)
	}
	ev := overlayEvidence(nil)
	ev.OverlayKey = attacker.PublicKey().Bytes() // added to evidence that bound none
	res, err := r.v.Appraise(context.Background(), ev, h.tls)
	mustRefuse(t, res, err, attest.ReasonBinding)
	ev = overlayEvidence(nil)
	ev.OverlayKey = append(own.Bytes()[:64:64], 0) // not a point on the curve
	res, err = r.v.Appraise(context.Background(), ev, h.tls)
	mustRefuse(t, res, err, attest.ReasonMalformed)

	res = mustAffirm(t)(r.v.Appraise(context.Background(), overlayEvidence(own.Bytes()), h.tls))
	if !bytes.Equal(res.OverlayKey, own.Bytes()) {
		t.Fatalf("affirming result vouches for overlay key %x, the SE's is %x", res.OverlayKey, own.Bytes())
	}
}

func TestResetCountGoingBackwardsContraindicated(t *testing.T) {
	r := newRig(t, verifier.Config{})
	se := newFake(t)
	se.SetCounters(7, 0)
	h := newHost(t, "web-1", se)
	r.add(t, h)
	mustAffirm(t)(h.attest(t, r.v))
	se.SetCounters(6, 0) // the TPM's state was restored from an older snapshot
	res, err := h.attest(t, r.v)
	mustContraindicate(t, res, err, attest.ReasonResetCount)
	// And the baseline is not lowered by the rolled-back evidence.
	se.SetCounters(6, 5)
	res, err = h.attest(t, r.v)
	mustContraindicate(t, res, err, attest.ReasonResetCount)
}

func TestRestartCountGoingBackwardsContraindicated(t *testing.T) {
	r := newRig(t, verifier.Config{})
	se := newFake(t)
	se.SetCounters(3, 2)
	h := newHost(t, "web-1", se)
	r.add(t, h)
	mustAffirm(t)(h.attest(t, r.v))
	se.SetCounters(3, 1)
	res, err := h.attest(t, r.v)
	mustContraindicate(t, res, err, attest.ReasonRestartCount)
}

func TestClockGoingBackwardsContraindicated(t *testing.T) {
	r := newRig(t, verifier.Config{})
	se := newFake(t)
	h := newHost(t, "web-1", se)
	r.add(t, h)
	mustAffirm(t)(h.attest(t, r.v))
	se.ShiftClock(-time.Hour)
	res, err := h.attest(t, r.v)
	mustContraindicate(t, res, err, attest.ReasonClock)
}

// A reboot is legal, but only a full appraisal of the new boot passes: the old log
// does not replay to the fresh PCRs, a clock that went back across the reboot is
// still refused, and the result says a reboot was seen.
func TestRebootIsLegalButNeedsFullAppraisal(t *testing.T) {
	r := newRig(t, verifier.Config{})
	se := newFake(t)
	h := newHost(t, "web-1", se)
	r.add(t, h)
	mustAffirm(t)(h.attest(t, r.v))
	se.Reboot()
	res, err := h.attest(t, r.v) // the pre-reboot log, against a reset PCR
	mustContraindicate(t, res, err, attest.ReasonLogReplay)
	if !res.Rebooted {
		t.Fatal("result does not report the reboot")
	}
	h.remeasure(t) // the agent starts over after the reboot
	res = mustAffirm(t)(h.attest(t, r.v))
	if res.ResetCount != 1 {
		t.Fatalf("resetCount %d, want 1", res.ResetCount)
	}
	se.Reboot()
	se.ShiftClock(-time.Hour)
	h.remeasure(t)
	res, err = h.attest(t, r.v)
	mustContraindicate(t, res, err, attest.ReasonClock)
}

// After a crash the TPM restores its clock from NV, up to 2^22 ms back, and says so
// (safe = NO): legal. The same regression without a reboot, or with the TPM claiming
// its clock is safe, or further back than the TPM ever lets it lag, is not.
func TestClockRegressionAfterCrashRebootIsLegalOnlyWithinTPMRules(t *testing.T) {
	r := newRig(t, verifier.Config{})
	se := newFake(t)
	h := newHost(t, "web-1", se)
	r.add(t, h)
	mustAffirm(t)(h.attest(t, r.v))
	se.CrashReboot(10 * time.Minute)
	h.remeasure(t)
	mustAffirm(t)(h.attest(t, r.v))

	se.CrashReboot(2 * time.Hour) // beyond the TPM's NV clock update interval
	h.remeasure(t)
	res, err := h.attest(t, r.v)
	mustContraindicate(t, res, err, attest.ReasonClock)
}

func TestGoldenPCRMismatchContraindicated(t *testing.T) {
	r := newRig(t, verifier.Config{})
	h := newHost(t, "web-1", newFake(t))
	p := h.policy(t)
	p.PCRs = []int{0, attest.DefaultMeasurementPCR}
	p.GoldenPCRs = map[int][][32]byte{0: {sha256.Sum256([]byte("expected firmware"))}}
	r.pol[h.id] = p
	h.enroll(t, r.v)
	res, err := h.attest(t, r.v) // PCR 0 is zero, not the golden value
	mustContraindicate(t, res, err, attest.ReasonGoldenPCR)
}

func TestResultExpiresAndSubscriberSeesIt(t *testing.T) {
	r := newRig(t, verifier.Config{ResultTTL: 3 * time.Second})
	h := newHost(t, "web-1", newFake(t))
	r.add(t, h)
	good := mustAffirm(t)(h.attest(t, r.v))
	r.clock.Advance(2 * time.Second)
	mustAffirm(t)(h.attest(t, r.v)) // renewed: the first result's expiry must not fire
	r.clock.Advance(2 * time.Second)
	if st, _ := r.v.Standing(h.id); st.Status != attest.StatusAffirming {
		t.Fatalf("renewed result expired at the first result's expiry (%s)", good.Expires)
	}
	r.clock.Advance(time.Second)
	exp := r.rec.waitFor(t, h.id, attest.StatusExpired)
	if !exp.HasReason(attest.ReasonExpired) || !exp.Evicts() {
		t.Fatalf("expiry result %+v", exp)
	}
}

func TestUnauthenticatedGarbageDoesNotEvict(t *testing.T) {
	r := newRig(t, verifier.Config{})
	h := newHost(t, "web-1", newFake(t))
	r.add(t, h)
	mustAffirm(t)(h.attest(t, r.v))
	for _, ev := range []*attest.Evidence{
		{Version: 1, Identity: h.id},
		{Version: 1, Identity: h.id, WireGuardKey: h.wg, Nonce: randomBytes(t, 32)},
		{Version: 2, Identity: h.id},
	} {
		res, err := r.v.Appraise(context.Background(), ev, newTLSKey(t))
		if err == nil || res.Status != attest.StatusRefused {
			t.Fatalf("garbage got %s (%v)", res.Status, err)
		}
	}
	if st, _ := r.v.Standing(h.id); !st.Admits(r.clock.Now()) {
		t.Fatalf("garbage from a stranger evicted the subject: %+v", st)
	}
}

// collect answers a challenge as host h's agent would.
func collect(h *host, ch *attest.Challenge) (*attest.Evidence, error) {
	return agentCollect(h, ch)
}
