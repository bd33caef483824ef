package certs

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"io"
	"io/fs"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/letsencrypt/pebble/v2/ca"
	"github.com/letsencrypt/pebble/v2/db"
	"github.com/letsencrypt/pebble/v2/va"
	"github.com/letsencrypt/pebble/v2/wfe"
	"github.com/miekg/dns"
)

// The ACME tests run Pebble, Let's Encrypt's test ACME server, in the test's process,
// wired the way its cmd/pebble does it. Its validation authority really validates
// TLS-ALPN-01: it resolves the names through the test's DNS server (gateway.moat.test
// → 127.0.0.1) and connects to the port moat answers challenges on.

const acmeName = "gateway.moat.test"

// pebbleCA is a running Pebble.
type pebbleCA struct {
	// Directory is the ACME directory URL; Roots trusts Pebble's HTTPS listener.
	Directory string
	Roots     *x509.CertPool
	mgmt      *httptest.Server
	// newOrders and newAccounts count the ACME requests that create them.
	newOrders, newAccounts atomic.Int32
	logs                   *lockedBuffer
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// startPebble starts Pebble with its validation authority connecting to tlsALPNPort
// for TLS-ALPN-01 and resolving names through resolver; blocked names are refused.
func startPebble(t *testing.T, tlsALPNPort int, resolver string, blocked ...string) *pebbleCA {
	t.Helper()
	// Full speed and deterministic: no random validation sleeps, no rejected nonces,
	// and every order goes through a fresh validation (no authorization reuse).
	t.Setenv("PEBBLE_VA_NOSLEEP", "1")
	t.Setenv("PEBBLE_WFE_NONCEREJECT", "0")
	t.Setenv("PEBBLE_AUTHZREUSE", "0")
	p := &pebbleCA{logs: &lockedBuffer{}}
	logger := log.New(p.logs, "pebble ", log.Lmicroseconds)
	store := db.NewMemoryStore()
	for _, name := range blocked {
		if err := store.AddBlockedDomain(name); err != nil {
			t.Fatal(err)
		}
	}
	authority := ca.New(logger, store, "", "ecdsa", 0, 1, map[string]ca.Profile{"default": {Description: "test"}})
	validator := va.New(logger, 0, tlsALPNPort, false, resolver, store)
	front := wfe.New(logger, store, validator, authority, []string{"pebble.letsencrypt.org"}, false, false, 0, 0)
	acme := front.Handler()
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost {
			switch r.URL.Path {
			case "/order-plz":
				p.newOrders.Add(1)
			case "/sign-me-up":
				p.newAccounts.Add(1)
			}
		}
		acme.ServeHTTP(w, r)
	}))
	srv.Config.ErrorLog = logger // handshakes of clients that do not trust it
	srv.StartTLS()
	p.mgmt = httptest.NewTLSServer(front.ManagementHandler())
	t.Cleanup(func() {
		srv.Close()
		p.mgmt.Close()
		if t.Failed() {
			t.Logf("Pebble's log:\n%s", p.logs)
		}
	})
	p.Directory = srv.URL + wfe.DirectoryPath
	p.Roots = x509.NewCertPool()
	p.Roots.AddCert(srv.Certificate())
	return p
}

// Root is Pebble's issuing root, from its management interface.
func (p *pebbleCA) Root(t *testing.T) *x509.Certificate {
	t.Helper()
	resp, err := p.mgmt.Client().Get(p.mgmt.URL + wfe.RootCertPath + "0")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	block, _ := pem.Decode(body)
	if resp.StatusCode != http.StatusOK || block == nil {
		t.Fatalf("Pebble's root: %s %q", resp.Status, body)
	}
	root, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return root
}

// recorder is a slog handler keeping every record with its attributes.
type recorder struct {
	attrs []slog.Attr
	log   *recordLog
}

type recordLog struct {
	mu      sync.Mutex
	records []record
}

type record struct {
	Level slog.Level
	Msg   string
	attrs map[string]any
}

func newRecorder() *recorder { return &recorder{log: &recordLog{}} }

func (r *recorder) Enabled(context.Context, slog.Level) bool { return true }

func (r *recorder) WithAttrs(as []slog.Attr) slog.Handler {
	return &recorder{attrs: append(slices.Clip(r.attrs), as...), log: r.log}
}

func (r *recorder) WithGroup(string) slog.Handler { return r }

