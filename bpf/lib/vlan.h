/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* 802.1Q tag handling on egress: a frame leaves with the tag of the tenant's attachment
 * on the egress interface, whatever tag it arrived with. The kernel here has no 8021q
 * module, so tags are pushed and popped in XDP. */
#ifndef MOAT_VLAN_H
#define MOAT_VLAN_H

#include "common.h"
#include "reason.h"

/* vlan_set_egress makes the frame carry vid (0 = untagged); tagged says whether it
 * carries a tag now. The frame's pointers are invalid afterwards. */
static __always_inline enum reason vlan_set_egress(struct xdp_md *ctx, int tagged, __u16 vid)
{
	void *data, *data_end;
	struct ethhdr *eth;
	struct vlan_hdr *vh;

	if (tagged && vid) {
		data = (void *)(long)ctx->data;
		data_end = (void *)(long)ctx->data_end;
		vh = data + sizeof(struct ethhdr);
		if ((void *)(vh + 1) > data_end)
			return DROP_ADJUST_FAILED;
		vh->tci = (vh->tci & bpf_htons(~VLAN_VID_MASK)) | bpf_htons(vid);
		return REASON_NONE;
	}
	if (tagged) { /* pop: move the MAC addresses over the tag */
		__u8 macs[2 * ETH_ALEN];

		data = (void *)(long)ctx->data;
		data_end = (void *)(long)ctx->data_end;
		if (data + sizeof(struct ethhdr) + sizeof(struct vlan_hdr) > data_end)
			return DROP_ADJUST_FAILED;
		__builtin_memcpy(macs, data, sizeof(macs));
		if (bpf_xdp_adjust_head(ctx, (int)sizeof(struct vlan_hdr)))
			return DROP_ADJUST_FAILED;
		data = (void *)(long)ctx->data;
		data_end = (void *)(long)ctx->data_end;
		if (data + sizeof(struct ethhdr) > data_end)
			return DROP_ADJUST_FAILED;
		__builtin_memcpy(data, macs, sizeof(macs));
		return REASON_NONE;
	}
	if (vid) { /* push */
		__u8 macs[2 * ETH_ALEN];

		data = (void *)(long)ctx->data;
		data_end = (void *)(long)ctx->data_end;
		if (data + sizeof(struct ethhdr) > data_end)
			return DROP_ADJUST_FAILED;
		__builtin_memcpy(macs, data, sizeof(macs));
		if (bpf_xdp_adjust_head(ctx, -(int)sizeof(struct vlan_hdr)))
			return DROP_ADJUST_FAILED;
		data = (void *)(long)ctx->data;
		data_end = (void *)(long)ctx->data_end;
		eth = data;
		vh = data + sizeof(struct ethhdr);
		if ((void *)(vh + 1) > data_end)
			return DROP_ADJUST_FAILED;
		__builtin_memcpy(eth->h_dest, macs, sizeof(macs));
		vh->encap_proto = ETH_P_IP_BE;
		eth->h_proto = ETH_P_8021Q_BE;
		vh->tci = bpf_htons(vid);
	}
	return REASON_NONE;
}

#endif /* MOAT_VLAN_H */
