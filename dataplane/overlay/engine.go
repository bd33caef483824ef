package overlay

import (
	"errors"
	"fmt"
	"log/slog"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun"
)

// Engine is the WireGuard implementation as the Node drives it: the I/O boundary to
// wireguard-go. WireGuard runs wireguard-go in process on a kernel TUN; tests also run
// it on in-memory TUNs and binds (tun/tuntest, conn/bindtest), or use a recording fake.
//
// Contract: Configure takes a UAPI "set" operation (it may hold keys: it is never logged
// by the Node); Status returns the device's state with every secret filtered out
// (ParseStatus): the raw UAPI dump never leaves the implementation.
type Engine interface {
	Configure(uapi string) error
	Status() (DeviceStatus, error)
	// Handshake starts a handshake with a configured peer now (after a PSK rotation: the
	// next session is keyed with the new PSK without waiting for the two-minute rekey).
	Handshake(peer Key) error
	Close() error
}

// WireGuard is an Engine on wireguard-go.
type WireGuard struct {
	dev *device.Device
}

// NewWireGuard starts wireguard-go on t and bind. The device is down until the first
// Configure that sets a private key and port, and Up.
func NewWireGuard(t tun.Device, bind conn.Bind, log *slog.Logger) *WireGuard {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	logger := &device.Logger{
		// wireguard-go's messages name peers by a truncated public key, never a secret.
		Verbosef: func(format string, args ...any) { log.Debug(fmt.Sprintf(format, args...)) },
		Errorf:   func(format string, args ...any) { log.Warn(fmt.Sprintf(format, args...)) },
	}
	return &WireGuard{dev: device.NewDevice(t, bind, logger)}
}

// Configure implements Engine.
func (w *WireGuard) Configure(uapi string) error {
	if err := w.dev.IpcSet(uapi); err != nil {
		return fmt.Errorf("configure WireGuard: %w", err)
	}
	return nil
}

// Up brings the device up: it opens the bind (UDP sockets) in the calling thread's
// network namespace.
func (w *WireGuard) Up() error {
	if err := w.dev.Up(); err != nil {
		return fmt.Errorf("WireGuard up: %w", err)
	}
	return nil
}

// Status implements Engine.
func (w *WireGuard) Status() (DeviceStatus, error) {
	dump, err := w.dev.IpcGet()
	if err != nil {
		return DeviceStatus{}, fmt.Errorf("WireGuard status: %w", err)
	}
	return ParseStatus(dump)
}

// Handshake implements Engine.
func (w *WireGuard) Handshake(peer Key) error {
	p := w.dev.LookupPeer(device.NoisePublicKey(peer))
	if p == nil {
		return fmt.Errorf("handshake with %s: no such peer", peer)
	}
	return p.SendHandshakeInitiation(false)
}

// Close implements Engine: it closes the device, its TUN and its bind.
func (w *WireGuard) Close() error {
	w.dev.Close()
	return nil
}

// CreateTUN creates the overlay's kernel TUN device in the calling thread's network
// namespace. wireguard-go opens it with IFF_VNET_HDR and enables the kernel's TCP (and,
// from Linux 6.2, UDP) segmentation offloads on it when the kernel accepts them: it then
// reads TSO super-packets and writes GRO-coalesced ones, and its UDP bind uses
// UDP_SEGMENT/UDP_GRO, so the per-packet costs are paid per batch. Offloads reports
// whether that happened.
func CreateTUN(name string, mtu int) (tun.Device, error) {
	t, err := tun.CreateTUN(name, mtu)
	if err != nil {
		return nil, fmt.Errorf("create TUN %s: %w", name, err)
	}
	f := &fixedMTU{Device: t, mtu: mtu, events: make(chan tun.Event)}
	go f.filterEvents()
	return f, nil
}

// Offloads reports whether a TUN made by CreateTUN reads and writes batches (virtio
// headers with GSO, the kernel's offloads).
func Offloads(t tun.Device) bool { return t.BatchSize() > 1 }

// fixedMTU keeps wireguard-go from acting on its own in whatever network namespace its
// goroutines happen to run in. Its MTU() would ask the kernel through a socket opened
// in the calling thread's namespace, and a link event would make it reopen its UDP
// sockets (device.Up) from its event goroutine: both are the wrong namespace when one
// process runs overlays in several (the tests do). So the MTU is the one the TUN was
// created with (the Node is the only one that sets it) and link events are not
// forwarded: the device goes up when the Node says so, in the namespace it says.
type fixedMTU struct {
	tun.Device
	mtu    int
	events chan tun.Event
}

func (f *fixedMTU) MTU() (int, error)        { return f.mtu, nil }
func (f *fixedMTU) Events() <-chan tun.Event { return f.events }

func (f *fixedMTU) filterEvents() {
	defer close(f.events)
	for range f.Device.Events() {
	}
}

var errClosed = errors.New("overlay node is closed")
