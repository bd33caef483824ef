/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Connection tracking. Each flow has two entries in one LRU map: the forward entry
 * (client -> VIP) names the backend; the reply entry (backend -> client) holds the VIP
 * to restore and the interface replies must arrive on. Both carry the tenant id in the
 * key. An entry does not decide admission: the backend's state is checked on every
 * packet, so evicting a backend cuts its flows without touching this map.
 *
 * The two entries live and die together, as one connection does in the kernel's
 * conntrack: whenever a direction's packet writes its entry's stamp (at most once per
 * cfg_ct_refresh_jiffies), it stamps the other entry too, and writes it again if the
 * map lost it (ct_keep_reply, ct_keep_forward). Without that, the LRU evicts the entry
 * of a direction that has been quiet while the other is busy (an upload's reply entry
 * under a flood of new flows), and the flow's replies are dropped as no_service for
 * the rest of its life, or its next client segment is balanced again. */
#ifndef MOAT_CONNTRACK_H
#define MOAT_CONNTRACK_H

#include "common.h"
#include "clock.h"
#include "config.h"
#include "parse.h"
#include "route.h"

#define CT_DIR_FORWARD 0
#define CT_DIR_REPLY   1

#define CT_F_CLOSING 0x01 /* FIN or RST seen in this entry's direction */

struct ct_key {
	__u32 tenant_id;
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 dir; /* CT_DIR_*: a reply key can never alias a forward key */
	__u16 _pad;
};

struct ct_entry {
	__u32 last_seen; /* clock_stamp() at creation or last refresh */
	__u32 backend_id;
	__u32 service_id;
	__be32 vip;      /* reply entry: source address to restore */
	__be16 vport;    /* reply entry: source port to restore */
	__u8 flags;      /* CT_F_* */
	__u8 _pad;
	__u32 ifindex;   /* reply entry: where the backend is, so where replies come from */
	struct route route; /* last route of this direction, for reuse (route.h) */
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MAX_FLOWS);
	__type(key, struct ct_key);
	__type(value, struct ct_entry);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} conntrack SEC(".maps");

static __always_inline void ct_key_of(struct ct_key *k, __u32 tenant_id, struct pkt *p, __u8 dir)
{
	k->tenant_id = tenant_id;
	k->saddr = p->saddr;
	k->daddr = p->daddr;
	k->sport = p->sport;
	k->dport = p->dport;
	k->proto = p->l4proto;
	k->dir = dir;
	k->_pad = 0;
}

static __always_inline __u64 ct_timeout(struct ct_entry *e, __u8 proto)
{
	if (proto == IPPROTO_TCP)
		return (e->flags & CT_F_CLOSING) ? cfg_ct_tcp_closing_timeout_jiffies : cfg_ct_tcp_timeout_jiffies;
	return cfg_ct_udp_timeout_jiffies;
}

/* ct_alive says whether e is still within its timeout for proto. */
static __always_inline int ct_alive(struct ct_entry *e, __u8 proto, __u64 now)
{
	__s32 age = clock_since(now, e->last_seen);

	return age <= 0 || (__u64)age <= ct_timeout(e, proto);
}

/* ct_lookup returns the live entry for k, or NULL when there is none or it expired. A
 * TCP SYN (without ACK) never continues a closing entry: the tuple is being reused. */
static __always_inline struct ct_entry *ct_lookup(struct ct_key *k, struct pkt *p, __u64 now)
{
	struct ct_entry *e = bpf_map_lookup_elem(&conntrack, k);

	if (!e || !ct_alive(e, p->l4proto, now))
		return NULL;
	if (p->l4proto == IPPROTO_TCP && (e->flags & CT_F_CLOSING) &&
	    (p->tcp_flags & (TCPF_SYN | TCPF_ACK)) == TCPF_SYN)
		return NULL;
	return e;
}

/* What ct_refresh did. */
#define CT_ENDED   0x01 /* the packet ends the flow in this direction (first FIN or RST) */
#define CT_STAMPED 0x02 /* it wrote the entry's stamp: time to keep the other entry alive */

/* ct_refresh records that a packet used e and returns what it did (CT_ENDED,
 * CT_STAMPED). */
static __always_inline int ct_refresh(struct ct_entry *e, struct pkt *p, __u64 now)
{
	__s32 age = clock_since(now, e->last_seen);
	int done = 0;

	if (p->l4proto == IPPROTO_TCP && (p->tcp_flags & (TCPF_FIN | TCPF_RST)) &&
	    !(e->flags & CT_F_CLOSING)) {
		e->flags |= CT_F_CLOSING;
		done = CT_ENDED;
	}
	if (done || age < 0 || (__u64)age >= cfg_ct_refresh_jiffies) {
		e->last_seen = clock_stamp(now);
		done |= CT_STAMPED;
	}
	return done;
}

