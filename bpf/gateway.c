//go:build ignore

/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* moat's XDP fast path: entry points only. The per-packet decision, in order
 * (DESIGN.md, "Data path"; dataplane/model.go is its Go twin):
 *   parse L2 -> tenant of (ifindex, VLAN) -> ARP passes, IPv6/other L3 drop ->
 *   parse IPv4 and TCP/UDP -> service of (tenant, dst, dport, proto)?
 *     yes: conntrack (its backend still usable?) -> policy -> else Maglev pick of an
 *          admitted backend -> DNAT -> route -> out
 *          (an established flow with a route checked under the current configuration
 *          skips the service lookup: see to_service)
 *     no:  from a backend (filter.h)? -> reply conntrack entry? -> backend still usable?
 *          -> reverse NAT -> route -> out
 *          else one of the gateway's own services (host.h)? -> the kernel stack
 *   anything else is dropped with a reason.
 * An established flow reuses the route, egress and policy checks its conntrack entry
 * made under the current configuration generation (lib/route.h). */

#include "lib/common.h"
#include "lib/config.h"
#include "lib/clock.h"
#include "lib/reason.h"
#include "lib/parse.h"
#include "lib/tenant.h"
#include "lib/policy.h"
#include "lib/lb.h"
#include "lib/filter.h"
#include "lib/conntrack.h"
#include "lib/nat.h"
#include "lib/vlan.h"
#include "lib/fib.h"
#include "lib/host.h"
#include "lib/counters.h"
#include "lib/events.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Keeps these types in the object's BTF (a type used only inside inlined code or
 * through its constants leaves none behind): dataplane names reasons from it and checks that
 * backend_state's values are lb.State's. */
struct btf_enums {
	enum reason reason;
	enum backend_state backend_state;
	enum event_type event_type;
	enum event_counter event_counter;
	struct flow_event flow_event;
};
const struct btf_enums *btf_enums __attribute__((unused));

static __always_inline int drop(struct pkt *p, __u32 tenant_id, enum reason r)
{
	count_reason(r, p->len);
	if (p->ts)
		traffic_add(&p->ts->dropped, p->len);
	event_emit(EVENT_DROP, r, p, tenant_id, 0, 0, 0);
	return XDP_DROP;
}

static __always_inline void count_forwarded(struct pkt *p)
{
	if (p->ts)
		traffic_add(&p->ts->fwd, p->len);
}

static __always_inline int pass(struct pkt *p, __u32 tenant_id, enum reason r)
{
	count_reason(r, p->len);
	count_forwarded(p);
	return XDP_PASS;
}

static __always_inline int backend_usable(struct backend *b, __u32 tenant_id, __u32 service_id)
{
	return b->tenant_id == tenant_id && b->service_id == service_id &&
	       (b->state == BACKEND_ADMITTED || b->state == BACKEND_DRAINING);
}

/* transmit sends the rewritten frame toward rt (or to the stack for PASS_NO_NEIGH). */
static __always_inline int transmit(struct xdp_md *ctx, struct pkt *p, __u32 tenant_id, enum reason r,
				    struct route *rt)
{
	void *data, *data_end;
	struct ethhdr *eth;

	if (r == PASS_NO_NEIGH)
		return pass(p, tenant_id, r);

	ttl_decrement(p);
	r = vlan_set_egress(ctx, p->tagged, rt->vlan);
	if (r)
		return drop(p, tenant_id, r);
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	eth = data;
	if ((void *)(eth + 1) > data_end)
		return drop(p, tenant_id, DROP_ADJUST_FAILED);
	__builtin_memcpy(eth->h_dest, rt->dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, rt->smac, ETH_ALEN);
	count_forwarded(p);
	return bpf_redirect_map(&tx_ports, rt->ifindex, 0);
}

/* to_service handles a packet that may be addressed to one of the tenant's services.
 * It looks up the packet's forward conntrack entry first: when that entry's route was
 * checked under the current configuration generation, no configuration has changed
 * since, so the destination is still the entry's service and the service lookup is
 * skipped (the route, egress and policy checks it would repeat are skipped the same
 * way). Otherwise the service lookup decides; for a packet that is for no service it
 * sets *no_service and returns nothing the caller may use. (A flag, not a special
 * return value: the verifier would follow that value out of bpf_redirect_map, into
 * to_client with packet pointers that vlan_set_egress invalidated.) */
