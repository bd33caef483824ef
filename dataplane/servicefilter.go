package dataplane

import (
	"fmt"

	"github.com/cilium/ebpf"
)

// serviceFilterWords is SERVICE_FILTER_WORDS of bpf/lib/lb.h: the service filter has
// 64 times as many bits (TestMapSizesMatchDefaultLimits checks it).
const serviceFilterWords = 1024

// ServiceFilterHash is service_filter_hash of bpf/lib/lb.h: the bit of the service
// filter that a service key (tenant, VIP, port in host order, protocol) sets. It is
// MurmurHash3 over the key's fields read as raw little-endian words, like FlowHash,
// reduced to its top 16 bits.
func ServiceFilterHash(tenantID uint32, addr [4]byte, port uint16, proto uint8) uint32 {
	return serviceFilterHashRaw(tenantID, le.Uint32(addr[:]), portRaw(port), proto)
}

// serviceFilterHashRaw takes the address and port as the map keys carry them.
func serviceFilterHashRaw(tenantID, addr uint32, port uint16, proto uint8) uint32 {
	h := murmurMix(0, tenantID)
	h = murmurMix(h, addr)
	h = murmurMix(h, uint32(port)<<16|uint32(proto))
	return murmurFmix(h^12) >> 16
}

// serviceFilterOf returns the filter words (by index, non-zero words only) in which
// exactly the bits of these service keys are set.
func serviceFilterOf(services map[gatewayServiceKey]gatewayService) map[uint32]uint64 {
	words := map[uint32]uint64{}
	for k := range services {
		h := serviceFilterHashRaw(k.TenantId, k.Addr, k.Port, k.Proto)
		words[h>>6] |= 1 << (h & 63)
	}
	return words
}

// setFilterBits writes, for every word of next, that word ORed with what prev holds:
// afterwards every bit of both is set. Apply calls it before it publishes services, so
// that a published service's bit is never clear (a clear bit means "no service").
func setFilterBits(m *ebpf.Map, prev, next map[uint32]uint64) error {
	for i, w := range next {
		if prev[i]|w == prev[i] {
			continue
		}
		if err := m.Put(i, prev[i]|w); err != nil {
			return fmt.Errorf("set service filter word %d: %w", i, err)
		}
	}
	return nil
}

// clearFilterBits makes the filter hold exactly next, given that it holds the union
// of prev and next. Apply calls it after services are withdrawn.
func clearFilterBits(m *ebpf.Map, prev, next map[uint32]uint64) error {
	for i, w := range prev {
		if w|next[i] == next[i] {
			continue
		}
		if err := m.Put(i, next[i]); err != nil {
			return fmt.Errorf("clear service filter word %d: %w", i, err)
		}
	}
	return nil
}

// fillServiceFilter sets the filter bits of every service the services map holds. Open
// calls it so that a fast path loaded over maps pinned by a version without the
// filter (or with a filter that lost bits) never takes a published service for no
// service before the first Apply. It only sets bits, which is always safe.
func (w *Writer) fillServiceFilter() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	services := map[gatewayServiceKey]gatewayService{}
	if err := readHash(w.m.Services, services); err != nil {
		return err
	}
	have := map[uint32]uint64{}
	if err := readArray(w.m.ServiceFilter, have); err != nil {
		return err
	}
	return setFilterBits(w.m.ServiceFilter, have, serviceFilterOf(services))
}
