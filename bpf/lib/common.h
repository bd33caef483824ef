/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Includes, attributes and limits shared by every header of the fast path. */
#ifndef MOAT_COMMON_H
#define MOAT_COMMON_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/in.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#ifndef __always_inline
#define __always_inline inline __attribute__((always_inline))
#endif

#define likely(x)   __builtin_expect(!!(x), 1)
#define unlikely(x) __builtin_expect(!!(x), 0)

/* Default map sizes. The Go loader may resize every one of them before load
 * (dataplane.Options); these are what the embedded defaults run with. */
#define MAX_ATTACHMENTS 1024
#define MAX_TENANTS     4096
#define MAX_SERVICES    4096
#define MAX_BACKENDS    65536
#define MAX_POLICY      65536
#define MAX_FLOWS       262144
#define MAX_TX_PORTS    256
/* Untagged attachments of interfaces with an ifindex below this live in an array
 * (tenant.h); a gateway's own interfaces are numbered from 1 in its namespace. */
#define MAX_PORT_IFINDEX 4096

#define ETH_P_8021Q_BE bpf_htons(0x8100)
#define ETH_P_8021AD_BE bpf_htons(0x88A8)
#define ETH_P_IP_BE    bpf_htons(0x0800)
#define ETH_P_IPV6_BE  bpf_htons(0x86DD)
#define ETH_P_ARP_BE   bpf_htons(0x0806)

#define VLAN_VID_MASK 0x0fff

struct vlan_hdr {
	__be16 tci;
	__be16 encap_proto;
};

#endif /* MOAT_COMMON_H */
