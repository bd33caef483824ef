//go:build ignore

/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* The kernel-stack baseline's receive side: live frames that a veth passed to the
 * stack would stall the generator, so every frame is redirected into a CPUMAP whose
 * kthread on target_cpu builds an skb and runs the stack (nftables, conntrack,
 * routing), as a NIC driver would on that core. The frames that the CPUMAP's queue
 * refuses (full) are counted too: the benchmark accounts for every frame sent. */

#include "bench.h"

volatile const __u32 target_cpu = 1;

struct {
	__uint(type, BPF_MAP_TYPE_CPUMAP);
	__uint(max_entries, 64);
	__type(key, __u32);
	__type(value, struct bpf_cpumap_val);
} cpus SEC(".maps");

SEC("xdp")
int xdp_to_cpu(struct xdp_md *ctx)
{
	return bpf_redirect_map(&cpus, target_cpu, XDP_DROP);
}

/* The id of cpus, set by the loader: only its refusals are counted. */
__u32 cpus_map_id;

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct counter);
} cpumap_refused SEC(".maps");

/* The kernel's CPUMAP enqueue tracepoint, once per bulk flushed into the queue:
 * TP_PROTO(int map_id, unsigned int processed, unsigned int drops, int to_cpu). */
SEC("tp_btf/xdp_cpumap_enqueue")
int count_cpumap_refused(__u64 *ctx)
{
	struct counter *n;
	__u32 k = 0;

	if ((__u32)ctx[0] != cpus_map_id || !cpus_map_id)
		return 0;
	n = bpf_map_lookup_elem(&cpumap_refused, &k);
	if (n)
		n->packets += (__u32)ctx[2];
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
