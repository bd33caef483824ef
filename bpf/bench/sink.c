//go:build ignore

/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* The sink: the far end of every gateway veth. It counts and drops what the system
 * under test delivers; while learning, it also records the client end (source address
 * and port) of each TCP frame, so that a reply generator can answer exactly the flows
 * the system balanced to this backend; while stamping, it records when the first and
 * the last frame arrived, in the kernel's monotonic clock, so that a latency ends when
 * a frame arrived and not when the harness looked. */

#include "bench.h"

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct counter);
} sink_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} sink_learn SEC(".maps");

/* Arrival stamps, written while armed is set. The sink's NAPI thread runs on one CPU
 * at a time, so plain stores are enough. */
struct stamps {
	__u32 armed;
	__u32 pad;
	__u64 first_ns; /* first frame since armed (0: none yet) */
	__u64 last_ns;  /* last frame since armed */
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct stamps);
} sink_stamps SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 131072);
	__type(key, struct flow);
	__type(value, __u8);
} learned SEC(".maps");

SEC("xdp")
int xdp_sink(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct counter *n;
	struct stamps *st;
	__u32 k = 0, *learn;

	struct ethhdr *eth = data;

	/* Count IPv4 only: the kernel's own IPv6 chatter (router and neighbour
	 * solicitations) is not traffic under test. */
	if ((void *)(eth + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP))
		return XDP_DROP;
	n = bpf_map_lookup_elem(&sink_stats, &k);
	if (n) {
		n->packets++;
		n->bytes += data_end - data;
	}
	st = bpf_map_lookup_elem(&sink_stamps, &k);
	if (st && st->armed) {
		__u64 now = bpf_ktime_get_ns();

		if (!st->first_ns)
			st->first_ns = now;
		st->last_ns = now;
	}
	learn = bpf_map_lookup_elem(&sink_learn, &k);
	if (learn && *learn) {
		struct iphdr *ip = (void *)(eth + 1);
		struct tcphdr *tcp = (void *)(ip + 1);
		struct flow f = {};
		__u8 one = 1;

		if ((void *)(tcp + 1) <= data_end && eth->h_proto == bpf_htons(ETH_P_IP) &&
		    ip->ihl == 5 && ip->protocol == IPPROTO_TCP) {
			f.addr = ip->saddr;
			f.port = tcp->source;
			bpf_map_update_elem(&learned, &f, &one, BPF_ANY);
		}
	}
	return XDP_DROP;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
