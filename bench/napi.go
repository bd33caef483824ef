package bench

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"

	"github.com/seed4c/moat/internal/netns"
)

// The netdev generic netlink family (include/uapi/linux/netdev.h).
const (
	netdevCmdNAPIGet  = 11
	netdevANAPIIfidx  = 1
	netdevANAPIID     = 2
	netdevANAPIPID    = 4
	netdevFamilyName  = "netdev"
	napiThreadComment = "napi/"
)

// setThreaded switches the NAPI instances of interfaces of h to kernel threads (or
// back). A veth has NAPI only while an XDP program is attached, so call it after
// attaching. /sys/class/net shows the namespace that mounted sysfs: ip netns exec
// mounts the host's own.
func setThreaded(h *netns.Host, on bool, ifnames ...string) error {
	v := "0"
	if on {
		v = "1"
	}
	var sh strings.Builder
	for _, n := range ifnames {
		fmt.Fprintf(&sh, "echo %s > /sys/class/net/%s/threaded || exit 1; ", v, n)
	}
	out, err := exec.Command("ip", "netns", "exec", h.Name, "sh", "-c", sh.String()).CombinedOutput()
	if err != nil {
		return fmt.Errorf("threaded NAPI on %v in %s: %v: %s", ifnames, h.Name, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// napiThreads returns the kernel threads that run the NAPI instances of ifname in h,
// read from the netdev netlink family and checked against the threads' names.
func napiThreads(h *netns.Host, ifname string) (pids []int, err error) {
	// The dump sometimes fails with EINVAL while the namespace's devices change
	// (a NAPI instance being created or deleted): try again.
	// Past that, fall back to the threads' names: only this harness makes NAPI
	// threaded on this machine, and every far end's eth0 is treated alike.
	for try := 0; try < 5; try++ {
		if pids, err = napiThreadsOnce(h, ifname); !errors.Is(err, unix.EINVAL) {
			return pids, err
		}
		time.Sleep(10 * time.Millisecond)
	}
	return napiThreadsByName(ifname)
}

// napiThreadsByName finds NAPI threads by name ("napi/<ifname>-<id>").
func napiThreadsByName(ifname string) ([]int, error) {
	pids, err := kthreads(napiThreadComment + ifname + "-")
	if err == nil && len(pids) == 0 {
		err = fmt.Errorf("no NAPI thread named %s%s-*", napiThreadComment, ifname)
	}
	return pids, err
}

func napiThreadsOnce(h *netns.Host, ifname string) ([]int, error) {
	l, err := h.Link(ifname)
	if err != nil {
		return nil, err
	}
	ifindex := uint32(l.Attrs().Index)
	var pids []int
	err = h.Do(func() error {
		fam, err := netlink.GenlFamilyGet(netdevFamilyName)
		if err != nil {
			return fmt.Errorf("netdev netlink family: %w", err)
		}
		// The family's dump replies lack NLM_F_MULTI, which nl's Execute takes for the
		// end of the answer: read until NLMSG_DONE here.
		sock, err := nl.Subscribe(unix.NETLINK_GENERIC)
		if err != nil {
			return fmt.Errorf("netlink socket: %w", err)
		}
		defer sock.Close()
		req := nl.NewNetlinkRequest(int(fam.ID), unix.NLM_F_DUMP)
		req.AddData(&nl.Genlmsg{Command: netdevCmdNAPIGet, Version: 1})
		if err := sock.Send(req); err != nil {
			return fmt.Errorf("dump NAPI of %s: %w", ifname, err)
		}
		var msgs [][]byte
	read:
		for {
			ms, _, err := sock.Receive()
			if err != nil {
				return fmt.Errorf("dump NAPI of %s: %w", ifname, err)
			}
			for _, m := range ms {
				switch m.Header.Type {
				case unix.NLMSG_DONE:
					break read
				case unix.NLMSG_ERROR:
					if len(m.Data) >= 4 {
						if errno := int32(binary.NativeEndian.Uint32(m.Data)); errno != 0 {
							return fmt.Errorf("dump NAPI of %s: %w", ifname, unix.Errno(-errno))
						}
					}
					break read
				}
				msgs = append(msgs, m.Data)
			}
		}
		instances, err := parseNAPIDump(msgs)
		if err != nil {
			return fmt.Errorf("dump NAPI of %s: %w", ifname, err)
		}
		for _, n := range instances {
			if n.ifindex != ifindex || n.pid == 0 {
				continue
			}
			// The kernel may hand a NAPI instance re-created on the same device the
			// thread of its predecessor, named after the old id.
			want := fmt.Sprintf("%s%s-", napiThreadComment, ifname)
			comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", n.pid))
			if err != nil || !strings.HasPrefix(strings.TrimSpace(string(comm)), want) {
				return fmt.Errorf("NAPI thread %d of %s (id %d) is %q, want %s*", n.pid, ifname, n.id, strings.TrimSpace(string(comm)), want)
			}
			pids = append(pids, int(n.pid))
		}
		return nil
	})
	if err == nil && len(pids) == 0 {
		err = fmt.Errorf("%s in %s has no NAPI thread (threaded NAPI off, or no XDP program?)", ifname, h.Name)
	}
	return pids, err
}

// napiInstance is one NAPI instance of a netdev family dump: its device, its id, and
// the kernel thread that polls it (0: not threaded).
type napiInstance struct {
	ifindex, id, pid uint32
}

// parseNAPIDump reads the messages of a NAPI dump (generic netlink header, then
// attributes). A message too short for the header is skipped, and so is an attribute
// shorter than its 32-bit value; an attribute that overruns its message is an error.
func parseNAPIDump(msgs [][]byte) ([]napiInstance, error) {
	var out []napiInstance
	for _, m := range msgs {
		if len(m) < nl.SizeofGenlmsg {
			continue
		}
		var n napiInstance
		err := walkNetlinkAttrs(m[nl.SizeofGenlmsg:], func(typ uint16, val []byte) {
			if len(val) < 4 {
				return
			}
			v := binary.NativeEndian.Uint32(val)
			switch typ {
			case netdevANAPIIfidx:
				n.ifindex = v
			case netdevANAPIID:
				n.id = v
			case netdevANAPIPID:
				n.pid = v
			}
		})
		if err != nil {
			return nil, fmt.Errorf("NAPI attributes: %w", err)
		}
		out = append(out, n)
	}
	return out, nil
}

// nlaTypeMask leaves an attribute's type without its NLA_F_NESTED and
// NLA_F_NET_BYTEORDER flags (include/uapi/linux/netlink.h).
const nlaTypeMask = 0x3fff

// walkNetlinkAttrs calls fn with the type and value of each attribute in b (struct
// nlattr: a 16-bit length that counts its 4-byte header, a 16-bit type, the value
// padded to 4 bytes; the last one's padding may be missing). nl.ParseRouteAttr
// panics on a last attribute without its padding, which FuzzParseNAPIDump found.
func walkNetlinkAttrs(b []byte, fn func(typ uint16, val []byte)) error {
	for len(b) > 0 {
		if len(b) < unix.NLA_HDRLEN {
			return fmt.Errorf("%d bytes left, shorter than an attribute header", len(b))
		}
		l := int(binary.NativeEndian.Uint16(b))
		if l < unix.NLA_HDRLEN || l > len(b) {
			return fmt.Errorf("attribute of length %d with %d bytes left", l, len(b))
		}
		fn(binary.NativeEndian.Uint16(b[2:])&nlaTypeMask, b[unix.NLA_HDRLEN:l])
		b = b[min((l+unix.NLA_ALIGNTO-1)&^(unix.NLA_ALIGNTO-1), len(b)):]
	}
	return nil
}

// pinThread binds a thread (kernel threads included) to cpu and, when fifo > 0, makes
// it SCHED_FIFO at that priority (0: SCHED_OTHER).
func pinThread(tid, cpu, fifo int) error {
	var set unix.CPUSet
	set.Set(cpu)
	if err := unix.SchedSetaffinity(tid, &set); err != nil {
		// A kthread bound to its CPU (a CPUMAP's) refuses; fine if it is ours.
		var cur unix.CPUSet
		if unix.SchedGetaffinity(tid, &cur) != nil || cur != set {
			return fmt.Errorf("pin thread %d to CPU %d: %w", tid, cpu, err)
		}
	}
	attr := unix.SchedAttr{Size: unix.SizeofSchedAttr, Policy: unix.SCHED_NORMAL}
	if fifo > 0 {
		attr.Policy, attr.Priority = unix.SCHED_FIFO, uint32(fifo)
	}
	if err := unix.SchedSetAttr(tid, &attr, 0); err != nil {
		return fmt.Errorf("scheduling policy of thread %d: %w", tid, err)
	}
	return nil
}

// threadCPUTime returns a thread's run time in nanoseconds (/proc/<tid>/schedstat):
// the scheduler's clock, so softirq work done on the thread is included.
func threadCPUTime(tid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/schedstat", tid))
	if err != nil {
		return 0, err
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0, fmt.Errorf("schedstat of %d: %q", tid, b)
	}
	return strconv.ParseInt(f[0], 10, 64)
}
