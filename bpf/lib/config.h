/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Load-time options: the Go loader rewrites these constants before the program is
 * verified (cilium/ebpf RewriteConstants / VariableSpec.Set), so changing one needs no
 * recompile and the verifier prunes what they switch off. */
#ifndef MOAT_CONFIG_H
#define MOAT_CONFIG_H

#include "common.h"

#define NSEC_PER_SEC 1000000000ULL

/* Times come from bpf_ktime_get_coarse_ns (CLOCK_MONOTONIC_COARSE, one tick of
 * resolution): reading the TSC for every packet costs more than every lifetime below
 * needs to be exact to. */

/* Connection tracking lifetimes, per entry since its last refresh. */
volatile const __u64 cfg_ct_tcp_timeout_ns = 3600ULL * NSEC_PER_SEC;
volatile const __u64 cfg_ct_tcp_closing_timeout_ns = 10ULL * NSEC_PER_SEC;
volatile const __u64 cfg_ct_udp_timeout_ns = 60ULL * NSEC_PER_SEC;
/* An entry's last_seen is rewritten at most this often: a write per packet would
 * bounce the entry's cache line between CPUs for nothing. */
volatile const __u64 cfg_ct_refresh_ns = 1ULL * NSEC_PER_SEC;

/* How long an established flow reuses the route it found (route.h). */
volatile const __u64 cfg_route_ttl_ns = 1ULL * NSEC_PER_SEC;

/* Seed of the flow hash that indexes Maglev tables. */
volatile const __u32 cfg_hash_seed = 0x6d6f6174; /* "moat" */

/* Flow events: which kinds, and a per-CPU token bucket (events per second, burst). */
#define EVENT_MASK_NEW  (1U << 0)
#define EVENT_MASK_END  (1U << 1)
#define EVENT_MASK_DROP (1U << 2)
volatile const __u32 cfg_event_mask = EVENT_MASK_NEW | EVENT_MASK_END | EVENT_MASK_DROP;
volatile const __u32 cfg_event_rate = 10000;
volatile const __u32 cfg_event_burst = 1000;

#endif /* MOAT_CONFIG_H */
