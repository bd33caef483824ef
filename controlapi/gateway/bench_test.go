package gateway_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/seed4c/moat/attest"
	"github.com/seed4c/moat/controlapi/api"
	"github.com/seed4c/moat/controlapi/auth"
	"github.com/seed4c/moat/controlapi/kv"
	"github.com/seed4c/moat/controlapi/reconcile"
	"github.com/seed4c/moat/controlapi/state"
	"github.com/seed4c/moat/dataplane"
	"github.com/seed4c/moat/internal/netns"
	"github.com/seed4c/moat/internal/packet"
	"github.com/seed4c/moat/tenant"
)

const digest = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"

// nsApplier writes the maps from inside the gateway's namespace (the redirect map
// resolves interfaces there), as the daemon does by running in it.
type nsApplier struct {
	host *netns.Host
	w    *dataplane.Writer
}

func (a nsApplier) Apply(c *tenant.Compiled) error {
	return a.host.Do(func() error { return a.w.Apply(c) })
}

// Evict and Evicted make nsApplier the Evicter the daemon's writer is (they need no
// namespace).
func (a nsApplier) Evict(ids []uint32) error   { return a.w.Evict(ids) }
func (a nsApplier) Evicted() ([]uint32, error) { return a.w.Evicted() }

var _ reconcile.Evicter = nsApplier{}

type ifmap map[string]uint32

func (m ifmap) Index(n string) (uint32, error) {
	if i, ok := m[n]; ok {
		return i, nil
	}
	return 0, fmt.Errorf("no interface %s", n)
}

