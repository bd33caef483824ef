/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* The flow hash that indexes Maglev tables: MurmurHash3 (x86, 32-bit) over five
 * 32-bit words (tenant, source address, destination address, ports, protocol). The
 * words are raw loads of the header fields as a little-endian CPU sees them; the Go
 * model (dataplane.FlowHash) reads them the same way. Tenant id is hashed too, so two
 * tenants' identical tuples spread independently. */
#ifndef MOAT_HASH_H
#define MOAT_HASH_H

#include "common.h"

static __always_inline __u32 rol32(__u32 w, __u32 s)
{
	return (w << s) | (w >> (32 - s));
}

static __always_inline __u32 murmur_mix(__u32 h, __u32 k)
{
	k *= 0xcc9e2d51;
	k = rol32(k, 15);
	k *= 0x1b873593;
	h ^= k;
	h = rol32(h, 13);
	return h * 5 + 0xe6546b64;
}

static __always_inline __u32 murmur_fmix(__u32 h)
{
	h ^= h >> 16;
	h *= 0x85ebca6b;
	h ^= h >> 13;
	h *= 0xc2b2ae35;
	h ^= h >> 16;
	return h;
}

static __always_inline __u32 flow_hash(__u32 seed, __u32 tenant_id, __be32 saddr, __be32 daddr,
				       __be16 sport, __be16 dport, __u8 proto)
{
	__u32 h = seed;

	h = murmur_mix(h, tenant_id);
	h = murmur_mix(h, saddr);
	h = murmur_mix(h, daddr);
	h = murmur_mix(h, ((__u32)sport << 16) | dport);
	h = murmur_mix(h, proto);
	return murmur_fmix(h ^ 20);
}

#endif /* MOAT_HASH_H */
