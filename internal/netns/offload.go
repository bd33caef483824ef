package netns

import (
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ethtool commands (include/uapi/linux/ethtool.h).
const (
	ethtoolSTXCSUM = 0x00000017
	ethtoolSTSO    = 0x0000001f
	ethtoolSGSO    = 0x00000024
	ethtoolSGRO    = 0x0000002c
)

type ethtoolValue struct {
	cmd  uint32
	data uint32
}

type ifreqData struct {
	name [unix.IFNAMSIZ]byte
	data uintptr
}

// DisableOffloads turns off TX checksum offload, TSO and GSO on an interface of the
// host. Frames a namespace sends through a veth otherwise carry a partial checksum
// (the pseudo-header sum, for a NIC that will never exist) and segments far larger
// than the MTU: a real wire never shows the fast path either of those.
func (h *Host) DisableOffloads(ifname string) error {
	return h.ethtoolOff(ifname, ethtoolSTXCSUM, ethtoolSTSO, ethtoolSGSO)
}

// DisableGRO turns off generic receive offload on an interface of the host: a router
// that should forward frames one by one, as they came, rather than merged.
func (h *Host) DisableGRO(ifname string) error {
	return h.ethtoolOff(ifname, ethtoolSGRO)
}

func (h *Host) ethtoolOff(ifname string, cmds ...uint32) error {
	return h.Do(func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("ethtool socket: %w", err)
		}
		defer unix.Close(fd)
		for _, cmd := range cmds {
			v := ethtoolValue{cmd: cmd, data: 0}
			var req ifreqData
			copy(req.name[:], ifname)
			req.data = uintptr(unsafe.Pointer(&v))
			if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.SIOCETHTOOL, uintptr(unsafe.Pointer(&req))); errno != 0 {
				return fmt.Errorf("ethtool %#x off on %s in %s: %w", cmd, ifname, h.Name, errno)
			}
		}
		return nil
	})
}
