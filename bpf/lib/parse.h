/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Header parsing. Every header is bounds-checked against data_end before it is read;
 * anything malformed gets a drop reason, never a pass. The order of the checks is part
 * of the contract with dataplane's reference model (model.go follows it step by step). */
#ifndef MOAT_PARSE_H
#define MOAT_PARSE_H

#include "common.h"
#include "reason.h"
#include "csum.h"

struct tenant_counters; /* counters.h */

struct pkt {
	/* Pointers into the frame, valid until the frame is resized (VLAN push/pop). */
	struct ethhdr *eth;
	struct iphdr *ip;
	void *l4;
	/* The classified tenant's counters, looked up once per packet (NULL before). */
	struct tenant_counters *ts;

	__u32 ifindex;   /* ingress */
	__u32 len;       /* frame length, for byte counters */
	__be16 proto;    /* ethertype after the tag, network order */
	__u16 vlan;      /* VLAN id, 0 when untagged */
	__u8 tagged;
	__u8 l4proto;
	__u8 tcp_flags;
	__u8 _pad;
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
};

#define TCPF_FIN 0x01
#define TCPF_SYN 0x02
#define TCPF_RST 0x04
#define TCPF_ACK 0x10

/* parse_l2 reads the Ethernet header and at most one 802.1Q tag. */
static __always_inline enum reason parse_l2(struct pkt *p, void *data, void *data_end)
{
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) > data_end)
		return DROP_TRUNCATED_L2;
	p->eth = eth;
	p->proto = eth->h_proto;

	if (p->proto == ETH_P_8021AD_BE)
		return DROP_VLAN_STACKED;
	if (p->proto == ETH_P_8021Q_BE) {
		struct vlan_hdr *vh = (void *)(eth + 1);

		if ((void *)(vh + 1) > data_end)
			return DROP_TRUNCATED_L2;
		p->tagged = 1;
		p->vlan = bpf_ntohs(vh->tci) & VLAN_VID_MASK;
		p->proto = vh->encap_proto;
		if (p->proto == ETH_P_8021Q_BE || p->proto == ETH_P_8021AD_BE)
			return DROP_VLAN_STACKED;
	}
	return REASON_NONE;
}

static __always_inline void *l3_start(struct pkt *p)
{
	return (void *)p->eth + sizeof(struct ethhdr) + (p->tagged ? sizeof(struct vlan_hdr) : 0);
}

/* ipv4_csum_ok verifies the header checksum over ihl 32-bit words; the caller has
 * checked that all of them lie inside the frame. */
static __always_inline int ipv4_csum_ok(struct iphdr *ip, __u32 ihl, void *data_end)
{
	__u32 *w = (__u32 *)ip;
	__u64 sum = 0;

	/* the fixed 20 bytes */
	sum += w[0];
	sum += w[1];
	sum += w[2];
	sum += w[3];
	sum += w[4];
	/* options: up to 10 more words */
	for (__u32 i = 5; i < 15; i++) {
		__u32 *o;

		if (i >= ihl)
			break;
		o = (__u32 *)ip + i;
		barrier_var(o); /* else LLVM turns the check into data_end arithmetic */
		if ((void *)(o + 1) > data_end)
			return 0;
		sum += *o;
	}
	sum = (sum & 0xffffffff) + (sum >> 32);
	sum = (sum & 0xffffffff) + (sum >> 32);
	return csum_fold((__u32)(sum & 0xffff) + (__u32)(sum >> 16)) == 0xffff;
}

/* parse_ipv4 validates the IPv4 header; the frame may be longer than tot_len
 * (Ethernet padding) but never shorter. */
static __always_inline enum reason parse_ipv4(struct pkt *p, void *data_end)
{
	struct iphdr *ip = l3_start(p);
	__u32 ihl, tot_len;

	if ((void *)(ip + 1) > data_end)
		return DROP_TRUNCATED_L3;
	if (ip->version != 4)
		return DROP_BAD_IP_VERSION;
	ihl = ip->ihl;
	if (ihl < 5)
		return DROP_BAD_IHL;
	if ((void *)ip + ihl * 4 > data_end)
		return DROP_TRUNCATED_L3;
	tot_len = bpf_ntohs(ip->tot_len);
	if (tot_len < ihl * 4 || (void *)ip + tot_len > data_end)
		return DROP_BAD_IP_LEN;
	if (!ipv4_csum_ok(ip, ihl, data_end))
		return DROP_BAD_IP_CSUM;
	if (ip->frag_off & bpf_htons(0x3fff)) /* MF or a fragment offset */
		return DROP_FRAGMENT;
	if (ip->ttl <= 1)
		return DROP_TTL_EXCEEDED;

	p->ip = ip;
	p->saddr = ip->saddr;
	p->daddr = ip->daddr;
	p->l4proto = ip->protocol;
	return REASON_NONE;
}

/* parse_l4 reads the TCP or UDP ports; both must lie inside the IP payload. */
static __always_inline enum reason parse_l4(struct pkt *p, void *data_end)
{
	struct iphdr *ip = p->ip;
	__u32 ihl = ip->ihl;
	__u32 payload = bpf_ntohs(ip->tot_len) - ihl * 4;
	void *l4 = (void *)ip + ihl * 4;

	switch (p->l4proto) {
	case IPPROTO_TCP: {
		struct tcphdr *th = l4;
		__u32 doff;

		if ((void *)(th + 1) > data_end || payload < sizeof(*th))
			return DROP_TRUNCATED_L4;
		doff = th->doff;
		if (doff < 5 || doff * 4 > payload)
			return DROP_BAD_TCP_HDR;
		p->sport = th->source;
		p->dport = th->dest;
		p->tcp_flags = ((__u8 *)th)[13];
		break;
	}
	case IPPROTO_UDP: {
		struct udphdr *uh = l4;
		__u32 ulen;

		if ((void *)(uh + 1) > data_end || payload < sizeof(*uh))
			return DROP_TRUNCATED_L4;
		ulen = bpf_ntohs(uh->len);
		if (ulen < sizeof(*uh) || ulen > payload)
			return DROP_BAD_UDP_LEN;
		p->sport = uh->source;
		p->dport = uh->dest;
		break;
	}
	case IPPROTO_ICMP:
		return DROP_ICMP_UNSUPPORTED;
	default:
		return DROP_UNSUPPORTED_L4;
	}
	p->l4 = l4;
	return REASON_NONE;
}

#endif /* MOAT_PARSE_H */
