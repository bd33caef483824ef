/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Routing: bpf_fib_lookup in the tenant's table, the egress isolation check, and the
 * redirect map. */
#ifndef MOAT_FIB_H
#define MOAT_FIB_H

#include "common.h"
#include "reason.h"
#include "parse.h"
#include "tenant.h"
#include "route.h"

#ifndef AF_INET
#define AF_INET 2
#endif

/* Interfaces moat may redirect to; the map writer keeps it equal to the set of
 * attached interfaces. DEVMAP_HASH lets the kernel bulk transmissions per device. */
struct {
	__uint(type, BPF_MAP_TYPE_DEVMAP_HASH);
	__uint(max_entries, MAX_TX_PORTS);
	__type(key, __u32);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} tx_ports SEC(".maps");

/* fib_route finds where the rewritten packet goes. It returns REASON_NONE when moat
 * forwards the frame itself (rt filled), PASS_NO_NEIGH when the kernel must resolve the
 * next hop first, or a drop reason. Either way the egress interface has been checked
 * to belong to the tenant: a route can never carry a packet to another tenant. */
static __always_inline enum reason fib_route(struct xdp_md *ctx, struct pkt *p, struct attachment *att,
					     __be32 saddr, __be32 daddr, __be16 sport, __be16 dport,
					     struct route *rt)
{
	struct bpf_fib_lookup fib = {};
	struct egress *eg;
	__u32 flags = 0;
	int rc;

	fib.family = AF_INET;
	fib.l4_protocol = p->l4proto;
	fib.sport = sport;
	fib.dport = dport;
	fib.tos = p->ip->tos;
	fib.tot_len = bpf_ntohs(p->ip->tot_len);
	fib.ipv4_src = saddr;
	fib.ipv4_dst = daddr;
	fib.ifindex = p->ifindex;
	if (att->fib_table) {
		fib.tbid = att->fib_table;
		flags = BPF_FIB_LOOKUP_DIRECT | BPF_FIB_LOOKUP_TBID;
	}

	rc = bpf_fib_lookup(ctx, &fib, sizeof(fib), flags);
	switch (rc) {
	case BPF_FIB_LKUP_RET_SUCCESS:
	case BPF_FIB_LKUP_RET_NO_NEIGH:
		break;
	case BPF_FIB_LKUP_RET_FRAG_NEEDED:
		return DROP_FIB_FRAG_NEEDED;
	case BPF_FIB_LKUP_RET_FWD_DISABLED:
		return DROP_FIB_FWD_DISABLED;
	default:
		return DROP_FIB_UNREACHABLE;
	}

	eg = tenant_egress(att->tenant_id, fib.ifindex);
	if (!eg)
		return DROP_EGRESS_NOT_ATTACHED;
	rt->ifindex = fib.ifindex;
	rt->vlan = eg->vlan;
	if (rc == BPF_FIB_LKUP_RET_NO_NEIGH) {
		/* The stack resolves the neighbour and forwards the packet itself, but it
		 * has no VLAN devices here: it can neither read nor write a tag. */
		if (p->tagged || rt->vlan)
			return DROP_NO_NEIGH_TAGGED;
		return PASS_NO_NEIGH;
	}
	if (!bpf_map_lookup_elem(&tx_ports, &rt->ifindex))
		return DROP_NO_TX_PORT;
	__builtin_memcpy(rt->smac, fib.smac, ETH_ALEN);
	__builtin_memcpy(rt->dmac, fib.dmac, ETH_ALEN);
	return REASON_NONE;
}

#endif /* MOAT_FIB_H */
