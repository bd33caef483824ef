package certs

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestInternalCAServesAndPersists(t *testing.T) {
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	m, err := New(ctx, Options{Mode: ModeInternal, Dir: dir, Names: []string{"localhost", "127.0.0.1"}})
	if err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(filepath.Join(dir, "ca.key")); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("CA key file: %v %v", st, err)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", m.TLSConfig())
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("ok")) })}
	go srv.Serve(ln)
	defer srv.Close()

	pool := x509.NewCertPool()
	pool.AddCert(m.CACert)
	for _, host := range []string{"127.0.0.1", "localhost"} {
		_, port, _ := net.SplitHostPort(ln.Addr().String())
		conn, err := tls.Dial("tcp", net.JoinHostPort("127.0.0.1", port), &tls.Config{RootCAs: pool, ServerName: host})
		if err != nil {
			t.Fatalf("client trusting ca.crt, server name %s: %v", host, err)
		}
		conn.Close()
	}
	// A client that does not trust the internal CA is refused.
	if conn, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{ServerName: "localhost"}); err == nil {
		conn.Close()
		t.Fatal("a client without the internal CA accepted the certificate")
	}
	// A restart loads the same CA.
	again, err := LoadOrCreateCA(dir)
	if err != nil || !again.Cert.Equal(m.CACert) {
		t.Fatalf("CA after restart differs: %v", err)
	}
}

func TestCAFilesRefusedWhenDamaged(t *testing.T) {
	dir := t.TempDir()
	if _, err := LoadOrCreateCA(dir); err != nil {
		t.Fatal(err)
	}
	other := t.TempDir()
	if _, err := LoadOrCreateCA(other); err != nil {
		t.Fatal(err)
	}
	key, _ := os.ReadFile(filepath.Join(other, "ca.key"))
	os.WriteFile(filepath.Join(dir, "ca.key"), key, 0o600)
	if _, err := LoadOrCreateCA(dir); err == nil {
		t.Fatal("a CA key that does not match its certificate was accepted")
	}
	os.Remove(filepath.Join(dir, "ca.key"))
	if _, err := LoadOrCreateCA(dir); err == nil {
		t.Fatal("a CA without its key was silently replaced")
	}
}

func TestPrintableCA(t *testing.T) {
	dir := t.TempDir()
	// Nothing is created by reading.
	if _, err := ReadCA(dir); err == nil || !strings.Contains(err.Error(), "no internal CA in "+dir) {
		t.Fatalf("ReadCA of an empty directory: %v", err)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Fatalf("ReadCA created %d files", len(entries))
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	m, err := New(ctx, Options{Dir: dir, Names: []string{"localhost"}})
	if err != nil {
		t.Fatal(err)
	}
	printed, err := ReadCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(printed, m.CAPEM()) {
		t.Fatalf("ReadCA and CAPEM differ:\n%s\n%s", printed, m.CAPEM())
	}
	// What is printed is enough for a client to trust the gateway.
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(printed) {
		t.Fatalf("not a PEM certificate: %q", printed)
	}
	addr := serveTLS(t, "127.0.0.1:0", m.TLSConfig())
	conn, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: pool, ServerName: "localhost"})
	if err != nil {
		t.Fatal(err)
	}
	conn.Close()
	if bytes.Contains(printed, []byte("PRIVATE")) {
		t.Fatal("the printed CA contains a private key")
	}
	// A leaf where the CA should be is refused.
	os.WriteFile(filepath.Join(dir, "ca.crt"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: conn.ConnectionState().PeerCertificates[0].Raw}), 0o644)
	if _, err := ReadCA(dir); err == nil {
		t.Fatal("a leaf certificate was printed as the CA")
	}
}
