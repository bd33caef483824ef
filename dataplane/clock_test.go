package dataplane

import (
	"math"
	"strings"
	"testing"
	"time"

	"github.com/seed4c/moat/internal/netns"
)

func TestParseConfigHZ(t *testing.T) {
	for _, tc := range []struct {
		text string
		want uint64
		err  string
	}{
		{"CONFIG_HZ_250=y\nCONFIG_HZ=250\n", 250, ""},
		{"# CONFIG_HZ_PERIODIC is not set\nCONFIG_HZ=1000", 1000, ""},
		{"CONFIG_HZ_250=y\n", 0, "no CONFIG_HZ"},
		{"CONFIG_HZ=fast\n", 0, "is not a tick rate"},
		{"CONFIG_HZ=0\n", 0, "is not a tick rate"},
	} {
		got, err := parseConfigHZ(strings.NewReader(tc.text), "config")
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%q: error %v, want one containing %q", tc.text, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("%q: %d, %v; want %d", tc.text, got, err, tc.want)
		}
	}
}

func TestNearestHZ(t *testing.T) {
	for rate, want := range map[float64]uint64{99: 100, 246: 250, 255: 250, 296: 300, 1020: 1000} {
		if got, err := nearestHZ(rate); err != nil || got != want {
			t.Errorf("rate %v: %d, %v; want %d", rate, got, err, want)
		}
	}
	for _, rate := range []float64{0, 170, 500, 2000} {
		if got, err := nearestHZ(rate); err == nil {
			t.Errorf("rate %v: %d, want an error", rate, got)
		}
	}
}

func TestToJiffies(t *testing.T) {
	for _, tc := range []struct {
		d    time.Duration
		hz   uint64
		want uint64
	}{
		{time.Second, 250, 250},
		{time.Hour, 1000, 3_600_000},
		{50 * time.Millisecond, 250, 13}, // 12.5 ticks: never shorter than asked
		{time.Nanosecond, 100, 1},        // a positive lifetime is never zero
		{0, 250, 0},
		{time.Duration(1<<63 - 1), 1000, 9_223_372_036_855}, // no overflow
	} {
		if got := toJiffies(tc.d, tc.hz); got != tc.want {
			t.Errorf("toJiffies(%v, %d) = %d, want %d", tc.d, tc.hz, got, tc.want)
		}
	}
}

// The kernel's build configuration and the jiffies counter agree, where both can be
// read: the measurement is what a kernel without its configuration falls back to.
func TestPrivilegedKernelHZMeasured(t *testing.T) {
	netns.RequireRoot(t)
	configured, err := configHZ("/proc/config.gz")
	if err != nil {
		t.Skipf("no kernel configuration to compare with: %v", err)
	}
	measured, err := measureHZ(200 * time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if measured != configured {
		t.Fatalf("measured HZ %d, configured %d", measured, configured)
	}
	if hz, err := KernelHZ(); err != nil || hz != configured {
		t.Fatalf("KernelHZ() = %d, %v; want %d", hz, err, configured)
	}
}

// FuzzParseConfigHZ: a tick rate comes only from a CONFIG_HZ line, the first one, and
// lines of other options change nothing.
func FuzzParseConfigHZ(f *testing.F) {
	f.Add("CONFIG_HZ_250=y\nCONFIG_HZ=250\n")
	f.Add("CONFIG_HZ=0\n")
	f.Add("CONFIG_HZ=4294967296\n")
	f.Add("CONFIG_HZ=100\r\nCONFIG_HZ=300\n")
	f.Fuzz(func(t *testing.T, text string) {
		hz, err := parseConfigHZ(strings.NewReader(text), "config")
		if err != nil {
			return
		}
		if hz == 0 || hz > math.MaxUint32 || !strings.Contains(text, "CONFIG_HZ=") {
			t.Fatalf("%q read as %d", text, hz)
		}
		if got, err := parseConfigHZ(strings.NewReader("# CONFIG_HZ_PERIODIC is not set\nCONFIG_HZ_1000=y\n"+text), "config"); err != nil || got != hz {
			t.Fatalf("other options before %q changed %d to %d, %v", text, hz, got, err)
		}
		if got, err := parseConfigHZ(strings.NewReader("CONFIG_HZ=123\n"+text), "config"); err != nil || got != 123 {
			t.Fatalf("a first CONFIG_HZ=123 before %q read as %d, %v", text, got, err)
		}
	})
}