static __always_inline int to_service(struct xdp_md *ctx, struct pkt *p, struct attachment *att,
				      int *no_service)
{
	__u32 tenant_id = att->tenant_id, service_id, backend_id = 0;
	__u16 tot_len = bpf_ntohs(p->ip->tot_len);
	struct service_counters *ss;
	struct backend_counters *bs;
	struct backend *b = NULL;
	struct service *svc;
	struct ct_entry *e;
	struct ct_key k;
	struct route rt = {};
	int existing = 0, refreshed = 0, cached = 0, found;
	__u64 now = clock_now();
	__u32 gen = config_generation();
	__be32 baddr;
	__be16 bport;
	enum reason r = REASON_NONE;

	ct_key_of(&k, tenant_id, p, CT_DIR_FORWARD);
	e = ct_lookup(&k, p, now);
	if (e) {
		backend_id = e->backend_id;
		b = backend_lookup(backend_id);
		/* The slow path below stores the service id with every route it marks. */
		cached = b && backend_usable(b, tenant_id, e->service_id) &&
			 route_reusable(&e->route, gen, now, tot_len);
	}
	if (cached) {
		existing = 1;
		service_id = e->service_id;
	} else {
		svc = service_lookup(tenant_id, p->daddr, p->dport, p->l4proto);
		if (!svc) {
			*no_service = 1;
			return XDP_ABORTED;
		}
		service_id = svc->id;
		existing = e && b && backend_usable(b, tenant_id, service_id);
		if (!policy_allows(tenant_id, service_id, p->saddr)) {
			ss = service_stats_of(service_id);
			if (ss)
				ss->denied++;
			return drop(p, tenant_id, DROP_POLICY_DENIED);
		}
		if (!existing) {
			/* A miss, or the flow's backend lost admission: pick again. For TCP
			 * the new backend answers mid-stream segments with a reset, which is
			 * the point. */
			backend_id = maglev_pick(svc, flow_hash(cfg_hash_seed, tenant_id, p->saddr, p->daddr,
								p->sport, p->dport, p->l4proto), &found);
			if (!found)
				return drop(p, tenant_id, DROP_BACKEND_UNAVAILABLE);
			b = backend_lookup(backend_id);
			if (!b || b->state != BACKEND_ADMITTED)
				return drop(p, tenant_id, DROP_BACKEND_UNAVAILABLE);
			if (b->tenant_id != tenant_id || b->service_id != service_id)
				return drop(p, tenant_id, DROP_TENANT_MISMATCH);
		}
	}
	if (!b) /* existing or picked: never NULL here; the verifier wants it said */
		return drop(p, tenant_id, DROP_BACKEND_UNAVAILABLE);
	if (existing)
		refreshed = ct_refresh(e, p, now);
	baddr = b->addr;
	bport = b->port;

	nat_rewrite(p, NAT_DST, baddr, bport);
	if (cached) {
		rt = e->route;
	} else {
		r = fib_route(ctx, p, att, p->saddr, baddr, p->sport, bport, &rt);
		if (reason_is_drop(r))
			return drop(p, tenant_id, r);
		if (r == REASON_NONE)
			route_mark_reusable(&rt, gen, now, tot_len);
	}

	ss = service_stats_of(service_id);
	bs = backend_stats_of(backend_id);
	if (!existing) {
		ct_create(tenant_id, p, baddr, bport, backend_id, service_id, &rt, now);
		if (ss)
			ss->new_flows++;
		if (bs)
			bs->new_flows++;
		event_emit(EVENT_FLOW_NEW, REASON_NONE, p, tenant_id, service_id, backend_id, 0);
	} else {
		if (!cached) {
			e->route = rt;
			e->service_id = service_id;
		}
		if (refreshed & CT_STAMPED)
			ct_keep_reply(tenant_id, p, baddr, bport, backend_id, service_id, rt.ifindex, now);
	}
	if (refreshed & CT_ENDED)
		event_emit(EVENT_FLOW_END, REASON_NONE, p, tenant_id, service_id, backend_id, 0);
	if (ss)
		traffic_add(&ss->fwd, p->len);
	if (bs)
		traffic_add(&bs->fwd, p->len);
	return transmit(ctx, p, tenant_id, r, &rt);
}

/* to_client handles a packet that is not for a service: a backend's reply on a tracked
 * flow goes on, source rewritten back to the service; a packet for one of the
 * gateway's own services goes to the stack; nothing else goes anywhere. */
