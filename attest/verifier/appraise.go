package verifier

import (
	"bytes"
	"context"
	"crypto/ecdh"
	"crypto/hmac"
	"errors"
	"fmt"
	"io"
	"slices"
	"time"

	"github.com/seed4c/moat/attest"
	"github.com/seed4c/moat/attest/mlog"
	"github.com/seed4c/moat/attest/tpmwire"
)

// policy returns a subject's policy, refusing a missing or unusable one.
func (v *Verifier) policy(subject string) (*Policy, error) {
	p, err := v.cfg.Policies.Policy(subject)
	if err != nil {
		return nil, refuse(attest.ReasonPolicy, "%v", err)
	}
	if err := p.Validate(); err != nil {
		return nil, refuse(attest.ReasonPolicy, "%v", err)
	}
	return p, nil
}

// Unenroll forgets a subject: its enrollment record is deleted (so it may enroll again,
// with any TPM its policy accepts) and, if it stood admitted, an expired result evicts it.
func (v *Verifier) Unenroll(ctx context.Context, identity string) error {
	if err := v.cfg.Store.Delete(ctx, identity); err != nil {
		return fmt.Errorf("unenroll %s: %w", identity, err)
	}
	v.mu.Lock()
	s := v.subjects[identity]
	delete(v.subjects, identity)
	v.mu.Unlock()
	if s == nil {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.hasResult && s.last.Status == attest.StatusAffirming {
		now := v.clock.Now()
		v.record(s, attest.Result{Subject: identity, Status: attest.StatusExpired, Issued: now, Expires: now,
			Reasons: []string{attest.ReasonNotEnrolled + ": unenrolled by the operator"}})
	} else if s.timer != nil {
		s.timer.Stop()
	}
	v.log.Info("subject unenrolled", "subject", identity)
	return nil
}

// Challenge issues a nonce for one appraisal round of an enrolled subject, bound to the
// TLS client key that asked (tlsKey, DER SubjectPublicKeyInfo).
func (v *Verifier) Challenge(ctx context.Context, req *attest.ChallengeRequest, tlsKey []byte) (*attest.Challenge, error) {
	if err := validIdentity(req.Identity); err != nil {
		return nil, refuse(attest.ReasonMalformed, "challenge: %v", err)
	}
	if len(tlsKey) == 0 {
		return nil, refuse(attest.ReasonChannel, "challenge for %s: no TLS client key", req.Identity)
	}
	if _, err := v.loadSubject(ctx, req.Identity); err != nil {
		return nil, err
	}
	policy, err := v.policy(req.Identity)
	if err != nil {
		return nil, fmt.Errorf("challenge for %s: %w", req.Identity, err)
	}
	var nonce [nonceLen]byte
	if _, err := io.ReadFull(v.cfg.Rand, nonce[:]); err != nil {
		return nil, fmt.Errorf("challenge for %s: random nonce: %w", req.Identity, err)
	}
	now := v.clock.Now()
	if err := v.nonces.issue(now, nonce, channelOf(req.Identity, tlsKey)); err != nil {
		return nil, err
	}
	return &attest.Challenge{Version: attest.ProtocolVersion, Nonce: nonce[:], Expires: now.Add(v.cfg.NonceTTL), PCRs: policy.quotedPCRs()}, nil
}

// Appraise appraises one round of evidence that arrived over the TLS client key tlsKey
// (DER SubjectPublicKeyInfo), issues the result, publishes it and returns it.
//
// A submission that cannot be authenticated as the subject's (bad nonce, signature,
// binding, garbage) gets a refused result and a non-nil *Error: it leaves the subject's
// standing alone. Authenticated evidence gets an affirming or contraindicated result
// and a nil error.
func (v *Verifier) Appraise(ctx context.Context, ev *attest.Evidence, tlsKey []byte) (attest.Result, error) {
	now := v.clock.Now()
	s, auth, err := v.authenticate(ctx, ev, tlsKey, now)
	if err != nil {
		code := attest.ReasonMalformed
		var e *Error
		if errors.As(err, &e) {
			code = e.Code
		}
		r := attest.Result{Subject: ev.Identity, Status: attest.StatusRefused, Reasons: []string{code + ": " + errorDetail(err)}, Issued: now, Expires: now}
		v.pub.publish(r)
		v.log.Warn("evidence refused", "subject", ev.Identity, "reason", code, "error", err)
		return r, err
	}
	policy, err := v.policy(ev.Identity)
	if err != nil {
		// Authenticated, but the subject has no policy any more (removed by the
		// operator): it must not stay admitted.
		policy = &Policy{Name: "none"}
		return v.issue(s, ev, tlsKey, auth, policy, now, []string{attest.ReasonPolicy + ": " + err.Error()}), nil
	}
	return v.issue(s, ev, tlsKey, auth, policy, now, nil), nil
}

func errorDetail(err error) string {
	var e *Error
	if errors.As(err, &e) {
		return e.Err.Error()
	}
	return err.Error()
}

// authenticate runs the checks that tie the evidence to the subject's TPM, this
// round's nonce and this TLS channel. It returns the subject with its lock held when
// they pass.
func (v *Verifier) authenticate(ctx context.Context, ev *attest.Evidence, tlsKey []byte, now time.Time) (*subject, *tpmwire.Attestation, error) {
	if ev.Version != attest.ProtocolVersion {
		return nil, nil, refuse(attest.ReasonMalformed, "protocol version %d", ev.Version)
	}
	if err := validIdentity(ev.Identity); err != nil {
		return nil, nil, refuse(attest.ReasonMalformed, "%v", err)
	}
	if len(tlsKey) == 0 {
		return nil, nil, refuse(attest.ReasonChannel, "no TLS client key")
	}
	if len(ev.WireGuardKey) != 32 {
		return nil, nil, refuse(attest.ReasonMalformed, "WireGuard key is %d bytes, want 32", len(ev.WireGuardKey))
	}
	if len(ev.OverlayKey) != 0 {
		if _, err := ecdh.P256().NewPublicKey(ev.OverlayKey); err != nil {
			return nil, nil, refuse(attest.ReasonMalformed, "overlay key is not a P-256 point: %v", err)
		}
	}
	// The nonce first: it is single-use whatever follows, so nothing below can be
	// retried with the same nonce.
	if err := v.nonces.consume(now, ev.Nonce, channelOf(ev.Identity, tlsKey)); err != nil {
		return nil, nil, err
	}
	s, err := v.loadSubject(ctx, ev.Identity)
	if err != nil {
		return nil, nil, err
	}
	sig, err := tpmwire.ParseSignature(ev.Signature)
	if err != nil {
		return nil, nil, refuse(attest.ReasonMalformed, "quote signature: %v", err)
	}
	s.mu.Lock()
	ak := s.ak
	s.mu.Unlock()
	// Verify before parsing: only bytes the AK signed get decoded.
	if err := tpmwire.Verify(ak, ev.Quote, sig); err != nil {
		return nil, nil, refuse(attest.ReasonSignature, "quote is not signed by the AK enrolled for %s", ev.Identity)
	}
	a, err := tpmwire.Parse(ev.Quote)
	if err != nil {
		if errors.Is(err, tpmwire.ErrNotQuote) {
			return nil, nil, refuse(attest.ReasonNotAQuote, "%v", err)
		}
		return nil, nil, refuse(attest.ReasonMalformed, "quote: %v", err)
	}
	want := attest.QualifyingDataOverlay(ev.Nonce, ev.Identity, ev.WireGuardKey, tlsKey, ev.OverlayKey)
	if !hmac.Equal(a.ExtraData, want) {
		return nil, nil, refuse(attest.ReasonBinding, "quote's qualifying data is not H(nonce, identity, WireGuard key, TLS key, overlay key) of this submission: a key was substituted or the quote was relayed")
	}
	s.mu.Lock()
	return s, a, nil
}

// issue appraises authenticated evidence (s.mu held, released here), records and
// publishes the result. extra carries reasons found before the appraisal.
func (v *Verifier) issue(s *subject, ev *attest.Evidence, tlsKey []byte, a *tpmwire.Attestation, policy *Policy, now time.Time, extra []string) attest.Result {
	defer s.mu.Unlock()
	reasons := extra
	rebooted := false
	if extra == nil {
		reasons, rebooted = v.appraise(s, ev, a, policy)
	} else {
		reasons = append(reasons, counterReasons(&s.record, a)...)
	}
	r := attest.Result{
		Subject: ev.Identity, TrustLevel: s.record.TrustLevel, Reasons: reasons, Issued: now, Expires: now,
		Policy: policy.Name, WireGuardKey: slices.Clone(ev.WireGuardKey), OverlayKey: slices.Clone(ev.OverlayKey), TLSKeySHA256: keySHA256(tlsKey),
		ResetCount: a.ResetCount, RestartCount: a.RestartCount, Rebooted: rebooted,
	}
	if len(reasons) == 0 {
		r.Status, r.Expires = attest.StatusAffirming, now.Add(v.cfg.ResultTTL)
	} else {
		r.Status, r.TrustLevel = attest.StatusContraindicated, attest.TrustNone
	}
	v.advanceCounters(s, a, now)
	v.record(s, r)
	if r.Status == attest.StatusAffirming {
		v.log.Debug("evidence affirmed", "subject", r.Subject, "expires", r.Expires)
	} else {
		v.log.Warn("evidence contraindicated", "subject", r.Subject, "reasons", r.Reasons)
	}
	return r
}

// appraise checks authenticated evidence against the policy and the subject's TPM
// history; it returns the reasons to refuse (none: affirming) and whether a reboot was
// observed.
func (v *Verifier) appraise(s *subject, ev *attest.Evidence, a *tpmwire.Attestation, policy *Policy) (reasons []string, rebooted bool) {
	reasons = counterReasons(&s.record, a)
	rebooted = s.record.CountersSeen && a.ResetCount > s.record.ResetCount

	pcrs, err := a.SHA256PCRs()
	if err != nil {
		return append(reasons, attest.ReasonPCRBank+": "+err.Error()), rebooted
	}
	if want := policy.quotedPCRs(); !slices.Equal(pcrs, want) {
		return append(reasons, fmt.Sprintf("%s: quote covers PCRs %v, policy %s requires %v", attest.ReasonPCRSelection, pcrs, policy.Name, want)), rebooted
	}
	values, err := pcrValues(ev.PCRs, pcrs)
	if err != nil {
		return append(reasons, attest.ReasonPCRDigest+": "+err.Error()), rebooted
	}
	digest := tpmwire.PCRDigest(values)
	if !bytes.Equal(digest[:], a.PCRDigest) {
		return append(reasons, attest.ReasonPCRDigest+": reported PCR values do not hash to the quoted digest"), rebooted
	}
	for i, pcr := range pcrs {
		if pcr == policy.MeasurementPCR {
			reasons = append(reasons, appraiseLog(ev.Log, policy, values[i])...)
		} else if !slices.Contains(policy.GoldenPCRs[pcr], [32]byte(values[i])) {
			reasons = append(reasons, fmt.Sprintf("%s: PCR %d = %x is not a golden value of policy %s", attest.ReasonGoldenPCR, pcr, values[i], policy.Name))
		}
	}
	return reasons, rebooted
}

// MaxUnorderlyClockRegression is how far back a TPM's clock may legally be after a
// reboot that was not an orderly shutdown: the TPM saves its clock to NV at least every
// 2^22 ms (TPM 2.0 Part 1, "Clock"; NV_CLOCK_UPDATE_INTERVAL in the reference
// implementation) and restores the saved value after a crash or power loss, reporting
// safe = NO.
const MaxUnorderlyClockRegression = 1 << 22

// counterReasons checks that the TPM's counters did not go backwards since the last
// authenticated evidence:
//   - resetCount never decreases: only a TPM whose state was restored from an older copy
//     (a VM or swtpm snapshot) reports a smaller one;
//   - within one boot, restartCount never decreases and the clock never goes back: a
//     VM restored from a memory snapshot, vTPM included, would replay a running
//     system's state, and its clock is what gives it away;
//   - across a reboot (resetCount up) restartCount starts over, and the clock may be
//     behind only as the TPM specification allows after an unorderly shutdown: the
//     quote says safe = NO, and by less than MaxUnorderlyClockRegression.
func counterReasons(rec *Record, a *tpmwire.Attestation) []string {
	if !rec.CountersSeen {
		return nil
	}
	var reasons []string
	rebooted := a.ResetCount > rec.ResetCount
	switch {
	case a.ResetCount < rec.ResetCount:
		reasons = append(reasons, fmt.Sprintf("%s: TPM resetCount went from %d back to %d: TPM state rolled back", attest.ReasonResetCount, rec.ResetCount, a.ResetCount))
	case !rebooted && a.RestartCount < rec.RestartCount:
		reasons = append(reasons, fmt.Sprintf("%s: TPM restartCount went from %d back to %d within one boot", attest.ReasonRestartCount, rec.RestartCount, a.RestartCount))
	}
	if a.Clock < rec.Clock {
		back := rec.Clock - a.Clock
		legal := rebooted && !a.Safe && back < MaxUnorderlyClockRegression
		if !legal {
			reasons = append(reasons, fmt.Sprintf("%s: TPM clock went from %d ms back to %d ms (reboot %t, safe %t)", attest.ReasonClock, rec.Clock, a.Clock, rebooted, a.Safe))
		}
	}
	return reasons
}

// pcrValues matches the reported PCR values to the quoted selection: exactly those
// PCRs, ascending, 32 bytes each.
func pcrValues(reported []attest.PCRValue, pcrs []int) ([][]byte, error) {
	if len(reported) != len(pcrs) {
		return nil, fmt.Errorf("%d PCR values reported for %d quoted PCRs", len(reported), len(pcrs))
	}
	values := make([][]byte, len(pcrs))
	for i, p := range reported {
		if p.Index != pcrs[i] || len(p.Digest) != 32 {
			return nil, fmt.Errorf("reported value %d is PCR %d (%d bytes), quoted PCR %d", i, p.Index, len(p.Digest), pcrs[i])
		}
		values[i] = p.Digest
	}
	return values, nil
}

// appraiseLog checks that the log replays to the quoted measurement PCR and that every
// measurement is a reference value, and every referenced file was measured.
func appraiseLog(encoded []byte, policy *Policy, pcrValue []byte) []string {
	l, err := mlog.Decode(encoded)
	if err != nil {
		return []string{attest.ReasonMalformed + ": measurement log: " + err.Error()}
	}
	if l.PCR != policy.MeasurementPCR {
		return []string{fmt.Sprintf("%s: log is for PCR %d, policy %s measures into PCR %d", attest.ReasonLogReplay, l.PCR, policy.Name, policy.MeasurementPCR)}
	}
	if replay := l.Replay(); !bytes.Equal(replay[:], pcrValue) {
		return []string{fmt.Sprintf("%s: %d entries replay to %x, PCR %d is %x", attest.ReasonLogReplay, len(l.Entries), replay, l.PCR, pcrValue)}
	}
	var reasons []string
	seen := map[string]bool{}
	for i, e := range l.Entries {
		seen[e.Path] = true
		allowed, known := policy.References[e.Path]
		switch {
		case !known:
			reasons = append(reasons, fmt.Sprintf("%s: entry %d measures %s, which policy %s does not know", attest.ReasonReference, i, e.Path, policy.Name))
		case e.Kind == mlog.KindFileMissing:
			reasons = append(reasons, fmt.Sprintf("%s: entry %d: %s was missing or unreadable", attest.ReasonMissingMeasurement, i, e.Path))
		case !slices.Contains(allowed, e.Digest):
			reasons = append(reasons, fmt.Sprintf("%s: entry %d: %s has sha256 %x, not a reference value", attest.ReasonReference, i, e.Path, e.Digest))
		}
	}
	var never []string
	for path := range policy.References {
		if !seen[path] {
			never = append(never, path)
		}
	}
	slices.Sort(never)
	for _, path := range never {
		reasons = append(reasons, fmt.Sprintf("%s: %s was never measured", attest.ReasonMissingMeasurement, path))
	}
	return reasons
}

// advanceCounters raises the subject's counter baseline to the evidence's (never
// lowers it) and persists it at reboots and every PersistInterval.
func (v *Verifier) advanceCounters(s *subject, a *tpmwire.Attestation, now time.Time) {
	rec := &s.record
	bootChanged := !rec.CountersSeen || a.ResetCount != rec.ResetCount || a.RestartCount != rec.RestartCount
	switch {
	case !rec.CountersSeen || a.ResetCount > rec.ResetCount:
		rec.ResetCount, rec.RestartCount = a.ResetCount, a.RestartCount
	case a.ResetCount == rec.ResetCount && a.RestartCount > rec.RestartCount:
		rec.RestartCount = a.RestartCount
	}
	rec.Clock = max(rec.Clock, a.Clock)
	rec.CountersSeen = true
	if bootChanged || now.Sub(s.persistedAt) >= v.cfg.PersistInterval {
		// The store gets a copy; a failure only weakens rollback detection across a
		// verifier restart, so it is logged, not fatal to the round.
		if err := v.cfg.Store.Put(context.Background(), *rec); err != nil {
			v.log.Error("persist TPM counters", "subject", rec.Identity, "error", err)
		} else {
			s.persistedAt = now
		}
	}
}

// record makes r the subject's standing (s.mu held): it replaces the expiry timer and
// publishes r.
func (v *Verifier) record(s *subject, r attest.Result) {
	s.generation++
	s.last, s.hasResult = r, true
	if s.timer != nil {
		s.timer.Stop()
		s.timer = nil
	}
	if r.Status == attest.StatusAffirming {
		gen := s.generation
		s.timer = v.clock.AfterFunc(r.Expires.Sub(r.Issued), func() { v.expire(s, gen) })
	}
	v.pub.publish(r)
}

// expire runs when an affirming result's lifetime ends: unless a newer result replaced
// it, the subject's standing becomes expired, which evicts it.
func (v *Verifier) expire(s *subject, gen uint64) {
	v.mu.RLock()
	closed := v.closed
	v.mu.RUnlock()
	if closed {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.generation != gen {
		return
	}
	now := v.clock.Now()
	lastIssued := s.last.Issued
	r := attest.Result{
		Subject: s.record.Identity, Status: attest.StatusExpired, TrustLevel: attest.TrustNone,
		Reasons: []string{fmt.Sprintf("%s: no fresh evidence since %s", attest.ReasonExpired, lastIssued.Format(time.RFC3339Nano))},
		Issued:  now, Expires: now,
	}
	s.timer = nil
	v.record(s, r)
	v.log.Warn("attestation expired", "subject", r.Subject, "last_issued", lastIssued)
}
