package verifier_test

import (
	"context"
	"testing"

	"github.com/seed4c/moat/attest"
	"github.com/seed4c/moat/attest/agent"
	"github.com/seed4c/moat/attest/fakese"
	"github.com/seed4c/moat/attest/verifier"
)

func agentCollect(h *host, ch *attest.Challenge) (*attest.Evidence, error) {
	return agent.Collect(h.se, ch, h.id, h.wg, h.tls, h.measurer.Log())
}

func agentEnroll(h *host, v *verifier.Verifier) (*attest.Enrollment, error) {
	return agent.Enroll(context.Background(), h.se, h.client(v), h.id, nil)
}

func newFakeB(b testing.TB) *fakese.SE {
	se, err := fakese.New()
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { se.Close() })
	return se
}
