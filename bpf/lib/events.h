/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Flow events (new flow, flow end, drop with reason) into a ring buffer. A per-CPU
 * token bucket bounds their rate so that a flood cannot turn the event path into the
 * bottleneck; every event not written is counted, by cause. */
#ifndef MOAT_EVENTS_H
#define MOAT_EVENTS_H

#include "common.h"
#include "clock.h"
#include "config.h"
#include "parse.h"

enum event_type {
	EVENT_FLOW_NEW = 1,
	EVENT_FLOW_END = 2,
	EVENT_DROP = 3,
};

/* Flags of struct flow_event. */
#define EVENT_F_REPLY 0x01 /* seen in the backend -> client direction */

struct flow_event {
	__u64 ts_ns; /* bpf_ktime_get_coarse_ns: CLOCK_MONOTONIC_COARSE */
	__u8 type;   /* enum event_type */
	__u8 reason; /* enum reason, for EVENT_DROP */
	__u8 proto;
	__u8 flags;
	__u32 ifindex;
	__u32 tenant_id;
	__u32 service_id;
	__u32 backend_id;
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u16 vlan;
	__u16 _pad;
};

enum event_counter {
	EVENTS_EMITTED = 0,
	EVENTS_RATE_LIMITED = 1,
	EVENTS_RINGBUF_FULL = 2,
	EVENT_COUNTER_MAX,
};

struct token_bucket {
	__u64 tokens; /* in 1/HZ events: cfg_hz per event, so refill needs no division */
	__u64 last;   /* clock_now() (jiffies) of the last refill */
};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, EVENT_COUNTER_MAX);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} event_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct token_bucket);
} event_bucket SEC(".maps");

static __always_inline void event_count(enum event_counter c)
{
	__u32 k = c;
	__u64 *v = bpf_map_lookup_elem(&event_stats, &k);

	if (v)
		(*v)++;
}

/* event_admit takes one token from this CPU's bucket. It runs on the inlined jiffies
 * clock, so that a flood of drops, most of them refused here, costs no helper call. */
static __always_inline int event_admit(void)
{
	const __u64 one = cfg_hz;
	__u64 cap = (__u64)cfg_event_burst * one, now = clock_now();
	__u32 k = 0;
	struct token_bucket *b = bpf_map_lookup_elem(&event_bucket, &k);

	if (!b)
		return 0;
	if (now > b->last) {
		__u64 elapsed = now - b->last;

		/* The loader keeps burst <= rate, so a second's refill fills the bucket;
		 * bounding elapsed also keeps elapsed*rate far from overflow. */
		if (elapsed >= cfg_hz || b->tokens + elapsed * cfg_event_rate > cap)
			b->tokens = cap;
		else
			b->tokens += elapsed * cfg_event_rate;
		b->last = now;
	}
	if (b->tokens < one)
		return 0;
	b->tokens -= one;
	return 1;
}

static __always_inline void event_emit(__u8 type, enum reason reason, struct pkt *p, __u32 tenant_id,
				       __u32 service_id, __u32 backend_id, __u8 flags)
{
	__u32 bit = type == EVENT_FLOW_NEW ? EVENT_MASK_NEW :
		    type == EVENT_FLOW_END ? EVENT_MASK_END : EVENT_MASK_DROP;
	struct flow_event *e;

	if (!(cfg_event_mask & bit))
		return;
	if (!event_admit()) {
		event_count(EVENTS_RATE_LIMITED);
		return;
	}
	e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		event_count(EVENTS_RINGBUF_FULL);
		return;
	}
	e->ts_ns = bpf_ktime_get_coarse_ns();
	e->type = type;
	e->reason = reason;
	e->proto = p->l4proto;
	e->flags = flags;
	e->ifindex = p->ifindex;
	e->tenant_id = tenant_id;
	e->service_id = service_id;
	e->backend_id = backend_id;
	e->saddr = p->saddr;
	e->daddr = p->daddr;
	e->sport = p->sport;
	e->dport = p->dport;
	e->vlan = p->vlan;
	e->_pad = 0;
	bpf_ringbuf_submit(e, 0);
	event_count(EVENTS_EMITTED);
}

#endif /* MOAT_EVENTS_H */
