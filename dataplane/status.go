package dataplane

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"sort"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/seed4c/moat/lb"
)

// Status is what an instance's pins say about it: where it is attached, what its
// maps hold, and its counters. It is read without loading anything, so it works while
// the daemon runs, after it exited, and from another process.
type Status struct {
	Instance    string             `json:"instance"`
	PinDir      string             `json:"pin_dir"`
	Interfaces  []InterfaceStatus  `json:"interfaces"`
	Attachments []AttachmentStatus `json:"attachments"`
	Services    []ServiceStatus    `json:"services"`
	Backends    []BackendStatus    `json:"backends"`
	Flows       int                `json:"conntrack_entries"`
	Counters    Counters           `json:"counters"`
}

// InterfaceStatus is one pinned XDP link.
type InterfaceStatus struct {
	Name      string `json:"name"`
	Ifindex   uint32 `json:"ifindex"`
	ProgramID uint32 `json:"program_id"`
}

// AttachmentStatus is one (interface, VLAN) -> tenant entry.
type AttachmentStatus struct {
	Ifindex  uint32 `json:"ifindex"`
	VLAN     uint16 `json:"vlan"`
	TenantID uint32 `json:"tenant_id"`
	FIBTable uint32 `json:"fib_table"`
}

// ServiceStatus is one service entry.
type ServiceStatus struct {
	TenantID  uint32         `json:"tenant_id"`
	VIP       netip.AddrPort `json:"vip"`
	Proto     uint8          `json:"proto"`
	ID        uint32         `json:"id"`
	TableSize uint32         `json:"maglev_size"`
}

// BackendStatus is one backend entry.
type BackendStatus struct {
	ID        uint32         `json:"id"`
	TenantID  uint32         `json:"tenant_id"`
	ServiceID uint32         `json:"service_id"`
	Addr      netip.AddrPort `json:"addr"`
	State     lb.State       `json:"state"`
}

// ErrNoInstance is returned by ReadStatus when nothing is pinned for the instance.
var ErrNoInstance = errors.New("no such fast path instance")

// ReadStatus reads the pins of the instance opts names.
func ReadStatus(opts Options) (*Status, error) {
	dir := opts.PinDir()
	if _, err := os.Stat(dir); err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrNoInstance, opts.Instance, err)
	}
	m, err := loadPinnedMaps(dir)
	if err != nil {
		return nil, err
	}
	defer m.Close()
	st := &Status{Instance: opts.Instance, PinDir: dir}
	names, _ := pinnedLinks(dir)
	for _, n := range names {
		l, err := link.LoadPinnedLink(filepath.Join(dir, "links", "xdp_"+n), nil)
		if err != nil {
			return nil, fmt.Errorf("open link pin of %s: %w", n, err)
		}
		is := InterfaceStatus{Name: n}
		if info, err := l.Info(); err == nil {
			is.ProgramID = uint32(info.Program)
			if x := info.XDP(); x != nil {
				is.Ifindex = x.Ifindex
			}
		}
		l.Close()
		st.Interfaces = append(st.Interfaces, is)
	}

	atts := map[gatewayAttachmentKey]gatewayAttachment{}
	svcs := map[gatewayServiceKey]gatewayService{}
	ports := map[uint32]gatewayAttachment{}
	errs := []error{readHash(m.Attachments, atts), readHash(m.Services, svcs)}
	if m.PortAttachments != nil { // pinned by moat since the port array exists
		errs = append(errs, readArray(m.PortAttachments, ports))
	}
	for ifindex, v := range ports {
		atts[gatewayAttachmentKey{Ifindex: ifindex}] = v
	}
	for k, v := range atts {
		st.Attachments = append(st.Attachments, AttachmentStatus{Ifindex: k.Ifindex, VLAN: k.Vlan, TenantID: v.TenantId, FIBTable: v.FibTable})
	}
	sort.Slice(st.Attachments, func(i, j int) bool {
		a, b := st.Attachments[i], st.Attachments[j]
		return a.TenantID < b.TenantID || a.TenantID == b.TenantID && a.Ifindex < b.Ifindex
	})
	for k, v := range svcs {
		st.Services = append(st.Services, ServiceStatus{
			TenantID: k.TenantId, VIP: netip.AddrPortFrom(rawAddr(k.Addr), portRaw(k.Port)), Proto: k.Proto, ID: v.Id, TableSize: v.TableSize,
		})
	}
	sort.Slice(st.Services, func(i, j int) bool { return st.Services[i].ID < st.Services[j].ID })
	backends := map[uint32]gatewayBackend{}
	errs = append(errs, readArray(m.Backends, backends))
	for id, b := range backends {
		st.Backends = append(st.Backends, BackendStatus{
			ID: id, TenantID: b.TenantId, ServiceID: b.ServiceId,
			Addr: netip.AddrPortFrom(rawAddr(b.Addr), portRaw(b.Port)), State: lb.State(b.State),
		})
	}
	sort.Slice(st.Backends, func(i, j int) bool { return st.Backends[i].ID < st.Backends[j].ID })
	errs = append(errs, readBatches(m.Conntrack, func(keys []gatewayCtKey, _ []gatewayCtEntry) { st.Flows += len(keys) }))
	st.Counters, err = readCounters(m)
	errs = append(errs, err)
	return st, errors.Join(errs...)
}

func rawAddr(raw uint32) netip.Addr {
	var b [4]byte
	binary.LittleEndian.PutUint32(b[:], raw)
	return netip.AddrFrom4(b)
}

// loadPinnedMaps opens, read-only, every map of the object that is pinned in dir; the
// names come from the generated bindings' struct tags.
func loadPinnedMaps(dir string) (*gatewayMaps, error) {
	m := &gatewayMaps{}
	v := reflect.ValueOf(m).Elem()
	for i := range v.NumField() {
		name := v.Type().Field(i).Tag.Get("ebpf")
		p := filepath.Join(dir, name)
		if _, err := os.Stat(p); errors.Is(err, os.ErrNotExist) {
			continue // not pinned (per-process state such as the event token buckets)
		}
		mp, err := ebpf.LoadPinnedMap(p, &ebpf.LoadPinOptions{ReadOnly: true})
		if err != nil {
			m.Close()
			return nil, fmt.Errorf("open pinned map %s: %w", p, err)
		}
		v.Field(i).Set(reflect.ValueOf(mp))
	}
	return m, nil
}