func (r *recorder) Handle(_ context.Context, rec slog.Record) error {
	got := record{Level: rec.Level, Msg: rec.Message, attrs: map[string]any{}}
	for _, a := range r.attrs {
		got.attrs[a.Key] = a.Value.Any()
	}
	rec.Attrs(func(a slog.Attr) bool { got.attrs[a.Key] = a.Value.Any(); return true })
	r.log.mu.Lock()
	defer r.log.mu.Unlock()
	r.log.records = append(r.log.records, got)
	return nil
}

// find is the first record with message msg, or nil.
func (r *recorder) find(msg string) *record {
	r.log.mu.Lock()
	defer r.log.mu.Unlock()
	for _, rec := range r.log.records {
		if rec.Msg == msg {
			return &rec
		}
	}
	return nil
}

// startDNS serves A records for names (name → IPv4) over TCP, the way Pebble's
// validation authority asks; every other name does not exist.
func startDNS(t *testing.T, names map[string]string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &dns.Server{Listener: ln, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, q *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(q)
		for _, question := range q.Question {
			ip, ok := names[strings.ToLower(strings.TrimSuffix(question.Name, "."))]
			switch {
			case !ok:
				m.Rcode = dns.RcodeNameError
			case question.Qtype == dns.TypeA:
				m.Answer = append(m.Answer, &dns.A{
					Hdr: dns.RR_Header{Name: question.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60},
					A:   net.ParseIP(ip).To4(),
				})
			}
		}
		_ = w.WriteMsg(m)
	})}
	started := make(chan struct{})
	srv.NotifyStartedFunc = func() { close(started) }
	go func() { _ = srv.ActivateAndServe() }()
	<-started
	t.Cleanup(func() { _ = srv.Shutdown() })
	return ln.Addr().String()
}

// freePort is a loopback TCP port nothing listens on (Pebble has to know the
// challenge port before moat binds it).
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// serveTLS serves "ok" over HTTPS with cfg on addr and returns the bound address.
func serveTLS(t *testing.T, addr string, cfg *tls.Config) string {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{
		Handler:  http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok")) }),
		ErrorLog: log.New(io.Discard, "", 0),
	}
	go func() { _ = srv.Serve(tls.NewListener(ln, cfg)) }()
	t.Cleanup(func() { _ = srv.Close() })
	return ln.Addr().String()
}

func acmeOptions(p *pebbleCA, dir string, port int, names ...string) Options {
	return Options{Mode: ModeACME, Dir: dir, Names: names, ACMEDirectory: p.Directory,
		ACMEEmail: "ops@moat.test", ACMERoots: p.Roots, ACMEChallengePort: port}
}

