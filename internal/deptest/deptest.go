// Package deptest lets a package's tests forbid imports, so that the layering of
// DESIGN.md (lb and tenant never reach the dataplane or cilium/ebpf) is checked by
// `go test`, not by review.
package deptest

import (
	"encoding/json"
	"os/exec"
	"strings"
	"testing"
)

// Forbid fails t when pkg depends, directly or transitively, on any package whose import
// path equals one of forbidden or lies below it.
func Forbid(t *testing.T, pkg string, forbidden ...string) {
	t.Helper()
	out, err := exec.Command("go", "list", "-json=ImportPath,Deps", pkg).Output()
	if err != nil {
		t.Fatalf("go list %s: %v", pkg, err)
	}
	var p struct {
		ImportPath string
		Deps       []string
	}
	if err := json.Unmarshal(out, &p); err != nil {
		t.Fatalf("decode go list output for %s: %v", pkg, err)
	}
	if len(p.Deps) == 0 {
		t.Fatalf("go list reported no dependencies for %s; the check would prove nothing", pkg)
	}
	for _, dep := range p.Deps {
		for _, f := range forbidden {
			if dep == f || strings.HasPrefix(dep, f+"/") {
				t.Errorf("%s depends on %s (forbidden: %s)", p.ImportPath, dep, f)
			}
		}
	}
}