// BenchmarkAttestationToDataPath measures what the gateway adds between an
// attestation result and the fast path: from the verifier publishing a result to the
// first frame that the real program (BPF_PROG_TEST_RUN) forwards to the backend
// (admission), and to the first frame of an established flow it no longer forwards
// (eviction). The agent's round trip is not included: it is the agent's interval.
//
//	go test -run '^$' -bench AttestationToDataPath -benchtime 50x ./controlapi/gateway/
func BenchmarkAttestationToDataPath(b *testing.B) {
	netns.RequireRoot(b)
	gw, err := netns.NewHost(netns.UniqueName("bgw"))
	if err != nil {
		b.Fatal(err)
	}
	defer gw.Close()
	sink, err := netns.NewHost(netns.UniqueName("bsk"))
	if err != nil {
		b.Fatal(err)
	}
	defer sink.Close()
	gw.Sysctl("net/ipv4/conf/all/forwarding", "1")
	ifs := ifmap{}
	for _, n := range []string{"c1", "b1"} {
		l, _, err := netns.Veth(gw, n, sink, "s"+n)
		if err != nil {
			b.Fatal(err)
		}
		ifs[n] = uint32(l.Attrs().Index)
	}
	for _, r := range []netns.Route{{Dst: "10.0.0.0/24", Dev: "c1", Table: 100}, {Dst: "10.1.0.0/24", Dev: "b1", Table: 100}} {
		if err := gw.AddRoute(r); err != nil {
			b.Fatal(err)
		}
	}
	gw.AddNeighbor("c1", "10.0.0.2", []byte{2, 0, 0, 0, 0, 2})
	gw.AddNeighbor("b1", "10.1.0.1", []byte{2, 0, 0, 0, 1, 1})

	// The daemon's store: bbolt, every commit fsync'ed (free on a tmpfs TMPDIR).
	db, err := kv.OpenBolt(filepath.Join(b.TempDir(), "state.db"), 5*time.Second)
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	st := state.New(db, nil, nil)
	for _, err := range []error{
		second(st.CreateTenant(state.Tenant{Name: "a", FIBTable: 100, Attachments: []tenant.Attachment{{Interface: "c1"}, {Interface: "b1"}}})),
		second(st.CreateService(state.Service{Tenant: "a", Name: "web", VIP: netip.MustParseAddr("10.100.0.1"), Port: 80, Protocol: tenant.TCP, MaglevSize: 251})),
		second(st.CreatePolicy(state.Policy{Tenant: "a", Name: "app", References: map[string][]string{"/srv/app": {digest}}})),
		second(st.CreateRule(state.Rule{Tenant: "a", Name: "lan", Sources: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/24")}, Services: []string{"web"}})),
		second(st.CreateBackend(state.Backend{Tenant: "a", Service: "web", Name: "w1", Identity: "h1", Addr: netip.MustParseAddr("10.1.0.1"), Port: 8080, Weight: 1, Policy: "app"})),
	} {
		if err != nil {
			b.Fatal(err)
		}
	}
	opts := dataplane.DefaultOptions(netns.UniqueName("bench"))
	var dp *dataplane.Dataplane
	if err := gw.Do(func() (err error) { dp, err = dataplane.Open(opts); return err }); err != nil {
		b.Fatal(err)
	}
	defer func() { dp.Close(); dataplane.Remove(opts) }()
	rec, err := reconcile.New(reconcile.Config{State: st, Compiler: tenant.NewCompiler(ifs, tenant.DefaultLimits(), tenant.IDs{}),
		Applier: nsApplier{gw, dp.Writer()}})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go rec.Run(ctx)

	frame := func(sport uint16, flags uint8) []byte {
		return packet.Frame{SrcIP: netip.MustParseAddr("10.0.0.2"), DstIP: netip.MustParseAddr("10.100.0.1"), Proto: 6,
			SrcPort: sport, DstPort: 80, TCPFlags: flags}.Build()
	}
	// until polls the real program with f until it gives want, and returns how long.
	until := func(start time.Time, f []byte, want dataplane.Verdict) time.Duration {
		var took time.Duration
		err := gw.Do(func() error {
			for {
				v, _, err := dataplane.TimedRun(dp.Program(), f, ifs["c1"])
				if err != nil {
					return err
				}
				if v == want {
					took = time.Since(start)
					return nil
				}
				if time.Since(start) > 5*time.Second {
					return fmt.Errorf("verdict %s, want %s, after 5 s", v, want)
				}
			}
		})
		if err != nil {
			b.Fatal(err)
		}
		return took
	}
	// The first admission is reported apart (first-admit-ms); the loop measures the
	// steady state.
	for rec.Stats().Passes == 0 { // the start-up pass (which prepares the table slots)
		time.Sleep(time.Millisecond)
	}
	now := time.Now()
	rec.Notify(attest.Result{Subject: "a/h1", Status: attest.StatusAffirming, Issued: now, Expires: now.Add(time.Minute)})
	first := until(now, frame(9999, packet.SYN), dataplane.XDPRedirect)
	now = time.Now()
	rec.Notify(attest.Result{Subject: "a/h1", Status: attest.StatusContraindicated, Issued: now, Expires: now})
	until(now, frame(9999, packet.ACK), dataplane.XDPDrop)

	var admit, evict []time.Duration
	for i := 0; b.Loop(); i++ {
		sport := uint16(10000 + i%50000)
		now := time.Now()
		rec.Notify(attest.Result{Subject: "a/h1", Status: attest.StatusAffirming, Issued: now, Expires: now.Add(time.Minute)})
		admit = append(admit, until(now, frame(sport, packet.SYN), dataplane.XDPRedirect))
		now = time.Now()
		rec.Notify(attest.Result{Subject: "a/h1", Status: attest.StatusContraindicated, Reasons: []string{"reference-value"}, Issued: now, Expires: now})
		evict = append(evict, until(now, frame(sport, packet.ACK), dataplane.XDPDrop))
	}
	b.ReportMetric(float64(first.Microseconds())/1000, "first-admit-ms")
	if testing.Verbose() {
		b.Logf("admit %v\nevict %v", admit, evict)
	}
	for name, d := range map[string][]time.Duration{"admit": admit, "evict": evict} {
		sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
		var sum time.Duration
		for _, x := range d {
			sum += x
		}
		b.ReportMetric(float64(sum.Microseconds())/float64(len(d))/1000, name+"-ms")
		b.ReportMetric(float64(d[len(d)*99/100].Microseconds())/1000, name+"-p99-ms")
	}
}

func second[T any](_ T, err error) error { return err }

// apiBench serves the API on loopback over TLS (the internal CA's kind of
// certificate), with bbolt under it as in the daemon.
func apiBench(b *testing.B) (*httptest.Server, string) {
	kvs, err := kv.OpenBolt(filepath.Join(b.TempDir(), "state.db"), time.Second)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { kvs.Close() })
	st := state.New(kvs, func(c tenant.Config) error {
		return tenant.Validate(c, ifmap{"eth0": 2}, tenant.IDs{}, tenant.DefaultLimits())
	}, nil)
	st.CreateTenant(state.Tenant{Name: "a", Attachments: []tenant.Attachment{{Interface: "eth0"}}})
	st.CreateService(state.Service{Tenant: "a", Name: "web", VIP: netip.MustParseAddr("10.100.0.1"), Port: 80, Protocol: tenant.TCP})
	st.CreateRule(state.Rule{Tenant: "a", Name: "lan", Sources: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/24")}, Services: []string{"web"}})
	toks := auth.New(kvs, nil)
	secret, _, err := toks.Create("bench", auth.RoleTenantAdmin, "a")
	if err != nil {
		b.Fatal(err)
	}
	srv := httptest.NewUnstartedServer((&api.Server{State: st, Tokens: toks}).Handler())
	srv.EnableHTTP2 = true
	srv.StartTLS()
	b.Cleanup(srv.Close)
	return srv, secret
}

// BenchmarkAPIReads: authenticated GETs of a service by a tenant admin, from parallel
// keep-alive clients over TLS.
func BenchmarkAPIReads(b *testing.B) {
	srv, tok := apiBench(b)
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		c := srv.Client()
		for pb.Next() {
			req, _ := http.NewRequest("GET", srv.URL+"/v1/tenants/a/services/web", nil)
			req.Header.Set("Authorization", "Bearer "+tok)
			resp, err := c.Do(req)
			if err != nil || resp.StatusCode != 200 {
				b.Errorf("GET: %v %v", err, resp)
				return
			}
			resp.Body.Close()
		}
	})
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "req/s")
}

// BenchmarkAPIWrites: conditional updates (If-Match), each validated against the
// whole configuration and committed to bbolt (fsync).
func BenchmarkAPIWrites(b *testing.B) {
	srv, tok := apiBench(b)
	c := srv.Client()
	c.Transport.(*http.Transport).TLSClientConfig = &tls.Config{RootCAs: srv.Client().Transport.(*http.Transport).TLSClientConfig.RootCAs}
	version := 1
	start := time.Now()
	for i := 0; b.Loop(); i++ {
		body := fmt.Sprintf(`{"sources":["10.0.%d.0/24"],"services":["web"]}`, i%250)
		req, _ := http.NewRequest("PUT", srv.URL+"/v1/tenants/a/rules/lan", strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+tok)
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("If-Match", fmt.Sprintf(`"%d"`, version))
		resp, err := c.Do(req)
		if err != nil || resp.StatusCode != 200 {
			b.Fatalf("PUT: %v %v", err, resp)
		}
		resp.Body.Close()
		version++
	}
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "writes/s")
}
