// Package swtpmtest starts swtpm (Debian's swtpm package) for tests: a software TPM in
// its own process, reached over a unix socket, with its state in a temporary
// directory. A test that needs swtpm skips when it is not installed, except under
// CI=true, where a missing swtpm is a failure (CI installs it through .ci/deps).
package swtpmtest

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// Instance is one running swtpm.
type Instance struct {
	// Addr is the server socket in the form tpm.OpenSwtpm takes ("unix:/…").
	Addr string
	// StateDir holds the TPM's persistent state; copying it is snapshotting the TPM.
	StateDir string

	t      testing.TB
	bin    string
	dir    string
	cmd    *exec.Cmd
	done   chan error
	stderr bytes.Buffer
}

// Binary returns swtpm's path, skipping (or, under CI=true, failing) the test when
// swtpm is not installed.
func Binary(t testing.TB) string {
	t.Helper()
	bin, err := exec.LookPath("swtpm")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("swtpm is required under CI=true but not found: %v (install Debian's swtpm and swtpm-tools)", err)
		}
		t.Skipf("swtpm not installed (%v): apt-get install swtpm swtpm-tools", err)
	}
	return bin
}

// Start starts a fresh swtpm (new seeds, so a new EK) and stops it at cleanup.
func Start(t testing.TB) *Instance {
	t.Helper()
	bin := Binary(t)
	// Unix socket paths are limited to 108 bytes; t.TempDir() can be longer.
	dir, err := os.MkdirTemp("", "moat-swtpm-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	state := filepath.Join(dir, "state")
	if err := os.Mkdir(state, 0o700); err != nil {
		t.Fatal(err)
	}
	i := &Instance{t: t, bin: bin, dir: dir, StateDir: state, Addr: "unix:" + filepath.Join(dir, "server.sock")}
	t.Cleanup(func() {
		i.Stop()
		if t.Failed() && i.stderr.Len() > 0 {
			t.Logf("swtpm stderr:\n%s", i.stderr.String())
		}
	})
	i.Restart()
	return i
}

// Restart starts swtpm again on the same state, as a host reboot would (swtpm runs
// TPM2_Startup(CLEAR): PCRs reset, resetCount increments). It stops a running one first.
func (i *Instance) Restart() {
	i.t.Helper()
	i.Stop()
	server := filepath.Join(i.dir, "server.sock")
	ctrl := filepath.Join(i.dir, "ctrl.sock")
	os.Remove(server)
	os.Remove(ctrl)
	cmd := exec.Command(i.bin, "socket", "--tpm2",
		"--server", "type=unixio,path="+server,
		"--ctrl", "type=unixio,path="+ctrl,
		"--tpmstate", "dir="+i.StateDir,
		"--flags", "not-need-init,startup-clear")
	// swtpm's stderr is kept for a failing test, not printed on every disconnect.
	cmd.Stderr = &i.stderr
	if err := cmd.Start(); err != nil {
		i.t.Fatalf("start swtpm: %v", err)
	}
	i.cmd = cmd
	i.done = make(chan error, 1)
	go func() { i.done <- cmd.Wait() }()
	deadline := time.Now().Add(10 * time.Second)
	for {
		// The socket file appears at bind(), before listen(): only a connection that
		// succeeds says swtpm is ready. swtpm serves one client at a time and goes back
		// to accepting when this probe disconnects.
		if conn, err := net.Dial("unix", server); err == nil {
			conn.Close()
			return
		}
		select {
		case err := <-i.done:
			i.cmd = nil
			i.t.Fatalf("swtpm exited at start: %v", err)
		case <-time.After(5 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			i.t.Fatalf("swtpm did not create %s within 10s", server)
		}
	}
}

// Stop terminates swtpm (SIGTERM: it saves its state and exits) and waits for it.
func (i *Instance) Stop() {
	if i.cmd == nil {
		return
	}
	_ = i.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-i.done:
	case <-time.After(10 * time.Second):
		_ = i.cmd.Process.Kill()
		<-i.done
	}
	i.cmd = nil
}

// Snapshot copies the TPM's persistent state into a new directory and returns it.
func (i *Instance) Snapshot() string {
	i.t.Helper()
	dst, err := os.MkdirTemp(i.dir, "snapshot-")
	if err != nil {
		i.t.Fatal(err)
	}
	if err := copyDir(i.StateDir, dst); err != nil {
		i.t.Fatalf("snapshot swtpm state: %v", err)
	}
	return dst
}

// RestoreSnapshot replaces the TPM's state with a snapshot: a state rollback, as an
// attacker who controls a VM's storage could do. swtpm must be stopped.
func (i *Instance) RestoreSnapshot(snapshot string) {
	i.t.Helper()
	if i.cmd != nil {
		i.t.Fatal("restore snapshot: swtpm is running")
	}
	if err := os.RemoveAll(i.StateDir); err != nil {
		i.t.Fatal(err)
	}
	if err := os.Mkdir(i.StateDir, 0o700); err != nil {
		i.t.Fatal(err)
	}
	if err := copyDir(snapshot, i.StateDir); err != nil {
		i.t.Fatalf("restore swtpm state: %v", err)
	}
}

func copyDir(src, dst string) error {
	entries, err := os.ReadDir(src)
	if err != nil {
		return err
	}
	if len(entries) == 0 {
		return errors.New("no state files (swtpm saves them on NV writes and at exit)")
	}
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(src, e.Name()))
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dst, e.Name()), b, 0o600); err != nil {
			return fmt.Errorf("copy %s: %w", e.Name(), err)
		}
	}
	return nil
}
