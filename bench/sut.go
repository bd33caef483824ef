package bench

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/cilium/ebpf"

	"github.com/seed4c/moat/dataplane"
	"github.com/seed4c/moat/internal/netns"
)

// Systems compared.
const (
	SysMoat  = "moat"
	SysPlain = "plain" // plain XDP forwarding, no policy: the ceiling
	// The bounds: what the cheapest program doing a scenario's least work reaches on
	// the same path, measured only in the scenarios they bound. A target above a
	// bound's own ratio is out of reach here for any system that does at least that
	// work, moat included.
	SysXDPDrop = "xdp_drop" // count and drop every frame: the isolation scenarios
	SysPlainCT = "plain_ct" // one LRU entry per flow, its route in it: the forwarding scenarios
	SysNft     = "nftables" // the same isolation and balancing in nftables + conntrack
	SysHAProxy = "haproxy"  // HAProxy in TCP mode (connections)
)

// sut is one system set up on the scene.
type sut struct {
	name    string
	threads []int                  // the kernel threads (or processes) doing its work
	drops   func() (uint64, error) // its own count of dropped frames
	// dropReasons, when the system has them, counts its drops by reason (nil: none).
	dropReasons func() (map[string]uint64, error)
	// refused, when the system has a queue in front of it that is no interface's
	// ring (nftables' CPUMAP), counts the frames that queue refused (nil: none).
	refused func() (uint64, error)
	// flush empties the system's flow state (nil: it keeps none): every packet
	// measurement starts from an empty conntrack table on every system.
	flush func() error
	close func() error          // takes it off the scene
	extra func() ([]int, error) // more threads to account, looked up per measurement
	prog  *ebpf.Program         // its XDP program on the gateway (nil: not an XDP system)
}

// tids lists the system's threads: those it was set up with and its extra ones.
func (s *sut) tids() ([]int, error) {
	tids := append([]int(nil), s.threads...)
	if s.extra != nil {
		more, err := s.extra()
		if err != nil {
			return nil, err
		}
		tids = append(tids, more...)
	}
	return tids, nil
}

// cpuTime sums the run time of the system's threads, in nanoseconds.
func (s *sut) cpuTime() (int64, error) {
	tids, err := s.tids()
	if err != nil {
		return 0, err
	}
	var sum int64
	for _, t := range tids {
		ns, err := threadCPUTime(t)
		if err != nil {
			return 0, fmt.Errorf("CPU time of thread %d: %w", t, err)
		}
		sum += ns
	}
	return sum, nil
}

// threadNAPI makes the NAPI of ifnames of h threaded and pins the threads to cpu at
// SCHED_FIFO prio (0: normal); it returns them.
func threadNAPI(h *netns.Host, cpu, prio int, ifnames ...string) ([]int, error) {
	if err := setThreaded(h, true, ifnames...); err != nil {
		return nil, err
	}
	var all []int
	for _, n := range ifnames {
		tids, err := napiThreads(h, n)
		if err != nil {
			return nil, err
		}
		for _, t := range tids {
			if err := pinThread(t, cpu, prio); err != nil {
				return nil, err
			}
		}
		all = append(all, tids...)
	}
	return all, nil
}

// setupMoat attaches moat to the gateway, its NAPI threads on the SUT core.
func (s *Scene) setupMoat(gwPrio int) (*sut, error) {
	if err := s.AttachMoat(); err != nil {
		return nil, err
	}
	tids, err := threadNAPI(s.Topo.GW, sutCPU, gwPrio, s.GatewayIfaces()...)
	if err != nil {
		return nil, errors.Join(err, s.DetachMoat())
	}
	dp := s.Moat()
	return &sut{
		name:    SysMoat,
		threads: tids,
		drops: func() (uint64, error) {
			c, err := dp.Counters()
			if err != nil {
				return 0, err
			}
			return c.Drops().Packets, nil
		},
		dropReasons: func() (map[string]uint64, error) {
			c, err := dp.Counters()
			if err != nil {
				return nil, err
			}
			return c.DropsByReason(), nil
		},
		flush: func() error { _, err := dp.FlushConntrack(); return err },
		close: s.DetachMoat,
		prog:  dp.Program(),
	}, nil
}

// setupForwarder attaches the benchmark's forwarder in mode as system name, its NAPI
// threads on the SUT core: plain forwarding, or one of the bounds.
func (s *Scene) setupForwarder(name string, mode ForwarderMode, gwPrio int) (*sut, error) {
	f, err := AttachForwarder(s.Topo.GW, s.GatewayIfaces(), mode, s.moatOptions().MaxFlows)
	if err != nil {
		return nil, err
	}
	tids, err := threadNAPI(s.Topo.GW, sutCPU, gwPrio, s.GatewayIfaces()...)
	if err != nil {
		return nil, errors.Join(err, f.Close())
	}
	sys := &sut{name: name, threads: tids, drops: func() (uint64, error) { return 0, nil }, close: f.Close, prog: f.objs.XdpFwd}
	if mode == ForwardTracked {
		sys.flush = func() error { _, err := dataplane.ClearMap[fwdFlowKey, fwdFlowState](f.objs.FwdFlows); return err }
	}
	if mode == DropAll {
		sys.drops, sys.prog = f.Handled, f.objs.XdpDropAll
	}
	return sys, nil
}

