package dataplane

import (
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/seed4c/moat/internal/netns"
	"github.com/seed4c/moat/internal/packet"
	"github.com/seed4c/moat/lb"
	"github.com/seed4c/moat/tenant"
)

// TestPrivilegedMaglevTablesOfEitherKind: the writer fills mmapable Maglev tables
// through their memory, and, over an outer map pinned by a version whose tables were
// not mmapable, falls back to tables of that kind. Either way the program balances new
// flows over the table just written, before and after a backend's eviction rewrites it.
func TestPrivilegedMaglevTablesOfEitherKind(t *testing.T) {
	netns.RequireRoot(t)
	for _, c := range []struct {
		name     string
		oldPin   bool
		mmapable bool
	}{{"fresh", false, true}, {"older pin", true, false}} {
		t.Run(c.name, func(t *testing.T) {
			env := newGWEnv(t,
				[]envIface{{"c1", 1500, true, 0}, {"b1", 1500, true, 0}},
				[]envRoute{{table: 100, dst: "10.0.0.0/24", dev: "c1"}, {table: 100, dst: "10.1.0.0/24", dev: "b1"}},
				[]envNeigh{{"c1", "10.0.0.2"}, {"b1", "10.1.0.1"}, {"b1", "10.1.0.2"}}, nil)
			opts := DefaultOptions(netns.UniqueName("t"))
			opts.MaxFlows = 1 << 12
			t.Cleanup(func() { Remove(opts) })
			if c.oldPin {
				pinOldMaglevTables(t, opts)
			}
			if err := env.gw.Do(func() (err error) { env.dp, err = Open(opts); return err }); err != nil {
				t.Fatal(err)
			}
			defer env.dp.Close()
			dp := env.dp
			for _, st := range []lb.State{lb.StateAdmitted, lb.StateEvicted} {
				cfg := smallConfig(lb.StateAdmitted)
				cfg.Tenants[0].Services[0].Backends[0].State = st // w1 10.1.0.1
				compiled, err := tenant.Compile(cfg, env, tenant.IDs{}, tenant.DefaultLimits())
				if err != nil {
					t.Fatal(err)
				}
				env.apply(t, compiled)
				got := map[netip.Addr]int{}
				env.gw.Do(func() error {
					for sport := uint16(2000); sport < 2064; sport++ {
						v, out := runProg(t, dp, clientFrame(6, sport, 80, packet.SYN), env.ifindex["c1"])
						if v != XDPRedirect {
							t.Fatalf("%s, w1 %v: new flow %d: verdict %v", c.name, st, sport, v)
						}
						got[netip.AddrFrom4([4]byte(out[30:34]))]++
					}
					return nil
				})
				if st == lb.StateAdmitted && (got[ap("10.1.0.1")] == 0 || got[ap("10.1.0.2")] == 0) {
					t.Errorf("%s: both admitted, new flows went to %v", c.name, got)
				}
				if st == lb.StateEvicted && (got[ap("10.1.0.1")] != 0 || got[ap("10.1.0.2")] != 64) {
					t.Errorf("%s: w1 evicted, new flows went to %v", c.name, got)
				}
			}
			var (
				slot  uint32
				inner *ebpf.Map
				kinds int
			)
			for it := dp.objs.MaglevTables.Iterate(); it.Next(&slot, &inner); kinds++ {
				if got := inner.Flags()&unix.BPF_F_MMAPABLE != 0; got != c.mmapable {
					t.Errorf("%s: table in slot %d mmapable %v, want %v", c.name, slot, got, c.mmapable)
				}
				inner.Close()
			}
			if kinds == 0 {
				t.Errorf("%s: no table in the outer map", c.name)
			}
		})
	}
}

// pinOldMaglevTables pins, where Open will find it, an outer Maglev map whose tables
// are of the kind before mmapable tables.
func pinOldMaglevTables(t *testing.T, opts Options) {
	t.Helper()
	spec, err := loadGateway()
	if err != nil {
		t.Fatal(err)
	}
	ms := spec.Maps[gatewayMapMaglevTables].Copy()
	ms.Pinning = ebpf.PinNone
	ms.InnerMap.Flags &^= unix.BPF_F_MMAPABLE
	if err := ensureBPFFS(opts.PinRoot); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(opts.PinDir(), 0o700); err != nil {
		t.Fatal(err)
	}
	old, err := ebpf.NewMap(ms)
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	if err := old.Pin(filepath.Join(opts.PinDir(), ms.Name)); err != nil {
		t.Fatal(err)
	}
}
