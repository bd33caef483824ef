//go:build ignore

/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* The ceiling: plain XDP forwarding with no policy, the kernel's xdp_fwd sample in
 * substance. Parse Ethernet and IPv4, look the destination up in the kernel's FIB
 * (rules and tables included), decrement the TTL, rewrite the MACs and redirect
 * through a devmap; anything it cannot forward goes to the stack.
 *
 * Two bounds come from the same object, for the targets that no system might reach on
 * this path:
 * - with track_flows set, xdp_fwd is the simplest stateful forwarder: one LRU hash of
 *   moat's conntrack size and entry layout (the loader checks both against moat's),
 *   one entry per TCP/UDP flow holding the flow's route. A frame of a known flow costs
 *   one lookup and goes out by its entry's route, with no FIB lookup; a new flow costs
 *   the lookup, a FIB lookup and one insert. moat keeps two entries per flow (reverse
 *   NAT) and does much more per frame: this is the least per-flow state can cost;
 * - xdp_drop_all counts every frame and drops it: the cheapest isolation there is. */

#include "bench.h"

#ifndef AF_INET
#define AF_INET 2
#endif

struct {
	__uint(type, BPF_MAP_TYPE_DEVMAP);
	__uint(max_entries, 256);
	__type(key, __u32);
	__type(value, __u32);
} fwd_ports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct counter);
} fwd_stats SEC(".maps");

volatile const __u8 track_flows = 0;

/* The sizes of moat's struct ct_key and struct ct_entry (bpf/lib/conntrack.h), so that
 * an insert moves as many bytes and an entry takes as much memory. */
struct flow_key {
	__u32 tenant_id;
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 dir;
	__u16 pad;
};

struct flow_state {
	__u32 ifindex; /* egress; 0: the FIB had no route, look again */
	__u8 smac[ETH_ALEN];
	__u8 dmac[ETH_ALEN];
	__u32 pad[9];
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 1); /* the loader sets moat's conntrack size */
	__type(key, struct flow_key);
	__type(value, struct flow_state);
} fwd_flows SEC(".maps");

static __always_inline void count(struct xdp_md *ctx)
{
	struct counter *n;
	__u32 k = 0;

	n = bpf_map_lookup_elem(&fwd_stats, &k);
	if (n) {
		n->packets++;
		n->bytes += ctx->data_end - ctx->data;
	}
}

static __always_inline void ip_decrease_ttl(struct iphdr *ip)
{
	__u32 check = ip->check;

	check += bpf_htons(0x0100);
	ip->check = (__u16)(check + (check >= 0xFFFF));
	ip->ttl--;
}

/* flow_key_of fills every field of k for a TCP or UDP frame (the caller leaves k
 * uninitialised: the plain forwarder must not pay for it); it returns 0 for anything
 * else, with k untouched. The ingress interface stands in for moat's tenant id: the
 * tenants of the mixed scenario send identical tuples, which must be as many flows
 * here as in moat, and never share a route. */
static __always_inline int flow_key_of(struct flow_key *k, struct xdp_md *ctx, struct iphdr *ip, void *data_end)
{
	__be16 *ports = (void *)(ip + 1);

	if (ip->ihl != 5 || (ip->protocol != IPPROTO_TCP && ip->protocol != IPPROTO_UDP) ||
	    (void *)(ports + 2) > data_end)
		return 0;
	k->tenant_id = ctx->ingress_ifindex;
	k->dir = 0;
	k->pad = 0;
	k->saddr = ip->saddr;
	k->daddr = ip->daddr;
	k->sport = ports[0];
	k->dport = ports[1];
	k->proto = ip->protocol;
	return 1;
}

static __always_inline int out(struct xdp_md *ctx, struct ethhdr *eth, struct iphdr *ip, __u32 ifindex,
			       const __u8 *smac, const __u8 *dmac)
{
	ip_decrease_ttl(ip);
	__builtin_memcpy(eth->h_dest, dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, smac, ETH_ALEN);
	count(ctx);
	return bpf_redirect_map(&fwd_ports, ifindex, 0);
}

SEC("xdp")
int xdp_fwd(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);
	struct bpf_fib_lookup fib = {};
	struct flow_key k;
	struct flow_state *st = NULL;
	int tracked = 0;
	long rc;

	if ((void *)(ip + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP))
		return XDP_PASS;
	if (ip->ttl <= 1)
		return XDP_PASS;
	if (track_flows && flow_key_of(&k, ctx, ip, data_end)) {
		tracked = 1;
		st = bpf_map_lookup_elem(&fwd_flows, &k);
		if (st && st->ifindex)
			return out(ctx, eth, ip, st->ifindex, st->smac, st->dmac);
	}
	fib.family = AF_INET;
	fib.tos = ip->tos;
	fib.l4_protocol = ip->protocol;
	fib.tot_len = bpf_ntohs(ip->tot_len);
	fib.ipv4_src = ip->saddr;
	fib.ipv4_dst = ip->daddr;
	fib.ifindex = ctx->ingress_ifindex;
	rc = bpf_fib_lookup(ctx, &fib, sizeof(fib), 0);
	if (rc != BPF_FIB_LKUP_RET_SUCCESS || !bpf_map_lookup_elem(&fwd_ports, &fib.ifindex)) {
		if (tracked && !st) {
			struct flow_state none = {};

			bpf_map_update_elem(&fwd_flows, &k, &none, BPF_ANY);
		}
		return XDP_PASS;
	}
	if (tracked) {
		struct flow_state s = { .ifindex = fib.ifindex };

		__builtin_memcpy(s.smac, fib.smac, ETH_ALEN);
		__builtin_memcpy(s.dmac, fib.dmac, ETH_ALEN);
		bpf_map_update_elem(&fwd_flows, &k, &s, BPF_ANY);
	}
	return out(ctx, eth, ip, fib.ifindex, fib.smac, fib.dmac);
}

SEC("xdp")
int xdp_drop_all(struct xdp_md *ctx)
{
	count(ctx);
	return XDP_DROP;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
