package dataplane

import (
	"errors"
	"fmt"
	"net/netip"
)

// HostService is one of the gateway's own services that tenant networks may reach
// through an attached interface: frames to Addr:Port/Proto arriving untagged on
// Ifindex go to the kernel stack (bpf/lib/host.h). Everything else addressed to the
// gateway is dropped.
type HostService struct {
	Ifindex uint32
	Addr    netip.Addr
	Port    uint16
	Proto   uint8
}

func (h HostService) key() (gatewayHostServiceKey, error) {
	if !h.Addr.Is4() || h.Port == 0 || h.Ifindex == 0 || (h.Proto != protoTCP && h.Proto != protoUDP) {
		return gatewayHostServiceKey{}, fmt.Errorf("host service %+v: want an interface, an IPv4 address, a port and tcp or udp", h)
	}
	return gatewayHostServiceKey{Ifindex: h.Ifindex, Addr: addrRaw(h.Addr), Port: portRaw(h.Port), Proto: h.Proto}, nil
}

// hostFilterOf: the host filter (host_filter of bpf/lib/host.h) of these host
// service keys, the ingress ifindex in the tenant's place.
func hostFilterOf(services map[gatewayHostServiceKey]uint32) map[uint32]uint64 {
	hashes := make([]uint32, 0, len(services))
	for k := range services {
		hashes = append(hashes, filterHashRaw(k.Ifindex, k.Addr, k.Port, k.Proto))
	}
	return filterWordsOf(hashes)
}

// SetHostServices makes the fast path pass exactly these host services to the stack.
// Their filter bits are set before a service is inserted and cleared only after the
// services that go are deleted, so the program never takes a listed service for a
// stray.
func (w *Writer) SetHostServices(services []HostService) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(services) > int(w.m.HostServices.MaxEntries()) {
		return fmt.Errorf("%d host services: the fast path holds %d", len(services), w.m.HostServices.MaxEntries())
	}
	want := map[gatewayHostServiceKey]uint32{}
	for _, h := range services {
		k, err := h.key()
		if err != nil {
			return err
		}
		want[k] = 1
	}
	have := map[gatewayHostServiceKey]uint32{}
	haveBits := map[uint32]uint64{}
	if err := errors.Join(readHash(w.m.HostServices, have), readArray(w.m.HostFilter, haveBits)); err != nil {
		return err
	}
	wantBits := hostFilterOf(want)
	if err := setFilterBits(w.m.HostFilter, haveBits, wantBits); err != nil {
		return err
	}
	if err := putChanged(w.m.HostServices, have, want); err != nil {
		return err
	}
	if err := deleteGone(w.m.HostServices, have, want); err != nil {
		return err
	}
	return clearFilterBits(w.m.HostFilter, haveBits, wantBits)
}
