package verifier_test

import (
	"github.com/seed4c/moat/attest"
	"github.com/seed4c/moat/attest/agent"
)

func agentCollect(h *host, ch *attest.Challenge) (*attest.Evidence, error) {
	return agent.Collect(h.se, ch, h.id, h.wg, h.tls, h.measurer.Log())
}
