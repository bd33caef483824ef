package dataplane

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/ringbuf"
)

// EventType is a flow event's kind (enum event_type).
type EventType uint8

// Flow event kinds.
const (
	EventFlowNew = EventType(gatewayEventTypeEVENT_FLOW_NEW)
	EventFlowEnd = EventType(gatewayEventTypeEVENT_FLOW_END)
	EventDrop    = EventType(gatewayEventTypeEVENT_DROP)
)

func (t EventType) String() string {
	switch t {
	case EventFlowNew:
		return "new"
	case EventFlowEnd:
		return "end"
	case EventDrop:
		return "drop"
	}
	return fmt.Sprintf("event(%d)", uint8(t))
}

// Event is one flow event from the fast path.
type Event struct {
	Time      time.Duration // CLOCK_MONOTONIC_COARSE
	Type      EventType
	Reason    Reason // drops only
	Reply     bool   // seen in the backend -> client direction
	Ifindex   uint32
	VLAN      uint16
	TenantID  uint32
	ServiceID uint32
	BackendID uint32
	Proto     uint8
	Src, Dst  netip.AddrPort
}

const eventSize = int(unsafe.Sizeof(gatewayFlowEvent{}))

// ErrShortEvent is returned for a record too short to be a flow event.
var ErrShortEvent = errors.New("flow event record too short")

// DecodeEvent decodes one ring buffer record. It does not allocate: the reader of a
// busy gateway decodes hundreds of thousands of events per second.
func DecodeEvent(raw []byte) (Event, error) {
	if len(raw) < eventSize {
		return Event{}, fmt.Errorf("%w: %d bytes, want %d", ErrShortEvent, len(raw), eventSize)
	}
	var e gatewayFlowEvent
	u8 := func(off uintptr) uint8 { return raw[off] }
	u16 := func(off uintptr) uint16 { return binary.NativeEndian.Uint16(raw[off:]) }
	u32 := func(off uintptr) uint32 { return binary.NativeEndian.Uint32(raw[off:]) }
	addr := func(off uintptr) netip.Addr { return netip.AddrFrom4([4]byte(raw[off : off+4])) }
	port := func(off uintptr) uint16 { return binary.BigEndian.Uint16(raw[off:]) }
	return Event{
		Time:      time.Duration(binary.NativeEndian.Uint64(raw[unsafe.Offsetof(e.TsNs):])),
		Type:      EventType(u8(unsafe.Offsetof(e.Type))),
		Reason:    Reason(u8(unsafe.Offsetof(e.Reason))),
		Reply:     u8(unsafe.Offsetof(e.Flags))&0x01 != 0,
		Ifindex:   u32(unsafe.Offsetof(e.Ifindex)),
		VLAN:      u16(unsafe.Offsetof(e.Vlan)),
		TenantID:  u32(unsafe.Offsetof(e.TenantId)),
		ServiceID: u32(unsafe.Offsetof(e.ServiceId)),
		BackendID: u32(unsafe.Offsetof(e.BackendId)),
		Proto:     u8(unsafe.Offsetof(e.Proto)),
		Src:       netip.AddrPortFrom(addr(unsafe.Offsetof(e.Saddr)), port(unsafe.Offsetof(e.Sport))),
		Dst:       netip.AddrPortFrom(addr(unsafe.Offsetof(e.Daddr)), port(unsafe.Offsetof(e.Dport))),
	}, nil
}

// EventReader reads flow events from an instance's ring buffer.
type EventReader struct {
	rd *ringbuf.Reader
}

// Events opens a reader on the instance's flow events. Only one reader should consume
// them at a time: each event is delivered once.
func (d *Dataplane) Events() (*EventReader, error) {
	rd, err := ringbuf.NewReader(d.objs.Events)
	if err != nil {
		return nil, fmt.Errorf("open flow event ring buffer: %w", err)
	}
	return &EventReader{rd: rd}, nil
}

// SetDeadline makes Read return os.ErrDeadlineExceeded after t when no event came.
func (r *EventReader) SetDeadline(t time.Time) { r.rd.SetDeadline(t) }

// Read blocks until the next event (or the deadline, or Close).
func (r *EventReader) Read() (Event, error) {
	rec, err := r.rd.Read()
	if err != nil {
		return Event{}, err
	}
	return DecodeEvent(rec.RawSample)
}

// Close stops the reader; a blocked Read returns ringbuf.ErrClosed.
func (r *EventReader) Close() error { return r.rd.Close() }

// OpenPinnedEvents opens a reader on the flow events of a running instance, through its
// pinned ring buffer (for a process beside the daemon, such as the demo).
func OpenPinnedEvents(opts Options) (*EventReader, error) {
	m, err := ebpf.LoadPinnedMap(filepath.Join(opts.PinDir(), gatewayMapEvents), nil)
	if err != nil {
		return nil, fmt.Errorf("open the flow events of instance %s: %w", opts.Instance, err)
	}
	defer m.Close() // the reader holds its own reference
	rd, err := ringbuf.NewReader(m)
	if err != nil {
		return nil, fmt.Errorf("open flow event ring buffer: %w", err)
	}
	return &EventReader{rd: rd}, nil
}