// setupNftPackets loads the nftables baseline and feeds it live frames through a
// CPUMAP: the gateway interfaces' NAPI (the "NIC") runs on the load core, the CPUMAP
// kthread that builds skbs and runs the whole stack on the SUT core.
func (s *Scene) setupNftPackets() (*sut, error) {
	if err := s.LoadNftables(); err != nil {
		return nil, err
	}
	before, _ := kthreads("cpumap/")
	r, err := AttachCPURedirector(s.Topo.GW, s.GatewayIfaces(), sutCPU, 2048)
	if err != nil {
		return nil, errors.Join(err, s.UnloadNftables())
	}
	undo := func() error { return errors.Join(r.Close(), s.UnloadNftables()) }
	if _, err := threadNAPI(s.Topo.GW, loadCPU, rtPrio, s.GatewayIfaces()...); err != nil {
		return nil, errors.Join(err, undo())
	}
	// The kthread is named after the CPU and the map's id ("cpumap/1/map:42"): with
	// the threads that existed before, that tells ours from another CPUMAP user's.
	name := fmt.Sprintf("cpumap/%d/map:%d", sutCPU, r.MapID())
	var tid int
	for deadline := time.Now().Add(2 * time.Second); tid == 0 && time.Now().Before(deadline); {
		after, _ := kthreadsNamed(name)
		for _, t := range after {
			if !slices.Contains(before, t) {
				tid = t
			}
		}
		if tid == 0 {
			time.Sleep(10 * time.Millisecond)
		}
	}
	if tid == 0 {
		return nil, errors.Join(fmt.Errorf("no CPUMAP kthread for CPU %d appeared", sutCPU), undo())
	}
	if err := pinThread(tid, sutCPU, rtPrio); err != nil {
		return nil, errors.Join(err, undo())
	}
	return &sut{name: SysNft, threads: []int{tid}, drops: s.NftDrops, refused: r.Refused, flush: s.FlushConntrack, close: undo}, nil
}

// setupNftTCP loads the nftables baseline for real TCP: frames reach the stack
// through the gateway interfaces' own NAPI (a count-and-pass XDP program gives a veth
// one), threaded on the SUT core.
func (s *Scene) setupNftTCP() (*sut, error) {
	if err := s.LoadNftables(); err != nil {
		return nil, err
	}
	pass, tids, err := s.passOnGateway()
	if err != nil {
		return nil, errors.Join(err, s.UnloadNftables())
	}
	return &sut{name: SysNft, threads: tids, drops: s.NftDrops, close: func() error { return errors.Join(pass(), s.UnloadNftables()) }}, nil
}

// passOnGateway attaches count-and-pass programs to every gateway interface (NAPI, so
// the stack's receive work runs in threads on the SUT core).
func (s *Scene) passOnGateway() (func() error, []int, error) {
	var cps []*dataplane.CountPass
	undo := func() error {
		var errs []error
		for _, c := range cps {
			errs = append(errs, c.Close())
		}
		return errors.Join(errs...)
	}
	gw := s.Topo.GW
	err := gw.Do(func() error {
		for _, n := range s.GatewayIfaces() {
			l, err := gw.Link(n)
			if err != nil {
				return err
			}
			c, err := dataplane.AttachCountPass(l.Attrs().Index)
			if err != nil {
				return err
			}
			cps = append(cps, c)
		}
		return nil
	})
	if err != nil {
		return nil, nil, errors.Join(err, undo())
	}
	tids, err := threadNAPI(gw, sutCPU, rtPrio, s.GatewayIfaces()...)
	if err != nil {
		return nil, nil, errors.Join(err, undo())
	}
	return undo, tids, nil
}

// kthreads lists the pids whose name starts with prefix.
// kthreadsNamed lists the threads named name: in full, as this kernel shows a
// kthread's name, or cut to the 15 bytes of a task's comm, as older ones do.
func kthreadsNamed(name string) ([]int, error) {
	names := []string{name}
	if len(name) > 15 {
		names = append(names, name[:15])
	}
	var out []int
	for _, n := range names {
		tids, err := kthreads(n + "\n") // the whole comm
		if err != nil {
			return nil, err
		}
		out = append(out, tids...) // a comm is one of the names at most
	}
	return out, nil
}

// kthreads lists the threads whose /proc comm (newline included) starts with prefix.
func kthreads(prefix string) ([]int, error) {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	var out []int
	for _, e := range ents {
		var pid int
		if _, err := fmt.Sscanf(e.Name(), "%d", &pid); err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "comm"))
		if err == nil && strings.HasPrefix(string(b), prefix) {
			out = append(out, pid)
		}
	}
	return out, nil
}
