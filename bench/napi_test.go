package bench

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/seed4c/moat/internal/netns"
)

// Two namespaces whose devices have the same name each get their own NAPI thread,
// found through the dump filtered to the device, never the other's: every far end of
// the scene is an eth0, and a lookup by name alone would take both.
func TestPrivilegedNAPIThreadsOfOneNamespace(t *testing.T) {
	netns.RequireRoot(t)
	peer := newTestHost(t, "npp")
	threads := map[string][]int{}
	for _, side := range []string{"a", "b"} {
		h := newTestHost(t, "np"+side)
		if _, _, err := netns.Veth(h, "eth0", peer, side+"0"); err != nil {
			t.Fatal(err)
		}
		s, err := AttachSink(h, "eth0") // a veth has NAPI while an XDP program is attached
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		if err := setThreaded(h, true, "eth0"); err != nil {
			t.Fatal(err)
		}
		tids, err := napiThreads(h, "eth0")
		if err != nil {
			t.Fatal(err)
		}
		if len(tids) != 1 { // one receive queue, one NAPI instance
			t.Fatalf("%s: NAPI threads %v, want one", side, tids)
		}
		comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", tids[0]))
		if err != nil || !strings.HasPrefix(string(comm), "napi/eth0-") {
			t.Fatalf("%s: thread %d is %q (%v), want napi/eth0-*", side, tids[0], comm, err)
		}
		threads[side] = tids
	}
	if slices.Equal(threads["a"], threads["b"]) {
		t.Fatalf("both namespaces' eth0 have NAPI thread %v", threads["a"])
	}
}

func newTestHost(t *testing.T, prefix string) *netns.Host {
	t.Helper()
	h, err := netns.NewHost(netns.UniqueName(prefix))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	return h
}

// The request carries struct genlmsghdr whole, its reserved field 0 (the kernel
// refuses anything else), then the device filter.
func TestNAPIDumpRequestHeader(t *testing.T) {
	b := napiDumpRequest(0x20, 7).Serialize()
	want := []byte{netdevCmdNAPIGet, 1, 0, 0}
	want = binary.NativeEndian.AppendUint16(want, 8) // the attribute: length, type, ifindex
	want = binary.NativeEndian.AppendUint16(want, netdevANAPIIfidx)
	want = binary.NativeEndian.AppendUint32(want, 7)
	if got := b[unix.NLMSG_HDRLEN:]; !bytes.Equal(got, want) {
		t.Fatalf("request after the netlink header: % x, want % x", got, want)
	}
	if l := binary.NativeEndian.Uint32(b); int(l) != len(b) {
		t.Fatalf("netlink header says %d bytes, request has %d", l, len(b))
	}
}

// A dump's own failure ends it with NLMSG_DONE carrying the errno: a device that is
// not there is ENODEV, not a device without NAPI threads.
func TestPrivilegedNAPIDumpOfMissingDevice(t *testing.T) {
	netns.RequireRoot(t)
	h := newTestHost(t, "npm")
	err := h.Do(func() error {
		_, err := dumpNAPI(1 << 30)
		return err
	})
	if !errors.Is(err, unix.ENODEV) {
		t.Fatalf("dump of a missing device: %v, want ENODEV", err)
	}
}
