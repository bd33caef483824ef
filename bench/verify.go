package bench

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/seed4c/moat/attest"
	"github.com/seed4c/moat/attest/agent"
	"github.com/seed4c/moat/attest/fakese"
	"github.com/seed4c/moat/attest/mlog"
	"github.com/seed4c/moat/attest/tpmwire"
	"github.com/seed4c/moat/attest/verifier"
)

const (
	// verifySubjects is how many enrolled hosts the evidences come from, round-robin:
	// enough that the verifier looks up and updates several subjects' state, as a
	// gateway with several backends does, without the set-up (an RSA-2048 AK per fake
	// SE) dominating the phase.
	verifySubjects = 8
	// verifyCalibration is how many appraisals estimate the verifier's rate before the
	// first window (and warm it up), so that the evidence a window needs can be
	// collected before the window starts.
	verifyCalibration = 64
	// verifyHeadroom is how much more evidence than the estimate a window gets, so that
	// a window faster than the estimate rarely has to pause for more.
	verifyHeadroom = 1.3
	// plainMinEvidence is the smallest set of evidences the plain system cycles over
	// when moat's last window left fewer.
	plainMinEvidence = 256
)

// verifyFiles are the application files each subject measures (contents are what the
// policy's reference values are the SHA-256 of).
var verifyFiles = []struct{ name, content string }{
	{"app", "application binary v1"},
	{"app.conf", "listen 8080\n"},
}

// verificationSystems are the systems this run measures verifications on, in the
// order they are measured.
func (b *bencher) verificationSystems() []string {
	if !b.opts.wantsScenario(ScVerifications) {
		return nil
	}
	var out []string
	for _, s := range []string{SysMoat, SysPlain} {
		if b.opts.wants(s) {
			out = append(out, s)
		}
	}
	return out
}

// verificationSteps is the number of progress steps of verificationPhase: one per
// measurement.
func (b *bencher) verificationSteps() int {
	return b.profile.VerifyReps * len(b.verificationSystems())
}

// verificationPhase measures attestation verifications (ScVerifications): moat's full
// appraisal against the one check no verifier can skip, the quote's signature.
func (b *bencher) verificationPhase(ctx context.Context) error {
	systems := b.verificationSystems()
	if len(systems) == 0 || b.profile.VerifyReps <= 0 {
		return nil
	}
	b.prog.note("enrolling attestation subjects")
	rig, err := newVerifyRig(ctx, verifySubjects)
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		// Without subjects nothing can be measured: one error, and the steps still
		// advance so that the progress bar's total stays right.
		b.fail(fmt.Errorf("%s: set up: %w", ScVerifications, err))
		for i := 0; i < b.verificationSteps(); i++ {
			b.prog.step(fmt.Sprintf("%-8s %-25s not set up", "", ScVerifications))
		}
		return nil
	}
	defer rig.close()
	return b.verifications(ctx, rig, systems)
}

// verifications runs the interleaved measurements on a rig and records them.
func (b *bencher) verifications(ctx context.Context, rig *verifyRig, systems []string) error {
	d := b.profile.VerifyDuration
	for rep := 0; rep < b.profile.VerifyReps; rep++ {
		for _, system := range systems {
			if err := ctx.Err(); err != nil {
				return err
			}
			b.prog.step(fmt.Sprintf("%-8s %-25s run %d/%d", system, ScVerifications, rep+1, b.profile.VerifyReps))
			var (
				s   Sample
				err error
			)
			if system == SysMoat {
				s, err = rig.measureMoat(ctx, d)
			} else {
				s, err = rig.measurePlain(ctx, d)
			}
			if err != nil {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				b.fail(fmt.Errorf("%s %s: %w", system, ScVerifications, err))
				continue
			}
			b.record(ScVerifications, system, KindOps, 0, s)
		}
	}
	if r := b.rep.Find(ScVerifications, SysMoat, 0); r != nil {
		r.Notes = append(r.Notes, fmt.Sprintf("one verification is moat's full appraisal of fresh evidence (%s), round-robin over %d enrolled subjects with fake SEs that emit a TPM's wire structures: nonce, signature, quote decoding, binding, counters, PCR digest, log replay, reference values, result; per core is per second of the appraising thread's CPU time (on CPU %d), which leaves out the Go runtime's background garbage collection", rig.evidence, len(rig.hosts), sutCPU))
	}
	if r := b.rep.Find(ScVerifications, SysPlain, 0); r != nil {
		r.Notes = append(r.Notes, "the ceiling: the quote's RSASSA-SHA256 signature check alone (tpmwire.Verify with the AK's public key, as moat's verifier does it) over the same evidences, decoded beforehand")
	}
	return nil
}

