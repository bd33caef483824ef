package bench

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/vishvananda/netlink/nl"
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
	req := nl.NewNetlinkRequest(0x20, unix.NLM_F_DUMP)
	req.AddData(genlHeader{cmd: netdevCmdNAPIGet, version: 1})
	req.AddData(nl.NewRtAttr(netdevANAPIIfidx, nl.Uint32Attr(7)))
	b := req.Serialize()
	want := []byte{netdevCmdNAPIGet, 1, 0, 0, 8, 0, netdevANAPIIfidx, 0}
	want = binary.NativeEndian.AppendUint32(want, 7)
	if got := b[unix.NLMSG_HDRLEN:]; !bytes.Equal(got, want) {
		t.Fatalf("request after the netlink header: % x, want % x", got, want)
	}
	if l := binary.NativeEndian.Uint32(b); int(l) != len(b) {
		t.Fatalf("netlink header says %d bytes, request has %d", l, len(b))
	}
}
