/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Per-CPU counters: per verdict reason, per tenant, per service, per backend. Per-CPU
 * arrays need no atomics on the packet path; the Go reader sums the CPUs. */
#ifndef MOAT_COUNTERS_H
#define MOAT_COUNTERS_H

#include "common.h"
#include "reason.h"

struct traffic {
	__u64 packets;
	__u64 bytes;
};

struct tenant_counters {
	struct traffic rx;      /* classified to the tenant */
	struct traffic fwd;     /* forwarded (redirected or passed to the stack) */
	struct traffic dropped; /* dropped after classification */
};

struct service_counters {
	struct traffic fwd; /* client -> backend */
	__u64 new_flows;
	__u64 denied;       /* dropped by policy */
};

struct backend_counters {
	struct traffic fwd;   /* client -> backend */
	struct traffic reply; /* backend -> client */
	__u64 new_flows;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, REASON_MAX);
	__type(key, __u32);
	__type(value, struct traffic);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} reason_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MAX_TENANTS);
	__type(key, __u32);
	__type(value, struct tenant_counters);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} tenant_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MAX_SERVICES);
	__type(key, __u32);
	__type(value, struct service_counters);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} service_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MAX_BACKENDS);
	__type(key, __u32);
	__type(value, struct backend_counters);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} backend_stats SEC(".maps");

static __always_inline void traffic_add(struct traffic *t, __u32 len)
{
	t->packets++;
	t->bytes += len;
}

static __always_inline void count_reason(enum reason r, __u32 len)
{
	__u32 k = r;
	struct traffic *t = bpf_map_lookup_elem(&reason_stats, &k);

	if (t)
		traffic_add(t, len);
}

static __always_inline struct tenant_counters *tenant_stats_of(__u32 tenant_id)
{
	return bpf_map_lookup_elem(&tenant_stats, &tenant_id);
}

static __always_inline struct service_counters *service_stats_of(__u32 service_id)
{
	return bpf_map_lookup_elem(&service_stats, &service_id);
}

static __always_inline struct backend_counters *backend_stats_of(__u32 backend_id)
{
	return bpf_map_lookup_elem(&backend_stats, &backend_id);
}

#endif /* MOAT_COUNTERS_H */