// verifyHost is an enrolled subject: its fake SE, measurement log and keys.
type verifyHost struct {
	id  string
	se  *fakese.SE
	log *mlog.Log
	wg  []byte
	tls []byte // DER SubjectPublicKeyInfo
	ak  *rsa.PublicKey
}

// pendingEvidence is collected evidence with the subject it came from.
type pendingEvidence struct {
	h  *verifyHost
	ev *attest.Evidence
}

// verifyRig is a verifier with enrolled subjects and the evidence collected for it.
type verifyRig struct {
	v     *verifier.Verifier
	hosts []*verifyHost
	// queue is collected evidence not yet appraised, in collection order: each
	// subject's evidences must be appraised in the order their quotes were made, or the
	// verifier rightly sees the TPM clock go back.
	queue []pendingEvidence
	// appraised is what moat's last window appraised, for the plain system to check.
	appraised []pendingEvidence
	// rate is the latest estimate of appraisals per second.
	rate float64
	// evidence describes one evidence, for the report.
	evidence string
	// tamper, when set, alters every evidence collected afterwards: tests use it to
	// show that a refused appraisal fails the measurement rather than counting.
	tamper func(*attest.Evidence)
}

// newVerifyRig builds a verifier with n enrolled fake-SE subjects, as BenchmarkAppraise
// in attest/verifier does, and calibrates the appraisal rate.
func newVerifyRig(ctx context.Context, n int) (_ *verifyRig, err error) {
	pol := verifier.Policies{}
	// Nonces live long and are many: a window's evidence is collected before it
	// starts, every round of it holding one outstanding nonce per subject channel.
	v, err := verifier.New(verifier.Config{
		Policies: pol, NonceTTL: time.Hour, ResultTTL: time.Minute,
		MaxNonces: 1 << 22, MaxNoncesPerChannel: 1 << 22, Logger: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		return nil, fmt.Errorf("verifier: %w", err)
	}
	r := &verifyRig{v: v}
	defer func() {
		if err != nil {
			r.close()
		}
	}()
	dir, err := os.MkdirTemp("", "moat-bench-verify-")
	if err != nil {
		return nil, err
	}
	// The files are read once, when measured; the log is kept in memory.
	defer os.RemoveAll(dir)
	var paths []string
	refs := map[string][][32]byte{}
	for _, f := range verifyFiles {
		p := filepath.Join(dir, f.name)
		if err := os.WriteFile(p, []byte(f.content), 0o600); err != nil {
			return nil, err
		}
		paths = append(paths, p)
		refs[p] = [][32]byte{sha256.Sum256([]byte(f.content))}
	}
	// Each fake SE generates an RSA-2048 AK: in parallel, the slow part of the set-up.
	ses := make([]*fakese.SE, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range ses {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ses[i], errs[i] = fakese.New()
		}()
	}
	wg.Wait()
	for i, se := range ses {
		if se == nil {
			continue
		}
		r.hosts = append(r.hosts, &verifyHost{id: fmt.Sprintf("bench-%d/verify", i), se: se})
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("fake SE: %w", err)
	}
	for _, h := range r.hosts {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if err := r.enroll(ctx, h, pol, paths, refs); err != nil {
			return nil, err
		}
	}
	if err := r.calibrate(ctx); err != nil {
		return nil, err
	}
	return r, nil
}

// enroll measures a subject's files, registers its policy (its EK allow-listed) and
// enrolls its EK and AK.
func (r *verifyRig) enroll(ctx context.Context, h *verifyHost, pol verifier.Policies, paths []string, refs map[string][][32]byte) error {
	m, err := agent.NewMeasurer(h.se, attest.DefaultMeasurementPCR, paths, "")
	if err != nil {
		return fmt.Errorf("%s: %w", h.id, err)
	}
	if _, err := m.Measure(); err != nil {
		return fmt.Errorf("%s: %w", h.id, err)
	}
	h.log = m.Log()
	if h.wg, err = randomKey(32); err != nil {
		return err
	}
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	if h.tls, err = x509.MarshalPKIXPublicKey(&k.PublicKey); err != nil {
		return err
	}
	ek, err := h.se.EndorsementKey()
	if err != nil {
		return fmt.Errorf("%s: EK: %w", h.id, err)
	}
	ekHash, _, err := tpmwire.EKSHA256(ek.Public)
	if err != nil {
		return fmt.Errorf("%s: EK: %w", h.id, err)
	}
	ak, err := h.se.AttestationKey()
	if err != nil {
		return fmt.Errorf("%s: AK: %w", h.id, err)
	}
	// The plain system checks signatures with the key the verifier derives from the
	// enrolled AK public area, derived the same way.
	if h.ak, err = tpmwire.AKPublicKey(ak.Public); err != nil {
		return fmt.Errorf("%s: AK: %w", h.id, err)
	}
	pol[h.id] = &verifier.Policy{Name: "bench-v1", MeasurementPCR: attest.DefaultMeasurementPCR, References: refs, AllowedEKs: [][32]byte{ekHash}}
	if _, err := agent.Enroll(ctx, h.se, verifier.LocalClient{Verifier: r.v, Key: h.tls}, h.id, nil); err != nil {
		return err
	}
	return nil
}

func randomKey(n int) ([]byte, error) {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		return nil, err
	}
	return b, nil
}

