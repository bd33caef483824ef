package dataplane

import (
	"bufio"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"math"
	"math/bits"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// The fast path's clock is jiffies (bpf/lib/clock.h): configured durations become
// jiffies at load time, with the kernel's tick rate.

// KernelHZ returns the tick rate of the running kernel (CONFIG_HZ): from its build
// configuration in /proc/config.gz or /boot/config-<release>, or else measured
// from the jiffies counter of /proc/timer_list over 200 ms and rounded to the rates
// Linux offers. The answer is cached.
func KernelHZ() (uint64, error) {
	kernelHZOnce.Do(func() { kernelHZ, kernelHZErr = detectKernelHZ() })
	return kernelHZ, kernelHZErr
}

var (
	kernelHZOnce sync.Once
	kernelHZ     uint64
	kernelHZErr  error
)

// knownHZ are the tick rates Linux can be built with (kernel/Kconfig.hz).
var knownHZ = []uint64{100, 250, 300, 1000}

func detectKernelHZ() (uint64, error) {
	var errs []error
	var uts unix.Utsname
	release := ""
	if err := unix.Uname(&uts); err == nil {
		release = unix.ByteSliceToString(uts.Release[:])
	}
	for _, path := range []string{"/proc/config.gz", "/boot/config-" + release} {
		hz, err := configHZ(path)
		if err == nil {
			return hz, nil
		}
		errs = append(errs, err)
	}
	hz, err := measureHZ(200 * time.Millisecond)
	if err == nil {
		return hz, nil
	}
	errs = append(errs, err)
	return 0, fmt.Errorf("find the kernel's HZ: %w", errors.Join(errs...))
}

// configHZ reads CONFIG_HZ from a kernel build configuration, gzipped or not.
func configHZ(path string) (uint64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	var r io.Reader = f
	if strings.HasSuffix(path, ".gz") {
		z, err := gzip.NewReader(f)
		if err != nil {
			return 0, fmt.Errorf("%s: %w", path, err)
		}
		r = z
	}
	return parseConfigHZ(r, path)
}

func parseConfigHZ(r io.Reader, name string) (uint64, error) {
	s := bufio.NewScanner(r)
	for s.Scan() {
		if v, ok := strings.CutPrefix(s.Text(), "CONFIG_HZ="); ok {
			hz, err := strconv.ParseUint(v, 10, 32)
			if err != nil || hz == 0 {
				return 0, fmt.Errorf("%s: CONFIG_HZ=%q is not a tick rate", name, v)
			}
			return hz, nil
		}
	}
	if err := s.Err(); err != nil {
		return 0, fmt.Errorf("%s: %w", name, err)
	}
	return 0, fmt.Errorf("%s: no CONFIG_HZ", name)
}

// measureHZ counts the jiffies that pass in about d.
func measureHZ(d time.Duration) (uint64, error) {
	j0, t0, err := readJiffies()
	if err != nil {
		return 0, err
	}
	time.Sleep(d)
	j1, t1, err := readJiffies()
	if err != nil {
		return 0, err
	}
	return nearestHZ(float64(j1-j0) / t1.Sub(t0).Seconds())
}

// nearestHZ rounds a measured tick rate to the known rate within 10% of it.
func nearestHZ(rate float64) (uint64, error) {
	for _, hz := range knownHZ {
		if math.Abs(rate-float64(hz)) <= 0.1*float64(hz) {
			return hz, nil
		}
	}
	return 0, fmt.Errorf("jiffies advanced at %.0f per second, which is no tick rate Linux is built with", rate)
}

// readJiffies reads the jiffies counter from /proc/timer_list (readable by root).
func readJiffies() (uint64, time.Time, error) {
	b, err := os.ReadFile("/proc/timer_list")
	now := time.Now()
	if err != nil {
		return 0, now, err
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, "jiffies: "); ok {
			j, err := strconv.ParseUint(strings.TrimSpace(v), 10, 64)
			if err != nil {
				return 0, now, fmt.Errorf("/proc/timer_list: jiffies %q: %w", v, err)
			}
			return j, now, nil
		}
	}
	return 0, now, errors.New("/proc/timer_list: no jiffies line")
}

// maxStampAge bounds every lifetime, in ticks: the fast path keeps 32-bit stamps and
// compares them modulo 2^32 (bpf/lib/clock.h), which is exact below 2^31.
const maxStampAge = 1 << 31

// toJiffies converts a duration to whole jiffies, rounding up: a lifetime is never
// shorter than configured, and a positive one is never zero.
func toJiffies(d time.Duration, hz uint64) uint64 {
	hi, lo := bits.Mul64(uint64(d), hz)
	lo, carry := bits.Add64(lo, uint64(time.Second)-1, 0)
	q, _ := bits.Div64(hi+carry, lo, uint64(time.Second)) // hz < 1e9: no overflow
	return q
}
