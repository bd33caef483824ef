package netns

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// commandChildEnv makes the test binary act as a parent that starts a program in a
// namespace and then waits to be killed (TestPrivilegedCommandDiesWithParent).
const commandChildEnv = "MOAT_NETNS_COMMAND_CHILD"

func TestMain(m *testing.M) {
	if name := os.Getenv(commandChildEnv); name != "" {
		os.Exit(commandChild(name))
	}
	os.Exit(m.Run())
}

func commandChild(name string) int {
	h := &Host{Name: name}
	cmd := h.Command("sleep", "300")
	if err := cmd.Start(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Println(cmd.Process.Pid)
	select {}
}

// A daemon started with Host.Command must not outlive a test or demo killed with
// SIGKILL: it would keep running against a namespace nobody deletes.
func TestPrivilegedCommandDiesWithParent(t *testing.T) {
	RequireRoot(t)
	h, err := NewHost(UniqueName("cmd"))
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()

	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	parent := exec.Command(self, "-test.run", "^$")
	parent.Env = append(os.Environ(), commandChildEnv+"="+h.Name)
	out, err := parent.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := parent.Start(); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		parent.Process.Kill()
		t.Fatalf("read the program's pid from the parent: %v", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(line))
	if err != nil {
		t.Fatalf("parent printed %q, not a pid", line)
	}
	if !processInNamespace(pid, h) {
		syscall.Kill(pid, syscall.SIGKILL)
		t.Fatalf("program %d is not running in namespace %s", pid, h.Name)
	}

	if err := parent.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	parent.Wait()

	deadline := time.Now().Add(5 * time.Second)
	for processAlive(pid) {
		if time.Now().After(deadline) {
			syscall.Kill(pid, syscall.SIGKILL)
			t.Fatalf("program %d still running 5 s after its parent was killed", pid)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// processAlive reports whether pid exists and is not a zombie.
func processAlive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// Field 3, after "(comm)", is the state.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || s[i+2] != 'Z'
}

// processInNamespace reports whether pid runs in h's network namespace.
func processInNamespace(pid int, h *Host) bool {
	var want, got syscall.Stat_t
	if syscall.Stat("/run/netns/"+h.Name, &want) != nil {
		return false
	}
	// nsenter has execed by the time the pid is printed only if we wait for it.
	for i := 0; i < 100; i++ {
		if syscall.Stat(fmt.Sprintf("/proc/%d/ns/net", pid), &got) == nil && got.Ino == want.Ino {
			return true
		}
		time.Sleep(10 * time.Millisecond)
	}
	return false
}
