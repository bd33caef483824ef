package main

import (
	"strings"
	"testing"
)

// The command line's own parsers: what they accept is in range and reads back the same
// from its canonical form.

func FuzzParseAttachment(f *testing.F) {
	for _, s := range []string{"eth1", "eth1/10", "eth1/4094", "eth1/4095", "eth1/0", "/5", "eth1/", "eth1/+7", "a/b/3"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		a, err := parseAttachment(s)
		if err != nil {
			return
		}
		if a.Interface == "" || a.VLAN > 4094 || (a.VLAN != 0) != strings.Contains(s, "/") {
			t.Fatalf("%q accepted as %+v", s, a)
		}
		back, err := parseAttachment(attachmentString(a))
		if err != nil || back != a {
			t.Fatalf("%q: %+v reads back from %q as %+v, %v", s, a, attachmentString(a), back, err)
		}
	})
}

func TestParseAttachmentRefusesReservedVLAN(t *testing.T) {
	for _, s := range []string{"eth1/0", "eth1/4095", "eth1/4096", "eth1/x", "/7", ""} {
		if a, err := parseAttachment(s); err == nil {
			t.Errorf("%q accepted as %+v", s, a)
		}
	}
	if a, err := parseAttachment("eth1/4094"); err != nil || a.VLAN != 4094 {
		t.Errorf("eth1/4094: %+v, %v", a, err)
	}
}

func FuzzParseOverlayRoute(f *testing.F) {
	for _, s := range []string{"a:10.100.2.1/32:10.9.0.2", "a:10.100.2.0/24:10.9.0.2", "a::10.9.0.2", "a:::", "a:1/2:3:4"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		r, err := parseOverlayRoute(s)
		if err != nil {
			return
		}
		if !r.Dst.IsValid() || !r.Via.IsValid() {
			t.Fatalf("%q accepted as %+v", s, r)
		}
		canon := r.Tenant + ":" + r.Dst.String() + ":" + r.Via.String()
		back, err := parseOverlayRoute(canon)
		if err != nil || back != r {
			t.Fatalf("%q: %+v reads back from %q as %+v, %v", s, r, canon, back, err)
		}
	})
}
