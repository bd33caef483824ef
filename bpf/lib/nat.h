/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Address and port rewriting with incremental checksum updates: DNAT toward the
 * backend on the forward path, the reverse on replies, and the TTL decrement every
 * routed packet owes. */
#ifndef MOAT_NAT_H
#define MOAT_NAT_H

#include "common.h"
#include "csum.h"
#include "parse.h"

#define NAT_DST 0
#define NAT_SRC 1

/* nat_rewrite replaces the source or destination address and port of p's packet. A
 * zero UDP checksum means "none" and stays zero; a computed zero is sent as 0xffff
 * (RFC 768). */
static __always_inline void nat_rewrite(struct pkt *p, int which, __be32 addr, __be16 port)
{
	struct iphdr *ip = p->ip;
	__be32 *ip_field = which == NAT_SRC ? &ip->saddr : &ip->daddr;
	__be32 old_addr = *ip_field;
	__be16 *port_field, old_port;
	__u16 *l4_check = NULL;

	if (p->l4proto == IPPROTO_TCP) {
		struct tcphdr *th = p->l4;

		port_field = which == NAT_SRC ? &th->source : &th->dest;
		l4_check = &th->check;
	} else {
		struct udphdr *uh = p->l4;

		port_field = which == NAT_SRC ? &uh->source : &uh->dest;
		if (uh->check)
			l4_check = &uh->check;
	}
	old_port = *port_field;

	csum_replace4(&ip->check, old_addr, addr);
	*ip_field = addr;
	*port_field = port;
	if (l4_check) {
		csum_replace4(l4_check, old_addr, addr);
		csum_replace2(l4_check, old_port, port);
		if (p->l4proto == IPPROTO_UDP && *l4_check == 0)
			*l4_check = 0xffff;
	}
}

/* ttl_decrement is done only when moat forwards the frame itself; frames passed to
 * the stack are decremented there. parse_ipv4 guaranteed ttl > 1, so subtracting
 * one from the ttl byte of the word cannot borrow from the protocol byte.
 *
 * The new word is computed in a register and stored whole, never read back: a byte
 * store followed by a wider load of the same bytes cannot be served from the store
 * buffer, and the load waits for the store to reach the cache. A profile of the
 * established scenario found 12% of the program's samples on that load; with the
 * load gone they moved to other first touches of the frame's line, which another
 * core wrote (bench/README.md, "CPU profiles"), and the rate did not change. */
static __always_inline void ttl_decrement(struct pkt *p)
{
	struct iphdr *ip = p->ip;
	__u16 *word = (__u16 *)&ip->ttl; /* ttl and protocol share one checksum word */
	__u16 old = *word, new = old - bpf_htons(0x0100);

	*word = new;
	csum_replace2(&ip->check, old, new);
}

#endif /* MOAT_NAT_H */
