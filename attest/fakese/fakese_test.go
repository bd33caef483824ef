package fakese

import (
	"testing"

	"github.com/seed4c/moat/attest/internal/conformance"
)

func TestConformance(t *testing.T) {
	se, err := New()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { se.Close() })
	conformance.Run(t, se)
}

func TestClosedRefuses(t *testing.T) {
	se, err := New()
	if err != nil {
		t.Fatal(err)
	}
	se.Close()
	conformance.RunClosed(t, se)
}
