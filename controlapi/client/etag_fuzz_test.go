package client

import (
	"strconv"
	"strings"
	"testing"
)

// FuzzParseETag: the client reads back every ETag the server writes, weak or not, and
// anything else as 0 or as the number between its quotes.
func FuzzParseETag(f *testing.F) {
	f.Add(`"7"`, uint64(7))
	f.Add(`W/"18446744073709551615"`, uint64(0))
	f.Add(`"18446744073709551616"`, uint64(1))
	f.Add(`""`, uint64(3))
	f.Add(`"-1"`, uint64(3))
	f.Fuzz(func(t *testing.T, h string, v uint64) {
		for _, form := range []string{etag(v), "W/" + etag(v), " " + etag(v) + "\t"} {
			if got := parseETag(form); got != v {
				t.Fatalf("%q read as %d, want %d", form, got, v)
			}
		}
		n := parseETag(h)
		if n == 0 {
			return
		}
		inner := strings.TrimPrefix(strings.TrimSpace(h), "W/")
		if len(inner) < 3 || inner[0] != '"' || inner[len(inner)-1] != '"' {
			t.Fatalf("%q read as %d without quotes", h, n)
		}
		if m, err := strconv.ParseUint(inner[1:len(inner)-1], 10, 64); err != nil || m != n {
			t.Fatalf("%q read as %d", h, n)
		}
	})
}
