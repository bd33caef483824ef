/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* The fast path's clock: jiffies. Conntrack lifetimes, last-seen refreshes and route
 * reuse need a clock only to about a tick, and bpf_jiffies64 is the one the verifier
 * inlines into a single load: no helper call per packet, where
 * bpf_ktime_get_coarse_ns, of the same one-tick resolution, costs three nested calls.
 * Timestamps kept in maps (ct_entry.last_seen, route.time) are jiffies too; the
 * loader converts configured durations with the kernel's HZ (dataplane.KernelHZ).
 * Flow events keep nanoseconds (events.h): users read those. */
#ifndef MOAT_CLOCK_H
#define MOAT_CLOCK_H

#include "common.h"

static __always_inline __u64 clock_now(void)
{
	return bpf_jiffies64();
}

#endif /* MOAT_CLOCK_H */
