package dataplane

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
)

// filterWords is FILTER_WORDS of bpf/lib/filter.h: each key filter has 64 times as
// many bits (TestMapSizesMatchDefaultLimits checks it).
const filterWords = 1024

// FilterHash is filter_hash of bpf/lib/filter.h: the bit a key (tenant, address, port
// in host order, protocol) has in a key filter. It is a multiply-xorshift hash over the
// key's fields read as raw little-endian words, like FlowHash, reduced to 16 bits.
func FilterHash(tenantID uint32, addr [4]byte, port uint16, proto uint8) uint32 {
	return filterHashRaw(tenantID, le.Uint32(addr[:]), portRaw(port), proto)
}

// filterHashRaw takes the address and port as the map keys carry them.
func filterHashRaw(tenantID, addr uint32, port uint16, proto uint8) uint32 {
	h := tenantID*0x9e3779b1 + addr
	h = (h^(h>>15))*0x85ebca77 + (uint32(port)<<16 | uint32(proto))
	h = (h ^ (h >> 15)) * 0xc2b2ae3d
	return (h ^ (h >> 16)) & 0xffff
}

// filterWordsOf returns the filter words (by index, non-zero words only) in which
// exactly the bits of these hashes are set.
func filterWordsOf(hashes []uint32) map[uint32]uint64 {
	words := map[uint32]uint64{}
	for _, h := range hashes {
		words[h>>6] |= 1 << (h & 63)
	}
	return words
}

// serviceFilterOf: the service filter of these service keys.
func serviceFilterOf(services map[gatewayServiceKey]gatewayService) map[uint32]uint64 {
	hashes := make([]uint32, 0, len(services))
	for k := range services {
		hashes = append(hashes, filterHashRaw(k.TenantId, k.Addr, k.Port, k.Proto))
	}
	return filterWordsOf(hashes)
}

// backendFilterOf: the backend filter of these backends (any state, removed ones
// zeroed and skipped), each with its service's protocol.
func backendFilterOf(backends map[uint32]gatewayBackend, services map[gatewayServiceKey]gatewayService) map[uint32]uint64 {
	proto := map[uint32]uint8{} // by service id
	for k, v := range services {
		proto[v.Id] = k.Proto
	}
	hashes := make([]uint32, 0, len(backends))
	for _, b := range backends {
		if p, ok := proto[b.ServiceId]; ok && b.TenantId != 0 {
			hashes = append(hashes, filterHashRaw(b.TenantId, b.Addr, b.Port, p))
		}
	}
	return filterWordsOf(hashes)
}

// setFilterBits writes, for every word of next, that word ORed with what prev holds:
// afterwards every bit of both is set. Apply calls it before it publishes what the
// bits stand for, so that a published key's bit is never clear.
func setFilterBits(m *ebpf.Map, prev, next map[uint32]uint64) error {
	for i, w := range next {
		if prev[i]|w == prev[i] {
			continue
		}
		if err := m.Put(i, prev[i]|w); err != nil {
			return fmt.Errorf("set %s word %d: %w", m, i, err)
		}
	}
	return nil
}

// clearFilterBits makes the filter hold exactly next, given that it holds the union
// of prev and next. Apply calls it after withdrawing what the bits stood for.
func clearFilterBits(m *ebpf.Map, prev, next map[uint32]uint64) error {
	for i, w := range prev {
		if w|next[i] == next[i] {
			continue
		}
		if err := m.Put(i, next[i]); err != nil {
			return fmt.Errorf("clear %s word %d: %w", m, i, err)
		}
	}
	return nil
}

// fillFilters sets the filter bits of every service, backend and host service the maps
// hold. Open calls it so that a fast path loaded over maps pinned by a version without
// the filters (or with filters that lost bits) takes no published service for no
// service, no backend's reply and no host service's packet for a stray before the first
// Apply or SetHostServices. It only sets bits, which is what the maps' contents call for
// anyway.
func (w *Writer) fillFilters() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	services := map[gatewayServiceKey]gatewayService{}
	backends := map[uint32]gatewayBackend{}
	hosts := map[gatewayHostServiceKey]uint32{}
	haveServices, haveBackends, haveHosts := map[uint32]uint64{}, map[uint32]uint64{}, map[uint32]uint64{}
	if err := errors.Join(readHash(w.m.Services, services), readArray(w.m.Backends, backends), readHash(w.m.HostServices, hosts),
		readArray(w.m.ServiceFilter, haveServices), readArray(w.m.BackendFilter, haveBackends), readArray(w.m.HostFilter, haveHosts)); err != nil {
		return err
	}
	return errors.Join(setFilterBits(w.m.ServiceFilter, haveServices, serviceFilterOf(services)),
		setFilterBits(w.m.BackendFilter, haveBackends, backendFilterOf(backends, services)),
		setFilterBits(w.m.HostFilter, haveHosts, hostFilterOf(hosts)))
}
