/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Why the fast path dropped or passed a packet. Every value has a counter
 * (counters.h) and its name reaches Go through BTF (dataplane reads the enum from the
 * object), so a reason added here is named everywhere without a hand-kept list.
 * Never renumber: counters and flow events carry the numbers. */
#ifndef MOAT_REASON_H
#define MOAT_REASON_H

enum reason {
	REASON_NONE = 0,

	/* Layer 2 */
	DROP_TRUNCATED_L2 = 1,     /* frame shorter than its Ethernet/802.1Q header */
	DROP_VLAN_STACKED = 2,     /* QinQ or a second tag: one 802.1Q tag at most */
	DROP_NO_TENANT = 3,        /* (ingress ifindex, VLAN id) attached to no tenant */
	DROP_IPV6_UNSUPPORTED = 4, /* IPv6 comes later; never half-parsed meanwhile */
	DROP_UNSUPPORTED_L3 = 5,   /* any other ethertype */

	/* IPv4 */
	DROP_TRUNCATED_L3 = 6,     /* IPv4 header runs past the frame */
	DROP_BAD_IP_VERSION = 7,   /* ethertype IPv4 but version field is not 4 */
	DROP_BAD_IHL = 8,          /* IHL below 5 */
	DROP_BAD_IP_LEN = 9,       /* total length below the header or past the frame */
	DROP_BAD_IP_CSUM = 10,     /* header checksum does not verify */
	DROP_FRAGMENT = 11,        /* fragments carry no ports: not balanced, not passed */
	DROP_TTL_EXCEEDED = 12,    /* TTL would reach zero at this hop */

	/* Layer 4 */
	DROP_ICMP_UNSUPPORTED = 13, /* ICMP comes later */
	DROP_UNSUPPORTED_L4 = 14,   /* neither TCP nor UDP */
	DROP_TRUNCATED_L4 = 15,     /* TCP/UDP header runs past the IP payload */
	DROP_BAD_TCP_HDR = 16,      /* TCP data offset below 5 or past the IP payload */
	DROP_BAD_UDP_LEN = 17,      /* UDP length below 8 or past the IP payload */

	/* Decision */
	DROP_NO_SERVICE = 18,        /* destination is neither a service nor a tracked flow */
	DROP_POLICY_DENIED = 19,     /* no allow rule of the tenant covers this source */
	DROP_BACKEND_UNAVAILABLE = 20, /* Maglev picked a backend that is not admitted */
	DROP_BACKEND_EVICTED = 21,   /* reply of a flow whose backend lost admission */
	DROP_TENANT_MISMATCH = 22,   /* map entry of another tenant reached: never expected */
	DROP_REPLY_WRONG_IFACE = 23, /* reply arrived where the flow's backend is not */

	/* Forwarding */
	DROP_FIB_UNREACHABLE = 24,   /* no route, blackhole, prohibit, unreachable */
	DROP_FIB_FRAG_NEEDED = 25,   /* larger than the egress MTU */
	DROP_FIB_FWD_DISABLED = 26,  /* forwarding is off on the ingress interface (sysctl) */
	DROP_NO_NEIGH_TAGGED = 27,   /* next hop unresolved and the stack cannot take a tagged frame */
	DROP_EGRESS_NOT_ATTACHED = 28, /* route leaves through an interface the tenant is not on */
	DROP_NO_TX_PORT = 29,        /* egress interface missing from the redirect map */
	DROP_ADJUST_FAILED = 30,     /* adding or removing the VLAN tag failed */

	/* Passed to the kernel stack, by an explicit rule */
	PASS_ARP = 31,       /* ARP of an attached network: the kernel answers it */
	PASS_NO_NEIGH = 32,  /* next hop unresolved: the kernel resolves and forwards */
	PASS_HOST_SERVICE = 33, /* to one of the gateway's own services (host.h) */

	REASON_MAX,
};

static __always_inline int reason_is_drop(enum reason r)
{
	return r != REASON_NONE && r < PASS_ARP;
}

#endif /* MOAT_REASON_H */
