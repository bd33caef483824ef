package tenant

import (
	"testing"

	"github.com/seed4c/moat/internal/deptest"
)

func TestNoDataplaneImports(t *testing.T) {
	deptest.Forbid(t, "github.com/seed4c/moat/tenant",
		"github.com/seed4c/moat/dataplane",
		"github.com/cilium/ebpf",
		"github.com/vishvananda/netlink",
	)
}