// calibrate appraises a first batch on the pinned thread to estimate the rate, and
// describes the evidence for the report.
func (r *verifyRig) calibrate(ctx context.Context) error {
	if err := r.fill(ctx, verifyCalibration); err != nil {
		return err
	}
	ev := r.queue[0].ev
	l, err := mlog.Decode(ev.Log)
	if err != nil {
		return fmt.Errorf("calibration evidence: %w", err)
	}
	pcrs := make([]int, len(ev.PCRs))
	for i, p := range ev.PCRs {
		pcrs[i] = p.Index
	}
	r.evidence = fmt.Sprintf("a quote over SHA-256 PCRs %v signed by an RSA-2048 AK, the %d PCR value(s), a measurement log of %d entries", pcrs, len(ev.PCRs), len(l.Entries))
	batch := r.queue[:verifyCalibration]
	r.queue = r.queue[verifyCalibration:]
	wall, _, err := onSUT(func() error {
		for _, p := range batch {
			if err := r.appraise(p); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("calibration: %w", err)
	}
	r.rate = float64(len(batch)) / wall.Seconds()
	return nil
}

// need is how much evidence a window of length left needs at the estimated rate.
func (r *verifyRig) need(left time.Duration) int {
	return int(math.Ceil(r.rate*left.Seconds()*verifyHeadroom)) + len(r.hosts)
}

// fill collects evidence until the queue holds at least want, a round over every
// subject at a time, the subjects in parallel.
func (r *verifyRig) fill(ctx context.Context, want int) error {
	missing := want - len(r.queue)
	if missing <= 0 {
		return nil
	}
	rounds := (missing + len(r.hosts) - 1) / len(r.hosts)
	got := make([][]*attest.Evidence, len(r.hosts))
	errs := make([]error, len(r.hosts))
	var wg sync.WaitGroup
	for i, h := range r.hosts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range rounds {
				if err := ctx.Err(); err != nil {
					errs[i] = err
					return
				}
				ev, err := r.collect(ctx, h)
				if err != nil {
					errs[i] = err
					return
				}
				got[i] = append(got[i], ev)
			}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("collect evidence: %w", err)
	}
	for round := range rounds {
		for i, h := range r.hosts {
			r.queue = append(r.queue, pendingEvidence{h: h, ev: got[i][round]})
		}
	}
	return nil
}

// collect runs one challenge and collects the subject's evidence for it, as the agent
// does.
func (r *verifyRig) collect(ctx context.Context, h *verifyHost) (*attest.Evidence, error) {
	ch, err := r.v.Challenge(ctx, &attest.ChallengeRequest{Version: attest.ProtocolVersion, Identity: h.id}, h.tls)
	if err != nil {
		return nil, fmt.Errorf("challenge for %s: %w", h.id, err)
	}
	ev, err := agent.Collect(h.se, ch, h.id, h.wg, h.tls, h.log)
	if err != nil {
		return nil, fmt.Errorf("evidence of %s: %w", h.id, err)
	}
	if r.tamper != nil {
		r.tamper(ev)
	}
	return ev, nil
}

// appraise is one verification: anything but an affirming result is an error, since
// a refused or contraindicated appraisal may have stopped early and is not the work
// being measured.
func (r *verifyRig) appraise(p pendingEvidence) error {
	res, err := r.v.Appraise(context.Background(), p.ev, p.h.tls)
	if err != nil {
		return fmt.Errorf("appraisal of %s refused: %w", p.h.id, err)
	}
	if res.Status != attest.StatusAffirming {
		return fmt.Errorf("appraisal of %s: %s, want %s: %v", p.h.id, res.Status, attest.StatusAffirming, res.Reasons)
	}
	return nil
}

// measureMoat appraises pre-collected evidence for d on the pinned thread. Should the
// evidence run out before d (the verifier ran faster than estimated), the clock
// stops, more is collected, and the window goes on.
func (r *verifyRig) measureMoat(ctx context.Context, d time.Duration) (Sample, error) {
	var (
		wall, cpu time.Duration
		n         int
	)
	r.appraised = r.appraised[:0]
	for wall < d {
		if err := r.fill(ctx, r.need(d-wall)); err != nil {
			return Sample{}, err
		}
		budget := d - wall
		done := 0
		w, c, err := onSUT(func() error {
			start := time.Now()
			for done < len(r.queue) && time.Since(start) < budget {
				p := r.queue[done]
				// Consumed whatever the outcome: its nonce is single-use.
				done++
				if err := r.appraise(p); err != nil {
					return err
				}
			}
			return nil
		})
		r.appraised = append(r.appraised, r.queue[:done]...)
		r.queue = r.queue[done:]
		if err != nil {
			return Sample{}, err
		}
		wall, cpu, n = wall+w, cpu+c, n+done
	}
	r.rate = float64(n) / wall.Seconds()
	return opsSample(n, wall, cpu), nil
}

// sigCheck is the part of one evidence the plain system verifies.
type sigCheck struct {
	ak    *rsa.PublicKey
	quote []byte
	sig   *tpmwire.Signature
}

// measurePlain checks quote signatures for d on the pinned thread, cycling over moat's
// last window's evidence (or, without one, over pending evidence: a signature check
// consumes no nonce). Only the cryptographic check is in the window; the signature's
// decoding and the AK lookup are done before.
func (r *verifyRig) measurePlain(ctx context.Context, d time.Duration) (Sample, error) {
	set := r.appraised
	if len(set) < plainMinEvidence {
		if err := r.fill(ctx, plainMinEvidence); err != nil {
			return Sample{}, err
		}
		set = r.queue
	}
	checks := make([]sigCheck, len(set))
	for i, p := range set {
		sig, err := tpmwire.ParseSignature(p.ev.Signature)
		if err != nil {
			return Sample{}, fmt.Errorf("signature of %s: %w", p.h.id, err)
		}
		checks[i] = sigCheck{ak: p.h.ak, quote: p.ev.Quote, sig: sig}
	}
	n := 0
	wall, cpu, err := onSUT(func() error {
		start := time.Now()
		for time.Since(start) < d {
			c := &checks[n%len(checks)]
			if err := tpmwire.Verify(c.ak, c.quote, c.sig); err != nil {
				return fmt.Errorf("quote %d: %w", n%len(checks), err)
			}
			n++
		}
		return nil
	})
	if err != nil {
		return Sample{}, err
	}
	return opsSample(n, wall, cpu), nil
}

func opsSample(n int, wall, cpu time.Duration) Sample {
	s := Sample{Seconds: wall.Seconds()}
	if wall > 0 {
		s.OpsPerSec, s.CPU = float64(n)/wall.Seconds(), cpu.Seconds()/wall.Seconds()
	}
	if cpu > 0 {
		s.OpsPerCore = float64(n) / cpu.Seconds()
	}
	return s
}

// onSUT runs f on a goroutine locked to a fresh OS thread pinned to sutCPU and returns
// the wall time and that thread's CPU time f took. The thread is never unlocked: it
// exits with the goroutine instead of going back to the runtime with its narrowed
// affinity.
func onSUT(f func() error) (wall, cpu time.Duration, err error) {
	type result struct {
		wall, cpu time.Duration
		err       error
	}
	done := make(chan result, 1)
	// As testing.B does before each run: a collection owed for the garbage of what came
	// before (collecting evidence allocates much) must not run, and slow the
	// measured thread with its assists and write barriers, inside the window.
	runtime.GC()
	go func() {
		runtime.LockOSThread()
		var set unix.CPUSet
		set.Set(sutCPU)
		if err := unix.SchedSetaffinity(0, &set); err != nil {
			done <- result{err: fmt.Errorf("pin to CPU %d: %w", sutCPU, err)}
			return
		}
		var before, after unix.Rusage
		if err := unix.Getrusage(unix.RUSAGE_THREAD, &before); err != nil {
			done <- result{err: fmt.Errorf("thread CPU time: %w", err)}
			return
		}
		start := time.Now()
		ferr := f()
		wall := time.Since(start)
		if err := unix.Getrusage(unix.RUSAGE_THREAD, &after); err != nil {
			done <- result{err: errors.Join(ferr, fmt.Errorf("thread CPU time: %w", err))}
			return
		}
		done <- result{wall: wall, cpu: rusageCPU(&after) - rusageCPU(&before), err: ferr}
	}()
	res := <-done
	return res.wall, res.cpu, res.err
}

// rusageCPU is user plus system time.
func rusageCPU(ru *unix.Rusage) time.Duration {
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// close stops the verifier's timers and closes the fake SEs.
func (r *verifyRig) close() {
	r.v.Close()
	for _, h := range r.hosts {
		h.se.Close()
	}
}
