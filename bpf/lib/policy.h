/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Per-tenant allow rules: source prefix -> service. Default deny. The tenant and service
 * ids are the first 64 bits of the LPM key and every entry's prefix covers them whole,
 * so one lookup answers "does any rule of this tenant allow this source to this
 * service", and no rule can ever match another tenant's or service's traffic. */
#ifndef MOAT_POLICY_H
#define MOAT_POLICY_H

#include "common.h"

#define POLICY_ID_BITS 64

struct policy_key {
	__u32 prefixlen; /* POLICY_ID_BITS + source prefix length */
	__u32 tenant_id;
	__u32 service_id;
	__be32 saddr;
};

struct policy_rule {
	__u32 rule_id; /* the tenant rule this entry was compiled from, for diagnostics */
};

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, MAX_POLICY);
	__type(key, struct policy_key);
	__type(value, struct policy_rule);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} policy SEC(".maps");

static __always_inline int policy_allows(__u32 tenant_id, __u32 service_id, __be32 saddr)
{
	struct policy_key k = {
		.prefixlen = POLICY_ID_BITS + 32,
		.tenant_id = tenant_id,
		.service_id = service_id,
		.saddr = saddr,
	};

	return bpf_map_lookup_elem(&policy, &k) != NULL;
}

#endif /* MOAT_POLICY_H */
