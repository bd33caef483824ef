package verifier_test

import (
	"testing"
	"time"

	"github.com/seed4c/moat/attest"
	"github.com/seed4c/moat/attest/internal/swtpmtest"
	"github.com/seed4c/moat/attest/tpm"
	"github.com/seed4c/moat/attest/verifier"
)

func openSwtpm(t *testing.T, sw *swtpmtest.Instance) *tpm.SE {
	t.Helper()
	se, err := tpm.OpenSwtpm(sw.Addr, tpm.EKECC)
	if err != nil {
		t.Fatal(err)
	}
	return se
}

func TestGoodPathSwtpm(t *testing.T) {
	sw := swtpmtest.Start(t)
	se := openSwtpm(t, sw)
	t.Cleanup(func() { se.Close() })
	r := newRig(t, verifier.Config{})
	h := newHost(t, "web-1", se)
	r.add(t, h)
	for i := 0; i < 3; i++ {
		mustAffirm(t)(h.attest(t, r.v))
		r.clock.Advance(2 * time.Second)
	}
}

// The attack the counters exist for: whoever controls the storage of a software TPM
// (or a VM's vTPM) restores an older state. The restored TPM has the same keys, so its
// quotes verify, but its resetCount is behind what the verifier has seen.
func TestSwtpmStateRollbackContraindicated(t *testing.T) {
	sw := swtpmtest.Start(t)
	r := newRig(t, verifier.Config{})
	se := openSwtpm(t, sw)
	h := newHost(t, "web-1", se)
	r.add(t, h)
	mustAffirm(t)(h.attest(t, r.v))
	se.Close()
	sw.Stop()
	snapshot := sw.Snapshot()

	var last attest.Result
	for boot := 0; boot < 2; boot++ { // two legal reboots
		sw.Restart()
		h.se = openSwtpm(t, sw)
		h.remeasure(t)
		last = mustAffirm(t)(h.attest(t, r.v))
		h.se.Close()
	}
	sw.Stop()
	sw.RestoreSnapshot(snapshot)
	sw.Restart() // one boot after the snapshot: resetCount one behind the last seen
	h.se = openSwtpm(t, sw)
	t.Cleanup(func() { h.se.Close() })
	h.remeasure(t)
	res, err := h.attest(t, r.v)
	mustContraindicate(t, res, err, attest.ReasonResetCount)
	if res.ResetCount >= last.ResetCount {
		t.Fatalf("restored TPM reports resetCount %d, last seen %d: the snapshot did not roll back", res.ResetCount, last.ResetCount)
	}
}
