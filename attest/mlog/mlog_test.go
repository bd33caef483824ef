package mlog

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func sampleLog() *Log {
	return &Log{PCR: 15, Entries: []Entry{
		{Kind: KindFile, Path: "/usr/bin/app", Digest: sha256.Sum256([]byte("app v1"))},
		{Kind: KindFile, Path: "/etc/app.conf", Digest: sha256.Sum256([]byte("listen 80"))},
		{Kind: KindFileMissing, Path: "/etc/app.d/extra.conf"},
	}}
}

func TestRoundTrip(t *testing.T) {
	l := sampleLog()
	b, err := l.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	got, err := Decode(b)
	if err != nil {
		t.Fatalf("decode: %v", err)
	}
	if !Equal(l, got) {
		t.Fatalf("round trip changed the log:\n%v\n%v", l, got)
	}
	if got.Replay() != l.Replay() {
		t.Fatal("replay differs after round trip")
	}
}

func TestReplayIsTPMExtendOfEventDigests(t *testing.T) {
	l := sampleLog()
	var pcr [32]byte
	for _, e := range l.Entries {
		d := e.EventDigest()
		pcr = sha256.Sum256(append(pcr[:], d[:]...))
	}
	if pcr != l.Replay() {
		t.Fatalf("Replay = %x, manual extend = %x", l.Replay(), pcr)
	}
	if (&Log{}).Replay() != ([32]byte{}) {
		t.Fatal("an empty log must replay to the reset PCR value (zeros)")
	}
}

// An attacker who measured a good file under one path cannot present its digest as
// another path's: the path is inside the extended event digest.
func TestEventDigestBindsPathAndKind(t *testing.T) {
	a := Entry{Kind: KindFile, Path: "/usr/bin/app", Digest: sha256.Sum256([]byte("x"))}
	b := a
	b.Path = "/usr/bin/other"
	c := a
	c.Kind = KindFileMissing
	if a.EventDigest() == b.EventDigest() || a.EventDigest() == c.EventDigest() {
		t.Fatal("event digest does not depend on path and kind")
	}
}

func TestDecodeRefusesTruncation(t *testing.T) {
	b, err := sampleLog().MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	for n := 0; n < len(b); n++ {
		if _, err := Decode(b[:n]); !errors.Is(err, ErrMalformed) {
			t.Fatalf("decode of %d/%d bytes: err = %v, want ErrMalformed", n, len(b), err)
		}
	}
}

func TestDecodeRefusesGarbage(t *testing.T) {
	good, err := sampleLog().MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	mutate := func(f func(b []byte) []byte) []byte { return f(bytes.Clone(good)) }
	cases := map[string][]byte{
		"empty":          nil,
		"bad magic":      mutate(func(b []byte) []byte { b[0] = 'X'; return b }),
		"bad version":    mutate(func(b []byte) []byte { b[8] = 2; return b }),
		"trailing bytes": append(bytes.Clone(good), 0),
		"huge count":     mutate(func(b []byte) []byte { copy(b[10:], []byte{0xff, 0xff, 0xff, 0xff}); return b }),
		"count too big":  mutate(func(b []byte) []byte { b[13]++; return b }),
		"unknown kind":   mutate(func(b []byte) []byte { b[headerLen] = 9; return b }),
		"missing with digest": func() []byte {
			l := &Log{PCR: 15, Entries: []Entry{{Kind: KindFile, Path: "/x"}}}
			b, _ := l.MarshalBinary()
			b[headerLen] = byte(KindFileMissing)
			b[headerLen+1] = 1
			return b
		}(),
		"NUL in path": func() []byte {
			l := &Log{PCR: 15, Entries: []Entry{{Kind: KindFile, Path: "/ab"}}}
			b, _ := l.MarshalBinary()
			b[len(b)-1] = 0
			return b
		}(),
		"invalid UTF-8": func() []byte {
			l := &Log{PCR: 15, Entries: []Entry{{Kind: KindFile, Path: "/ab"}}}
			b, _ := l.MarshalBinary()
			b[len(b)-1] = 0xff
			return b
		}(),
		"not a log": []byte(strings.Repeat("garbage ", 20)),
	}
	for name, b := range cases {
		if _, err := Decode(b); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: err = %v, want ErrMalformed", name, err)
		}
	}
}

func TestMarshalRefusesInvalidEntries(t *testing.T) {
	for name, l := range map[string]*Log{
		"empty path": {PCR: 15, Entries: []Entry{{Kind: KindFile}}},
		"long path":  {PCR: 15, Entries: []Entry{{Kind: KindFile, Path: "/" + strings.Repeat("a", MaxPathLen)}}},
		"bad PCR":    {PCR: 300},
		"bad kind":   {PCR: 15, Entries: []Entry{{Kind: 0, Path: "/a"}}},
	} {
		if _, err := l.MarshalBinary(); err == nil {
			t.Errorf("%s: encoded an invalid log", name)
		}
	}
}

func TestMeasureFile(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "app")
	if err := os.WriteFile(p, []byte("binary"), 0o600); err != nil {
		t.Fatal(err)
	}
	e := MeasureFile(p)
	if e.Kind != KindFile || e.Digest != sha256.Sum256([]byte("binary")) || e.Path != p {
		t.Fatalf("MeasureFile = %v", e)
	}
	if e := MeasureFile(filepath.Join(dir, "absent")); e.Kind != KindFileMissing {
		t.Fatalf("absent file measured as %v", e)
	}
	if e := MeasureFile(dir); e.Kind != KindFileMissing {
		t.Fatalf("directory measured as %v", e)
	}
}

// FuzzDecode: no input makes Decode panic or over-allocate, and every accepted input is
// canonical: it re-encodes to the same bytes (so two encodings never mean one log).
func FuzzDecode(f *testing.F) {
	good, err := sampleLog().MarshalBinary()
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	f.Add(good[:20])
	f.Add([]byte(magic))
	f.Fuzz(func(t *testing.T, b []byte) {
		l, err := Decode(b)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error does not wrap ErrMalformed: %v", err)
			}
			return
		}
		again, err := l.MarshalBinary()
		if err != nil {
			t.Fatalf("decoded log does not re-encode: %v", err)
		}
		if !bytes.Equal(again, b) {
			t.Fatalf("non-canonical encoding accepted:\n in %x\nout %x", b, again)
		}
		_ = l.Replay()
	})
}

func BenchmarkReplay(b *testing.B) {
	enc, _ := sampleLog().MarshalBinary()
	for b.Loop() {
		l, err := Decode(enc)
		if err != nil {
			b.Fatal(err)
		}
		_ = l.Replay()
	}
}
