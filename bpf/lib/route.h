/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* A route the fast path found and checked, and the rule for reusing it. Conntrack
 * entries keep the last one of their flow: an established flow then skips the routing
 * lookup, the tenant's egress check, the redirect-map check and (forward direction)
 * the policy lookup, which together are most of the per-packet cost. The reuse is
 * exact, not optimistic: the writer bumps the configuration generation on every change
 * of the maps those checks read, routes are revalidated after cfg_route_ttl_jiffies (the
 * kernel's routes and neighbours change without telling moat), and a packet longer
 * than any the route was checked for is looked up again (the MTU). */
#ifndef MOAT_ROUTE_H
#define MOAT_ROUTE_H

#include "common.h"
#include "clock.h"
#include "config.h"

struct route {
	__u32 time;    /* clock_stamp() of when it was looked up; 0: none */
	__u32 gen;     /* configuration generation it was checked under */
	__u32 ifindex; /* egress */
	__u16 vlan;    /* egress tag of the tenant on ifindex */
	__u16 len_ok;  /* IPv4 total length known to fit the egress MTU */
	__u8 smac[ETH_ALEN];
	__u8 dmac[ETH_ALEN];
};

/* The writer's generation counter: one slot, bumped at the start and the end of every
 * change it applies. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} config_gen SEC(".maps");

static __always_inline __u32 config_generation(void)
{
	__u32 k = 0, *g = bpf_map_lookup_elem(&config_gen, &k);

	return g ? *g : 0;
}

static __always_inline int route_reusable(struct route *r, __u32 gen, __u64 now, __u16 tot_len)
{
	__s32 age = clock_since(now, r->time);

	return r->time && r->gen == gen && age >= 0 && (__u64)age < cfg_route_ttl_jiffies &&
	       tot_len <= r->len_ok;
}

/* route_mark_reusable stamps a route fib_route just found and checked. */
static __always_inline void route_mark_reusable(struct route *r, __u32 gen, __u64 now, __u16 tot_len)
{
	r->time = clock_stamp(now);
	r->gen = gen;
	r->len_ok = tot_len;
}

#endif /* MOAT_ROUTE_H */
