package dataplane

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
)

// AttachMode is how the program sits on an interface.
type AttachMode string

// Attach modes: native (in the driver) is what moat wants; generic (on the skb) is a
// logged fallback for drivers without XDP support.
const (
	ModeNative  AttachMode = "native"
	ModeGeneric AttachMode = "generic"
)

func (d *Dataplane) linkPin(ifname string) string {
	return filepath.Join(d.opts.PinDir(), "links", "xdp_"+ifname)
}

// Attach puts the fast path on ifname through a pinned bpf_link. When the instance
// already has a link there (a restarted daemon), the link is switched to this
// process's program atomically: no frame meets an interface without a program.
// Native mode is tried first; generic mode is a fallback that is logged.
func (d *Dataplane) Attach(ifname string) (AttachMode, error) {
	iface, err := net.InterfaceByName(ifname)
	if err != nil {
		return "", fmt.Errorf("attach xdp to %s: %w", ifname, err)
	}
	pin := d.linkPin(ifname)
	if l, err := link.LoadPinnedLink(pin, nil); err == nil {
		defer l.Close()
		info, err := l.Info()
		if err == nil && info.XDP() != nil && int(info.XDP().Ifindex) == iface.Index {
			if err := l.Update(d.objs.XdpGateway); err != nil {
				return "", fmt.Errorf("attach xdp to %s: replace program of pinned link: %w", ifname, err)
			}
			return attachedMode(iface.Index)
		}
		// A stale pin: the interface was recreated. Drop it and attach afresh.
		if err := l.Unpin(); err != nil {
			return "", fmt.Errorf("attach xdp to %s: remove stale link pin: %w", ifname, err)
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("attach xdp to %s: open pinned link %s: %w", ifname, pin, err)
	}

	mode := ModeNative
	l, err := link.AttachXDP(link.XDPOptions{Program: d.objs.XdpGateway, Interface: iface.Index, Flags: link.XDPDriverMode})
	if err != nil {
		d.log.Warn("native XDP refused, falling back to generic mode", "interface", ifname, "error", err)
		mode = ModeGeneric
		l, err = link.AttachXDP(link.XDPOptions{Program: d.objs.XdpGateway, Interface: iface.Index, Flags: link.XDPGenericMode})
		if err != nil {
			return "", fmt.Errorf("attach xdp to %s: %w", ifname, err)
		}
	}
	defer l.Close()
	if err := l.Pin(pin); err != nil {
		return "", fmt.Errorf("attach xdp to %s: pin link at %s: %w", ifname, pin, err)
	}
	return mode, nil
}

// attachedMode asks the kernel how the XDP program on ifindex is attached.
func attachedMode(ifindex int) (AttachMode, error) {
	l, err := netlink.LinkByIndex(ifindex)
	if err != nil {
		return "", fmt.Errorf("read xdp mode of ifindex %d: %w", ifindex, err)
	}
	if x := l.Attrs().Xdp; x != nil && x.AttachMode == nl.XDP_ATTACHED_SKB {
		return ModeGeneric, nil
	}
	return ModeNative, nil
}

// Detach removes the fast path from ifname.
func (d *Dataplane) Detach(ifname string) error {
	return detachPin(d.linkPin(ifname))
}

func detachPin(pin string) error {
	l, err := link.LoadPinnedLink(pin, nil)
	if err != nil {
		return fmt.Errorf("detach %s: %w", filepath.Base(pin), err)
	}
	defer l.Close()
	if err := l.Unpin(); err != nil {
		return fmt.Errorf("detach %s: unpin: %w", filepath.Base(pin), err)
	}
	return nil // closing the last reference detaches the program
}

// AttachedInterfaces lists the interfaces with a pinned link of this instance.
func (d *Dataplane) AttachedInterfaces() ([]string, error) {
	return pinnedLinks(d.opts.PinDir())
}

func pinnedLinks(dir string) ([]string, error) {
	entries, err := os.ReadDir(filepath.Join(dir, "links"))
	if err != nil {
		return nil, fmt.Errorf("list links of %s: %w", dir, err)
	}
	var out []string
	for _, e := range entries {
		if name, ok := strings.CutPrefix(e.Name(), "xdp_"); ok {
			out = append(out, name)
		}
	}
	return out, nil
}

// Remove detaches the instance from every interface and deletes its pins: the fast
// path is gone once the last process closes its handles.
func Remove(opts Options) error {
	dir := opts.PinDir()
	names, err := pinnedLinks(dir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	var errs []error
	for _, n := range names {
		if err := detachPin(filepath.Join(dir, "links", "xdp_"+n)); err != nil {
			errs = append(errs, err)
		}
	}
	if err := os.RemoveAll(dir); err != nil {
		errs = append(errs, fmt.Errorf("remove pins %s: %w", dir, err))
	}
	return errors.Join(errs...)
}

// CountPass is the floor program (count and pass) attached to one interface, unpinned:
// it lives as long as this handle. Tests put it on the far end of a veth, where
// redirected frames are delivered only to an interface with an XDP program;
// benchmarks compare moat with it.
type CountPass struct {
	prog  *ebpf.Program
	stats *ebpf.Map
	link  link.Link
}

// AttachCountPass loads a fresh floor program and attaches it to ifindex in the
// caller's network namespace.
func AttachCountPass(ifindex int) (*CountPass, error) {
	prog, stats, err := loadFloor()
	if err != nil {
		return nil, err
	}
	l, err := link.AttachXDP(link.XDPOptions{Program: prog, Interface: ifindex, Flags: link.XDPDriverMode})
	if err != nil {
		prog.Close()
		stats.Close()
		return nil, fmt.Errorf("attach count-pass program to ifindex %d: %w", ifindex, err)
	}
	return &CountPass{prog: prog, stats: stats, link: l}, nil
}

// loadFloor loads the count-and-pass program alone, with its own counter.
func loadFloor() (*ebpf.Program, *ebpf.Map, error) {
	spec, err := loadGateway()
	if err != nil {
		return nil, nil, err
	}
	var objs struct {
		Prog  *ebpf.Program `ebpf:"xdp_count_pass"`
		Stats *ebpf.Map     `ebpf:"floor_stats"`
	}
	if err := spec.LoadAndAssign(&objs, nil); err != nil {
		return nil, nil, fmt.Errorf("load count-pass program: %w", err)
	}
	return objs.Prog, objs.Stats, nil
}

// Close detaches and unloads the program.
func (c *CountPass) Close() error {
	return errors.Join(c.link.Close(), c.prog.Close(), c.stats.Close())
}
