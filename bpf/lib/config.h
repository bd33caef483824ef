/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Load-time options: the Go loader rewrites these constants before the program is
 * verified (cilium/ebpf RewriteConstants / VariableSpec.Set), so changing one needs no
 * recompile and the verifier prunes what they switch off. */
#ifndef MOAT_CONFIG_H
#define MOAT_CONFIG_H

#include "common.h"

/* Lifetimes are in jiffies, the fast path's clock (clock.h); the loader converts the
 * configured durations with the kernel's HZ. These defaults assume HZ=250. */
#define DEFAULT_HZ 250ULL

/* The kernel's HZ: jiffies per second (the event token bucket refills per jiffy). */
volatile const __u64 cfg_hz = DEFAULT_HZ;

/* Connection tracking lifetimes, per entry since its last refresh. */
volatile const __u64 cfg_ct_tcp_timeout_jiffies = 3600ULL * DEFAULT_HZ;
volatile const __u64 cfg_ct_tcp_closing_timeout_jiffies = 10ULL * DEFAULT_HZ;
volatile const __u64 cfg_ct_udp_timeout_jiffies = 60ULL * DEFAULT_HZ;
/* An entry's last_seen is rewritten at most this often: a write per packet would
 * bounce the entry's cache line between CPUs for nothing. */
volatile const __u64 cfg_ct_refresh_jiffies = 1ULL * DEFAULT_HZ;

/* How long an established flow reuses the route it found (route.h). */
volatile const __u64 cfg_route_ttl_jiffies = 1ULL * DEFAULT_HZ;

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
