package certs

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"net/http"
	"os"
	"path/filepath"
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
