package tpm

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/seed4c/moat/attest/internal/conformance"
	"github.com/seed4c/moat/attest/internal/swtpmtest"
)

func openSimulator(t *testing.T, ek EKAlgorithm) *SE {
	t.Helper()
	se, err := OpenSimulator(ek)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { se.Close() })
	return se
}

func TestSimulatorConformance(t *testing.T) {
	conformance.Run(t, openSimulator(t, EKECC))
}

func TestSimulatorConformanceRSAEK(t *testing.T) {
	se := openSimulator(t, EKRSA)
	conformance.Run(t, se)
}

func TestSwtpmConformance(t *testing.T) {
	sw := swtpmtest.Start(t)
	se, err := OpenSwtpm(sw.Addr, EKECC)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { se.Close() })
	conformance.Run(t, se)
}

func TestClosedSERefuses(t *testing.T) {
	se, err := OpenSimulator(EKECC)
	if err != nil {
		t.Fatal(err)
	}
	if err := se.Close(); err != nil {
		t.Fatal(err)
	}
	conformance.RunClosed(t, se)
	if err := se.Close(); !errors.Is(err, ErrClosed) {
		t.Fatalf("second Close = %v, want ErrClosed", err)
	}
}

// The hardware path is the same code over /dev/tpmrm0: where there is no device, Open
// fails with an error naming the path, and a file that is not a device is refused.
func TestOpenDeviceAbsentFailsCleanly(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "tpmrm0")
	_, err := Open(Config{Kind: KindDevice, Path: missing})
	if err == nil || !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("open of absent device: err = %v, want ErrNotExist", err)
	}
	regular := filepath.Join(t.TempDir(), "not-a-device")
	if err := os.WriteFile(regular, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenDevice(regular, EKECC); err == nil {
		t.Fatal("a regular file was opened as a TPM device")
	}
	if _, err := Open(Config{Kind: "quantum"}); err == nil {
		t.Fatal("unknown kind accepted")
	}
	if _, err := OpenSwtpm("unix:"+filepath.Join(t.TempDir(), "none.sock"), EKECC); err == nil {
		t.Fatal("swtpm socket that does not exist was opened")
	}
}
