package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/seed4c/moat/dataplane"
	"github.com/seed4c/moat/internal/netns"
)

// TestPrivilegedDemo runs `moat demo` as `make demo` does (the README's first command):
// every step checks what it shows and fails the run otherwise, so a zero exit and the
// key lines mean the scene did what the README says; afterwards nothing it pinned
// remains.
func TestPrivilegedDemo(t *testing.T) {
	netns.RequireRoot(t)
	bin := filepath.Join(t.TempDir(), "moat")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build moat: %v\n%s", err, out)
	}
	instance := netns.UniqueName("demo")
	out, err := exec.Command(bin, "demo", "--instance", instance).CombinedOutput()
	if err != nil {
		t.Fatalf("moat demo: %v\n%s", err, out)
	}
	for _, want := range []string{
		"a-3  rejected",
		"r    admitted",
		"attacks tenant b",
		"0 reached b",
		"only WireGuard and ARP",
		"no tenant plaintext",
		"existing connections cut:  a-2",
		"removed every namespace, process, program and pin the demo created",
	} {
		if !strings.Contains(string(out), want) {
			t.Errorf("the demo's output lacks %q", want)
		}
	}
	if t.Failed() {
		t.Logf("output:\n%s", out)
	}
	if _, err := os.Stat(filepath.Join(dataplane.DefaultPinRoot, instance)); !os.IsNotExist(err) {
		t.Errorf("the demo left its pins in %s: %v", filepath.Join(dataplane.DefaultPinRoot, instance), err)
	}
}
