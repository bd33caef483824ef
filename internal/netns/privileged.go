package netns

import (
	"os"
	"testing"
)

// RequireRoot skips a privileged test when not root, and fails it instead when CI=true:
// in CI a privileged test that cannot run is a failure, not a pass.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s needs root (network namespaces, BPF), and CI=true: failing instead of skipping", t.Name())
	}
	t.Skipf("%s needs root (network namespaces, BPF): skipped", t.Name())
}