// TestACMEObtainsFromPebble: certs.New in ACME mode obtains a certificate from Pebble
// through a real TLS-ALPN-01 validation; a client trusting Pebble's root verifies the
// chain and the name, a client trusting anything else is refused; the account and the
// certificate live in Dir, and a restart reuses them without a new order.
func TestACMEObtainsFromPebble(t *testing.T) {
	port := freePort(t)
	p := startPebble(t, port, startDNS(t, map[string]string{acmeName: "127.0.0.1"}))
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	records := newRecorder()
	opts := acmeOptions(p, dir, port, acmeName)
	opts.Log = slog.New(records)
	m, err := New(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	if n, a := p.newOrders.Load(), p.newAccounts.Load(); n != 1 || a != 1 {
		t.Fatalf("Pebble saw %d new orders and %d new accounts, want 1 and 1", n, a)
	}
	// certmagic's progress reaches the gateway's log at debug level, tagged.
	if got := records.find("certificate obtained successfully"); got == nil || got.Level != slog.LevelDebug ||
		got.attrs["component"] != "certmagic" || got.attrs["identifier"] != acmeName {
		t.Fatalf("certmagic's log record: %+v", got)
	}
	if m.CACert != nil || m.CAFile != "" {
		t.Fatal("ACME mode reports an internal CA")
	}
	addr := serveTLS(t, "127.0.0.1:0", m.TLSConfig())

	root := p.Root(t)
	trusted := x509.NewCertPool()
	trusted.AddCert(root)
	conn, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: trusted, ServerName: acmeName, NextProtos: []string{"h2"}})
	if err != nil {
		t.Fatalf("client trusting Pebble's root: %v", err)
	}
	st := conn.ConnectionState()
	conn.Close()
	leaf := st.PeerCertificates[0]
	if !slices.Equal(leaf.DNSNames, []string{acmeName}) || st.NegotiatedProtocol != "h2" {
		t.Fatalf("served certificate for %v, protocol %q", leaf.DNSNames, st.NegotiatedProtocol)
	}
	if chain := st.VerifiedChains[0]; !chain[len(chain)-1].Equal(root) || len(chain) < 3 {
		t.Fatalf("chain does not lead through Pebble's intermediate to its root: %d certificates", len(chain))
	}
	// A real HTTPS request over the verified connection.
	client := &http.Client{Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: trusted},
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, network, addr)
		},
	}}
	resp, err := client.Get("https://" + acmeName + "/")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != "ok" {
		t.Fatalf("HTTPS through the ACME certificate: %q", body)
	}

	// Clients that trust anything else are refused: the system roots, Pebble's own
	// HTTPS certificate; and a name the certificate does not cover gets no certificate.
	for what, cfg := range map[string]*tls.Config{
		"system roots":          {ServerName: acmeName},
		"another CA":            {RootCAs: p.Roots, ServerName: acmeName},
		"name it does not have": {RootCAs: trusted, ServerName: "other.moat.test"},
	} {
		if conn, err := tls.Dial("tcp", addr, cfg); err == nil {
			conn.Close()
			t.Fatalf("client (%s) accepted the gateway's certificate", what)
		}
	}

	// The account key and the certificate with its key are in Dir.
	var accountKeys, certFiles int
	_ = filepath.WalkDir(dir, func(path string, d fs.DirEntry, _ error) error {
		switch {
		case d == nil || d.IsDir():
		case strings.Contains(path, string(filepath.Separator)+"users"+string(filepath.Separator)) && strings.HasSuffix(path, ".key"):
			accountKeys++
		case filepath.Base(path) == acmeName+".crt" || filepath.Base(path) == acmeName+".key":
			certFiles++
		}
		return nil
	})
	if accountKeys != 1 || certFiles != 2 {
		t.Fatalf("%s holds %d account keys and %d certificate files, want 1 and 2", dir, accountKeys, certFiles)
	}

	// A restart against the same Dir and Pebble reuses both: no new account, no order.
	cancel()
	ctx2, cancel2 := context.WithCancel(context.Background())
	defer cancel2()
	again, err := New(ctx2, acmeOptions(p, dir, port, acmeName))
	if err != nil {
		t.Fatal(err)
	}
	if n, a := p.newOrders.Load(), p.newAccounts.Load(); n != 1 || a != 1 {
		t.Fatalf("after a restart Pebble saw %d new orders and %d new accounts, want still 1 and 1", n, a)
	}
	addr2 := serveTLS(t, "127.0.0.1:0", again.TLSConfig())
	conn, err = tls.Dial("tcp", addr2, &tls.Config{RootCAs: trusted, ServerName: acmeName})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if !conn.ConnectionState().PeerCertificates[0].Equal(leaf) {
		t.Fatal("the restarted manager serves a different certificate")
	}
}

