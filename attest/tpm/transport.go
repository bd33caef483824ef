package tpm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/google/go-tpm-tools/simulator"
	"github.com/google/go-tpm/tpm2/transport"
	"github.com/google/go-tpm/tpm2/transport/linuxtpm"
)

// Kind names a kind of TPM.
type Kind string

const (
	KindSimulator Kind = "simulator"
	KindSwtpm     Kind = "swtpm"
	KindDevice    Kind = "device"
)

// DefaultDevice is the kernel's TPM resource manager: unlike /dev/tpm0 it lets several
// processes share the TPM and flushes their transient objects when they exit.
const DefaultDevice = "/dev/tpmrm0"

// Config says which TPM to open.
type Config struct {
	Kind Kind
	// Path is, for swtpm, the server socket: "unix:/path", "tcp:127.0.0.1:2321", or a
	// bare host:port; for a device, its path (default /dev/tpmrm0); unused for the
	// simulator.
	Path string
	// EKAlgorithm picks the EK; default EKECC.
	EKAlgorithm EKAlgorithm
}

// Open opens the configured TPM.
func Open(cfg Config) (*SE, error) {
	switch cfg.Kind {
	case KindSimulator:
		return OpenSimulator(cfg.EKAlgorithm)
	case KindSwtpm:
		return OpenSwtpm(cfg.Path, cfg.EKAlgorithm)
	case KindDevice:
		path := cfg.Path
		if path == "" {
			path = DefaultDevice
		}
		return OpenDevice(path, cfg.EKAlgorithm)
	}
	return nil, fmt.Errorf("open TPM: unknown kind %q (want %q, %q or %q)", cfg.Kind, KindSimulator, KindSwtpm, KindDevice)
}

// OpenSimulator starts the in-process reference TPM, fresh (new seeds, PCRs zero). Only
// one can be open per process: a second call blocks until the first SE is closed.
func OpenSimulator(ekAlg EKAlgorithm) (*SE, error) {
	sim, err := simulator.Get()
	if err != nil {
		return nil, fmt.Errorf("start TPM simulator: %w", err)
	}
	se, err := New(transport.FromReadWriteCloser(sim), ekAlg)
	if err != nil {
		sim.Close()
		return nil, err
	}
	se.plat = sim
	return se, nil
}

// OpenDevice opens a hardware TPM character device.
func OpenDevice(path string, ekAlg EKAlgorithm) (*SE, error) {
	t, err := linuxtpm.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open TPM device %s: %w", path, err)
	}
	se, err := New(t, ekAlg)
	if err != nil {
		t.Close()
		return nil, err
	}
	return se, nil
}

// OpenSwtpm connects to swtpm's server socket. swtpm must have been started with the
// TPM initialized (`--flags not-need-init,startup-clear`, or through its control
// channel).
func OpenSwtpm(addr string, ekAlg EKAlgorithm) (*SE, error) {
	network, address := "tcp", addr
	switch {
	case strings.HasPrefix(addr, "unix:"):
		network, address = "unix", strings.TrimPrefix(addr, "unix:")
	case strings.HasPrefix(addr, "tcp:"):
		address = strings.TrimPrefix(addr, "tcp:")
	}
	if address == "" {
		return nil, errors.New("open swtpm: empty socket address")
	}
	conn, err := net.DialTimeout(network, address, 5*time.Second)
	if err != nil {
		return nil, fmt.Errorf("open swtpm at %s: %w", addr, err)
	}
	se, err := New(&streamTPM{conn: conn}, ekAlg)
	if err != nil {
		conn.Close()
		return nil, err
	}
	return se, nil
}

// streamTPM sends TPM commands over a byte stream (swtpm's server socket carries
// the raw TPM 2.0 command and response encodings back to back): write the command,
// read the 10-byte response header, then the rest of the size it announces.
type streamTPM struct {
	mu   sync.Mutex
	conn net.Conn
}

// maxResponseSize bounds a response; TPMs answer within 4 KiB.
const maxResponseSize = 64 << 10

// commandTimeout bounds one command: RSA key generation on a slow TPM can take
// seconds, a hung emulator should not hang the agent forever.
const commandTimeout = 2 * time.Minute

func (s *streamTPM) Send(cmd []byte) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.conn.SetDeadline(time.Now().Add(commandTimeout)); err != nil {
		return nil, fmt.Errorf("swtpm: set deadline: %w", err)
	}
	if _, err := s.conn.Write(cmd); err != nil {
		return nil, fmt.Errorf("swtpm: send command: %w", err)
	}
	var header [10]byte
	if _, err := io.ReadFull(s.conn, header[:]); err != nil {
		return nil, fmt.Errorf("swtpm: read response header: %w", err)
	}
	size := binary.BigEndian.Uint32(header[2:6])
	if size < 10 || size > maxResponseSize {
		return nil, fmt.Errorf("swtpm: response size %d out of range", size)
	}
	rsp := make([]byte, size)
	copy(rsp, header[:])
	if _, err := io.ReadFull(s.conn, rsp[10:]); err != nil {
		return nil, fmt.Errorf("swtpm: read response body: %w", err)
	}
	return rsp, nil
}

func (s *streamTPM) Close() error { return s.conn.Close() }

var _ transport.TPMCloser = (*streamTPM)(nil)
