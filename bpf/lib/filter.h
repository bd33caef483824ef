/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Key filters: bitmaps with one bit per hash of a (tenant, address, port, protocol)
 * key, read with one inlined array load, that let packets which cannot match a hash
 * map skip its lookup.
 *
 * service_filter has the bits of the services' keys (tenant, VIP, port, protocol): a
 * packet whose destination's bit is clear is for no service, so replies and strays
 * skip the service lookup, and only packets that may be for a service look up their
 * forward conntrack entry first (gateway.c). It is an optimisation only: the map
 * writer sets a service's bit before it publishes the service and clears bits only
 * after withdrawing services, so a clear bit is always right.
 *
 * backend_filter has the bits of the backends' keys (tenant, address, port, the
 * service's protocol), whatever their state: a reply comes from a backend, so a
 * packet whose source's bit is clear is no reply and skips the conntrack lookup.
 * This one is part of the decision (dataplane/model.go computes the same bits): a
 * backend removed from the configuration loses its bit with its slot, so its late
 * replies are dropped as no_service instead of backend_evicted, unless another
 * backend's key has the same bit. The writer sets a new backend's bit before any
 * table can pick it.
 *
 * host_filter (host.h) does for the gateway's own services what service_filter does
 * for the tenants': strays skip the host service lookup. */
#ifndef MOAT_FILTER_H
#define MOAT_FILTER_H

#include "common.h"

#define FILTER_WORDS 1024 /* 65536 bits: a few per cent set at 4096 keys */

struct filter {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, FILTER_WORDS);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
};

struct filter service_filter SEC(".maps");
struct filter backend_filter SEC(".maps");

/* filter_hash: 16 bits of a multiply-xorshift hash over the key's words, read as
 * flow_hash reads them (dataplane.FilterHash is its Go twin). Three multiplies where
 * MurmurHash3 takes eight and ten rotations: every packet pays one or two of these
 * hashes, and a weak bit only costs a conntrack lookup (TestFilterHashSpreads keeps
 * its spread near a uniform hash's on structured keys). */
static __always_inline __u32 filter_hash(__u32 tenant_id, __be32 addr, __be16 port, __u8 proto)
{
	__u32 h = tenant_id * 0x9e3779b1 + addr;

	h = (h ^ (h >> 15)) * 0x85ebca77 + (((__u32)port << 16) | proto);
	h = (h ^ (h >> 15)) * 0xc2b2ae3d;
	return (h ^ (h >> 16)) & 0xffff;
}

/* filter_has returns 0 when no key of the filter has the bit of this one. */
static __always_inline int filter_has(void *filter, __u32 tenant_id, __be32 addr, __be16 port, __u8 proto)
{
	__u32 h = filter_hash(tenant_id, addr, port, proto), word = h >> 6;
	__u64 *w = bpf_map_lookup_elem(filter, &word);

	return w && (*w & (1ULL << (h & 63)));
}

#endif /* MOAT_FILTER_H */