// TestACMERenewalAnsweredByTheListener: once the gateway's own listener holds the
// challenge port (api.listen on the port the CA validates), a renewal is validated
// through that listener: Manager.TLSConfig answers acme-tls/1 itself.
func TestACMERenewalAnsweredByTheListener(t *testing.T) {
	port := freePort(t)
	p := startPebble(t, port, startDNS(t, map[string]string{acmeName: "127.0.0.1"}))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	dir := t.TempDir()
	m, err := New(ctx, acmeOptions(p, dir, port, acmeName))
	if err != nil {
		t.Fatal(err)
	}
	cfg := m.TLSConfig()
	var challenges atomic.Int32
	getCert := cfg.GetCertificate
	cfg.GetCertificate = func(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
		if slices.Equal(hello.SupportedProtos, []string{"acme-tls/1"}) {
			challenges.Add(1)
		}
		return getCert(hello)
	}
	addr := serveTLS(t, net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), cfg)
	trusted := x509.NewCertPool()
	trusted.AddCert(p.Root(t))
	served := func() *x509.Certificate {
		t.Helper()
		conn, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: trusted, ServerName: acmeName})
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		return conn.ConnectionState().PeerCertificates[0]
	}
	first := served()

	// Pebble reuses a valid authorization 1% of the time even when told never to
	// (wfe.go: rand.Intn(100) > 0): renew again in that case, a few times at most.
	renewals := 0
	for renewals < 4 && challenges.Load() == 0 {
		if err := m.cfg.RenewCertSync(ctx, acmeName, true); err != nil {
			t.Fatal(err)
		}
		renewals++
	}
	if n := p.newOrders.Load(); n != int32(1+renewals) {
		t.Fatalf("Pebble saw %d new orders, want %d", n, 1+renewals)
	}
	if challenges.Load() == 0 {
		t.Fatal("the renewal was validated without a TLS-ALPN-01 handshake on the gateway's listener")
	}
	// The renewed certificate is what certmagic stores (its maintenance routine swaps
	// it into the running cache): a restart serves it, without another order.
	again, err := New(ctx, acmeOptions(p, dir, port, acmeName))
	if err != nil {
		t.Fatal(err)
	}
	addr2 := serveTLS(t, "127.0.0.1:0", again.TLSConfig())
	conn, err := tls.Dial("tcp", addr2, &tls.Config{RootCAs: trusted, ServerName: acmeName})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if renewed := conn.ConnectionState().PeerCertificates[0]; renewed.SerialNumber.Cmp(first.SerialNumber) == 0 {
		t.Fatal("the renewal stored the first certificate again")
	}
	if n := p.newOrders.Load(); n != int32(1+renewals) {
		t.Fatalf("Pebble saw %d new orders after the restart, want still %d", n, 1+renewals)
	}
}

// TestACMEErrors: when the ACME CA cannot be reached, is not trusted, refuses the name
// or cannot validate it, New fails promptly with an error that says so.
func TestACMEErrors(t *testing.T) {
	port := freePort(t)
	p := startPebble(t, port, startDNS(t, map[string]string{acmeName: "127.0.0.1"}), "blocked.moat.test")
	closed := "https://127.0.0.1:" + strconv.Itoa(freePort(t)) + "/dir"
	for _, tc := range []struct {
		name string
		edit func(*Options)
		want []string
		// hold: something other than moat holds the challenge port.
		hold bool
	}{
		{"unreachable", func(o *Options) { o.ACMEDirectory = closed },
			[]string{closed, "the ACME directory is unreachable", "connection refused"}, false},
		{"untrusted", func(o *Options) { o.ACMERoots = nil },
			[]string{"the ACME server's certificate is not trusted", "tls.acme.roots"}, false},
		{"refused name", func(o *Options) { o.Names = []string{"blocked.moat.test"} },
			[]string{"refuses to issue for these names", "rejectedIdentifier", "blocked.moat.test"}, false},
		{"validation fails", func(o *Options) { o.Names = []string{"nowhere.moat.test"} },
			[]string{"could not validate the TLS-ALPN-01 challenge", "port " + strconv.Itoa(port), "nowhere.moat.test"}, false},
		{"port taken", func(*Options) {},
			[]string{"could not validate the TLS-ALPN-01 challenge", "port " + strconv.Itoa(port), "Failed to connect"}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			if tc.hold {
				// A server that is not moat's (plain TCP, not TLS) holds the port.
				ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
				if err != nil {
					t.Fatal(err)
				}
				defer ln.Close()
				go func() {
					for {
						c, err := ln.Accept()
						if err != nil {
							return
						}
						c.Close()
					}
				}()
			}
			o := acmeOptions(p, t.TempDir(), port, acmeName)
			tc.edit(&o)
			start := time.Now()
			m, err := New(ctx, o)
			if err == nil {
				t.Fatalf("New succeeded (%v)", m)
			}
			if d := time.Since(start); d > 10*time.Second {
				t.Errorf("the error took %v", d)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
		})
	}
	if n := p.newOrders.Load(); n != 3 {
		t.Errorf("Pebble saw %d new orders, want 3 (the refused one and the two that failed validation)", n)
	}
	// The challenge listener cannot be started (a port below 1024 without the right).
	err := obtainError(Options{Mode: ModeACME, Names: []string{acmeName}, ACMEDirectory: p.Directory},
		errors.New("[gateway.moat.test] solving challenge: presenting for challenge: could not start listener "+
			"for challenge server at :443: listen tcp :443: bind: permission denied"))
	if !strings.Contains(err.Error(), "cannot answer the TLS-ALPN-01 challenge on port 443") {
		t.Errorf("listener error: %v", err)
	}
}
