//go:build ignore

/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* The traffic generator: run with BPF_PROG_RUN and BPF_F_TEST_XDP_LIVE_FRAMES, it turns
 * every run into one frame of a flow and redirects it out of an interface of the
 * caller's namespace. The kernel recycles live-frame pages with whatever the system
 * under test wrote into them (DNAT, TTL, MACs), so every run rewrites the whole frame
 * from the template and then the fields that name its flow, with checksums updated
 * incrementally from the template's. */

#include "bench.h"

#define FRAME_LEN 60

enum gen_mode {
	GEN_SOURCE = 0, /* vary the source (address, port): client -> service */
	GEN_REPLY = 1,  /* vary the destination from reply_flows: backend -> client */
};

struct gen_config {
	__u8 frame[64];      /* template (FRAME_LEN bytes used), checksums correct */
	__u64 offset;        /* flow index of the first frame */
	__u32 ifindex;       /* redirect target, in the caller's namespace */
	__u32 flows;         /* flows to cycle over; 0: a new flow on every frame */
	__u32 mode;          /* enum gen_mode */
	__u32 addr_base;     /* GEN_SOURCE: first source address, host order */
	__u32 addrs;         /* GEN_SOURCE: number of source addresses */
	__u16 port_base;     /* GEN_SOURCE: first source port */
	__u16 ports;         /* GEN_SOURCE: ports per address */
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct gen_config);
} gen_cfg SEC(".maps");

/* GEN_REPLY's flows: the client ends learnt by a sink behind one backend. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, struct flow);
} reply_flows SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} gen_seq SEC(".maps");

/* RFC 1624: HC' = ~(~HC + ~m + m'), on 16-bit words as they lie in the frame. */
static __always_inline __u16 csum_fold(__u32 s)
{
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return (__u16)s;
}

static __always_inline __u16 csum_replace4(__u16 check, __u32 from, __u32 to)
{
	__u32 s = (__u16)~check;

	s += (__u16)~(from >> 16) + (__u16)~(from & 0xffff);
	s += (to >> 16) + (to & 0xffff);
	return (__u16)~csum_fold(s);
}

static __always_inline __u16 csum_replace2(__u16 check, __u16 from, __u16 to)
{
	__u32 s = (__u16)~check;

	s += (__u16)~from + to;
	return (__u16)~csum_fold(s);
}

SEC("xdp")
int xdp_gen(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct gen_config *c;
	struct iphdr *ip;
	struct tcphdr *tcp;
	__u64 *seq, idx;
	__u32 k = 0;

	c = bpf_map_lookup_elem(&gen_cfg, &k);
	seq = bpf_map_lookup_elem(&gen_seq, &k);
	if (!c || !seq)
		return XDP_ABORTED;
	if (data + FRAME_LEN > data_end)
		return XDP_ABORTED;
	__builtin_memcpy(data, c->frame, FRAME_LEN);
	ip = data + sizeof(struct ethhdr);
	tcp = (void *)(ip + 1);

	idx = *seq;
	*seq = idx + 1;
	if (c->flows)
		idx %= c->flows;
	idx += c->offset;

	if (c->mode == GEN_REPLY) {
		__u32 i = (__u32)idx & 0xffff;
		struct flow *f = bpf_map_lookup_elem(&reply_flows, &i);

		if (!f)
			return XDP_ABORTED;
		ip->check = csum_replace4(ip->check, ip->daddr, f->addr);
		tcp->check = csum_replace4(tcp->check, ip->daddr, f->addr);
		tcp->check = csum_replace2(tcp->check, tcp->dest, f->port);
		ip->daddr = f->addr;
		tcp->dest = f->port;
	} else {
		__u32 ports = c->ports ? c->ports : 1, addrs = c->addrs ? c->addrs : 1;
		__be32 saddr = bpf_htonl(c->addr_base + (__u32)((idx / ports) % addrs));
		__be16 sport = bpf_htons(c->port_base + (__u16)(idx % ports));

		ip->check = csum_replace4(ip->check, ip->saddr, saddr);
		tcp->check = csum_replace4(tcp->check, ip->saddr, saddr);
		tcp->check = csum_replace2(tcp->check, tcp->source, sport);
		ip->saddr = saddr;
		tcp->source = sport;
	}
	return bpf_redirect(c->ifindex, 0);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