/* ct_reply_key_of is the reply key of p's forward tuple after DNAT to the backend,
 * reversed. */
static __always_inline void ct_reply_key_of(struct ct_key *k, __u32 tenant_id, struct pkt *p,
					    __be32 backend_addr, __be16 backend_port)
{
	k->tenant_id = tenant_id;
	k->saddr = backend_addr;
	k->daddr = p->saddr;
	k->sport = backend_port;
	k->dport = p->sport;
	k->proto = p->l4proto;
	k->dir = CT_DIR_REPLY;
	k->_pad = 0;
}

/* ct_create writes both entries of a new flow. The reply key is the forward tuple
 * after DNAT, reversed. */
static __always_inline void ct_create(__u32 tenant_id, struct pkt *p, __be32 backend_addr,
				      __be16 backend_port, __u32 backend_id, __u32 service_id,
				      struct route *rt, __u64 now)
{
	struct ct_key k;
	struct ct_entry e = {
		.last_seen = clock_stamp(now),
		.backend_id = backend_id,
		.service_id = service_id,
		.route = *rt, /* the caller marked it reusable or not */
	};

	ct_key_of(&k, tenant_id, p, CT_DIR_FORWARD);
	if (p->l4proto == IPPROTO_TCP && (p->tcp_flags & (TCPF_FIN | TCPF_RST)))
		e.flags = CT_F_CLOSING;
	bpf_map_update_elem(&conntrack, &k, &e, BPF_ANY);

	ct_reply_key_of(&k, tenant_id, p, backend_addr, backend_port);
	e.flags = 0;
	e.vip = p->daddr;
	e.vport = p->dport;
	e.ifindex = rt->ifindex;
	e.route.time = 0; /* the reply direction finds its own route */
	bpf_map_update_elem(&conntrack, &k, &e, BPF_ANY);
}

/* ct_keep_reply runs when a forward packet stamped its entry: it stamps the flow's
 * reply entry, or writes it again as ct_create did when it is gone or expired. A live
 * reply entry of another flow under the same key (another service's VIP with the same
 * backend address, port and client) is left alone. The lookup also marks the entry
 * used for the LRU. */
static __always_inline void ct_keep_reply(__u32 tenant_id, struct pkt *p, __be32 backend_addr,
					  __be16 backend_port, __u32 backend_id, __u32 service_id,
					  __u32 backend_ifindex, __u64 now)
{
	struct ct_entry *r, e = {
		.last_seen = clock_stamp(now),
		.backend_id = backend_id,
		.service_id = service_id,
		.vip = p->daddr,
		.vport = p->dport,
		.ifindex = backend_ifindex,
	};
	struct ct_key k;

	ct_reply_key_of(&k, tenant_id, p, backend_addr, backend_port);
	r = bpf_map_lookup_elem(&conntrack, &k);
	if (r && r->backend_id == backend_id && r->vip == p->daddr && r->vport == p->dport) {
		r->last_seen = e.last_seen;
		return;
	}
	if (r && ct_alive(r, p->l4proto, now))
		return;
	bpf_map_update_elem(&conntrack, &k, &e, BPF_ANY);
}

/* ct_keep_forward runs when a reply stamped its entry rep: it stamps the flow's
 * forward entry, or writes it again (without a route: the forward direction checks
 * its own) when it is gone or expired. A live forward entry that names another
 * backend (the client's tuple was balanced again since) is left alone. */
static __always_inline void ct_keep_forward(__u32 tenant_id, struct pkt *p, struct ct_entry *rep, __u64 now)
{
	struct ct_entry *f, e = {
		.last_seen = clock_stamp(now),
		.backend_id = rep->backend_id,
		.service_id = rep->service_id,
	};
	struct ct_key k = {
		.tenant_id = tenant_id,
		.saddr = p->daddr,
		.daddr = rep->vip,
		.sport = p->dport,
		.dport = rep->vport,
		.proto = p->l4proto,
		.dir = CT_DIR_FORWARD,
	};

	f = bpf_map_lookup_elem(&conntrack, &k);
	if (f && f->backend_id == rep->backend_id && f->service_id == rep->service_id) {
		f->last_seen = e.last_seen;
		return;
	}
	if (f && ct_alive(f, p->l4proto, now))
		return;
	bpf_map_update_elem(&conntrack, &k, &e, BPF_ANY);
}

#endif /* MOAT_CONNTRACK_H */