static __always_inline int to_client(struct xdp_md *ctx, struct pkt *p, struct attachment *att)
{
	__u32 tenant_id = att->tenant_id, backend_id, service_id;
	__u16 tot_len = bpf_ntohs(p->ip->tot_len);
	struct backend_counters *bs;
	struct backend *b;
	struct ct_entry *e = NULL;
	struct ct_key k;
	struct route rt = {};
	__be32 vip;
	__be16 vport;
	enum reason r = REASON_NONE;
	int refreshed, cached;
	__u64 now = clock_now();
	__u32 gen = config_generation();

	/* Only a backend sends replies: a source no backend has (its filter bit clear)
	 * needs no conntrack lookup to be refused. */
	if (filter_has(&backend_filter, tenant_id, p->saddr, p->sport, p->l4proto)) {
		ct_key_of(&k, tenant_id, p, CT_DIR_REPLY);
		e = ct_lookup(&k, p, now);
	}
	if (!e) {
		if (!p->tagged && host_service(p->ifindex, p->daddr, p->dport, p->l4proto))
			return pass(p, tenant_id, PASS_HOST_SERVICE);
		return drop(p, tenant_id, DROP_NO_SERVICE);
	}
	backend_id = e->backend_id;
	service_id = e->service_id;
	b = backend_lookup(backend_id);
	if (!b || !backend_usable(b, tenant_id, service_id))
		return drop(p, tenant_id, DROP_BACKEND_EVICTED);
	if (e->ifindex != p->ifindex)
		return drop(p, tenant_id, DROP_REPLY_WRONG_IFACE);
	refreshed = ct_refresh(e, p, now);
	if (refreshed & CT_STAMPED)
		ct_keep_forward(tenant_id, p, e, now);
	cached = route_reusable(&e->route, gen, now, tot_len);
	vip = e->vip;
	vport = e->vport;

	nat_rewrite(p, NAT_SRC, vip, vport);
	if (cached) {
		rt = e->route;
	} else {
		r = fib_route(ctx, p, att, vip, p->daddr, vport, p->dport, &rt);
		if (reason_is_drop(r))
			return drop(p, tenant_id, r);
		if (r == REASON_NONE) {
			route_mark_reusable(&rt, gen, now, tot_len);
			e->route = rt;
		}
	}

	if (refreshed & CT_ENDED)
		event_emit(EVENT_FLOW_END, REASON_NONE, p, tenant_id, service_id, backend_id, EVENT_F_REPLY);
	bs = backend_stats_of(backend_id);
	if (bs)
		traffic_add(&bs->reply, p->len);
	return transmit(ctx, p, tenant_id, r, &rt);
}

SEC("xdp")
int xdp_gateway(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct pkt p = {};
	struct attachment *att;
	enum reason r;

	p.ifindex = ctx->ingress_ifindex;
	p.len = data_end - data;

	r = parse_l2(&p, data, data_end);
	if (r)
		return drop(&p, 0, r);
	att = tenant_classify(p.ifindex, p.vlan);
	if (!att)
		return drop(&p, 0, DROP_NO_TENANT);
	p.ts = tenant_stats_of(att->tenant_id);
	if (p.ts)
		traffic_add(&p.ts->rx, p.len);

	if (p.proto == ETH_P_ARP_BE)
		return pass(&p, att->tenant_id, PASS_ARP);
	if (p.proto == ETH_P_IPV6_BE)
		return drop(&p, att->tenant_id, DROP_IPV6_UNSUPPORTED);
	if (p.proto != ETH_P_IP_BE)
		return drop(&p, att->tenant_id, DROP_UNSUPPORTED_L3);

	r = parse_ipv4(&p, data_end);
	if (r)
		return drop(&p, att->tenant_id, r);
	r = parse_l4(&p, data_end);
	if (r)
		return drop(&p, att->tenant_id, r);

	if (filter_has(&service_filter, att->tenant_id, p.daddr, p.dport, p.l4proto)) {
		int no_service = 0, action = to_service(ctx, &p, att, &no_service);

		if (!no_service)
			return action;
	}
	return to_client(ctx, &p, att);
}

/* The floor: count and pass, nothing else. Benchmarks report moat's cost as a ratio to
 * this program measured in the same run, and tests attach it to the far end of a veth,
 * where XDP_REDIRECT needs an XDP program to deliver frames. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct traffic);
} floor_stats SEC(".maps");

SEC("xdp")
int xdp_count_pass(struct xdp_md *ctx)
{
	__u32 k = 0;
	struct traffic *t = bpf_map_lookup_elem(&floor_stats, &k);

	if (t)
		traffic_add(t, (__u32)(ctx->data_end - ctx->data));
	return XDP_PASS;
}
