package bench

import (
	"encoding/binary"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"

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
// read from the netdev netlink family (a dump filtered to the device) and checked
// against the threads' names. There is no lookup by name alone: every far end's device
// is eth0, so a name cannot tell one namespace's thread from another's.
func napiThreads(h *netns.Host, ifname string) ([]int, error) {
	l, err := h.Link(ifname)
	if err != nil {
		return nil, err
	}
	ifindex := uint32(l.Attrs().Index)
	var pids []int
	err = h.Do(func() error {
		instances, err := dumpNAPI(ifindex)
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

// genlHeader is struct genlmsghdr whole. nl.Genlmsg declares only its command and
// version, and serializes the 4-byte header from a 2-byte struct: the reserved field
// is whatever follows in memory, and the kernel refuses a request whose reserved
// field is not 0 with EINVAL ("genlmsghdr.reserved field is not 0"). That made the
// dumps here fail now and then, which was taken for a race with devices changing.
type genlHeader struct{ cmd, version uint8 }

func (g genlHeader) Len() int          { return nl.SizeofGenlmsg }
func (g genlHeader) Serialize() []byte { return []byte{g.cmd, g.version, 0, 0} }

// dumpNAPI dumps the NAPI instances of the device ifindex of the calling thread's
// namespace.
func dumpNAPI(ifindex uint32) ([]napiInstance, error) {
	fam, err := netlink.GenlFamilyGet(netdevFamilyName)
	if err != nil {
		return nil, fmt.Errorf("netdev netlink family: %w", err)
	}
	// The family's dump replies lack NLM_F_MULTI, which nl's Execute takes for the
	// end of the answer: read until NLMSG_DONE here.
	sock, err := nl.Subscribe(unix.NETLINK_GENERIC)
	if err != nil {
		return nil, fmt.Errorf("netlink socket: %w", err)
	}
	defer sock.Close()
	if err := sock.Send(napiDumpRequest(fam.ID, ifindex)); err != nil {
		return nil, err
	}
	var msgs [][]byte
	for {
		ms, _, err := sock.Receive()
		if err != nil {
			return nil, err
		}
		for _, m := range ms {
			if m.Header.Flags&unix.NLM_F_DUMP_INTR != 0 {
				// The device's instances changed during the dump: what it holds may
				// be neither the old set nor the new.
				return nil, fmt.Errorf("NAPI dump interrupted by a change: %w", unix.EAGAIN)
			}
			switch m.Header.Type {
			case unix.NLMSG_DONE, unix.NLMSG_ERROR:
				// Both carry an errno first: a dump's failure (ENODEV for a device
				// gone) ends it with NLMSG_DONE, not NLMSG_ERROR.
				if len(m.Data) >= 4 {
					if errno := int32(binary.NativeEndian.Uint32(m.Data)); errno != 0 {
						return nil, unix.Errno(-errno)
					}
				}
				return parseNAPIDump(msgs)
			}
			msgs = append(msgs, m.Data)
		}
	}
}

// napiDumpRequest is the request for a dump of the NAPI instances of ifindex alone:
// the kernel then walks no other device.
func napiDumpRequest(family uint16, ifindex uint32) *nl.NetlinkRequest {
	req := nl.NewNetlinkRequest(int(family), unix.NLM_F_DUMP)
	req.AddData(genlHeader{cmd: netdevCmdNAPIGet, version: 1})
	req.AddData(nl.NewRtAttr(netdevANAPIIfidx, nl.Uint32Attr(ifindex)))
	return req
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
