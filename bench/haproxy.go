package bench

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// haproxyConfig balances the scene's first tenant in TCP mode: one thread (the SUT
// core), no health checks, no logging.
func (s *Scene) haproxyConfig() string {
	topo := s.Topo
	var b strings.Builder
	fmt.Fprintf(&b, "global\n  nbthread 1\n  maxconn 9000\n\n")
	fmt.Fprintf(&b, "defaults\n  mode tcp\n  timeout connect 2s\n  timeout client 30s\n  timeout server 30s\n\n")
	fmt.Fprintf(&b, "frontend vip\n  bind %s:%d\n  default_backend web\n\n", topo.Opts.VIP, topo.Opts.Port)
	fmt.Fprintf(&b, "backend web\n  balance roundrobin\n")
	for _, be := range topo.Tenants[0].Backends {
		fmt.Fprintf(&b, "  server %s %s:%d\n", be.Name, be.Addr, topo.Opts.BackendPort)
	}
	return b.String()
}

// ensureHAProxy installs HAProxy from Debian when it is missing.
func ensureHAProxy(log func(string)) error {
	if _, err := exec.LookPath("haproxy"); err == nil {
		return nil
	}
	log("moat bench: haproxy is missing; installing it for the HAProxy baseline (apt-get install haproxy)")
	for _, args := range [][]string{{"update", "-qq"}, {"install", "-y", "-qq", "--no-install-recommends", "haproxy"}} {
		cmd := exec.Command("apt-get", args...)
		cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("apt-get %s: %v: %s", strings.Join(args, " "), err, lastLines(string(out), 5))
		}
	}
	return nil
}

func lastLines(s string, n int) string {
	l := strings.Split(strings.TrimSpace(s), "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, "\n")
}

// setupHAProxy runs HAProxy in the gateway, pinned to the SUT core, with the VIP on
// the gateway's loopback and the first tenant's table for the proxy's own sockets.
func (s *Scene) setupHAProxy(dir string) (*sut, error) {
	gw := s.Topo.GW
	table := strconv.Itoa(s.Topo.Tenants[0].Table)
	ipc := func(args ...string) error {
		out, err := exec.Command("ip", append([]string{"netns", "exec", gw.Name, "ip"}, args...)...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
		}
		return nil
	}
	vip := s.Topo.Opts.VIP.String() + "/32"
	steps := [][]string{
		{"addr", "add", vip, "dev", "lo"},
		{"rule", "add", "to", "10.1.0.0/16", "lookup", table, "pref", "900"},
		{"rule", "add", "to", "10.0.0.0/24", "lookup", table, "pref", "901"},
	}
	undoRoutes := func() error {
		return errors.Join(ipc("addr", "del", vip, "dev", "lo"),
			ipc("rule", "del", "pref", "900"), ipc("rule", "del", "pref", "901"))
	}
	for _, st := range steps {
		if err := ipc(st...); err != nil {
			return nil, errors.Join(err, undoRoutes())
		}
	}
	pass, tids, err := s.passOnGateway()
	if err != nil {
		return nil, errors.Join(err, undoRoutes())
	}
	cfg := filepath.Join(dir, "haproxy.cfg")
	if err := os.WriteFile(cfg, []byte(s.haproxyConfig()), 0o644); err != nil {
		return nil, errors.Join(err, pass(), undoRoutes())
	}
	cmd := exec.Command("ip", "netns", "exec", gw.Name, "taskset", "-c", strconv.Itoa(sutCPU), "haproxy", "-db", "-f", cfg)
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		return nil, errors.Join(fmt.Errorf("start haproxy: %w", err), pass(), undoRoutes())
	}
	stop := func() error {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		return errors.Join(pass(), undoRoutes())
	}
	// Ready when it listens (its pid is haproxy's: ip and taskset exec it).
	ready := false
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		c, err := gw.Dial(&net.Dialer{Timeout: 200 * time.Millisecond}, "tcp4", fmt.Sprintf("%s:%d", s.Topo.Opts.VIP, s.Topo.Opts.Port))
		if err == nil {
			c.Close()
			ready = true
			break
		}
	}
	if !ready {
		return nil, errors.Join(fmt.Errorf("haproxy did not come up: %s", lastLines(out.String(), 5)), stop())
	}
	pid := cmd.Process.Pid
	procThreads := func() ([]int, error) {
		ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
		if err != nil {
			return nil, fmt.Errorf("haproxy threads: %w", err)
		}
		var out []int
		for _, e := range ents {
			if t, err := strconv.Atoi(e.Name()); err == nil {
				out = append(out, t)
			}
		}
		return out, nil
	}
	pt, err := procThreads()
	if err == nil {
		for _, t := range pt {
			if err = pinThread(t, sutCPU, rtPrio); err != nil {
				break
			}
		}
	}
	if err != nil {
		return nil, errors.Join(err, stop())
	}
	return &sut{name: SysHAProxy, threads: tids, extra: procThreads, drops: func() (uint64, error) { return 0, nil }, close: stop}, nil
}
