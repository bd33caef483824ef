/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* The fast path's clock: jiffies. Conntrack lifetimes, last-seen refreshes and route
 * reuse need a clock only to about a tick, and bpf_jiffies64 is the one the verifier
 * inlines into a single load: no helper call per packet, where
 * bpf_ktime_get_coarse_ns, of the same one-tick resolution, costs three nested calls.
 * Timestamps kept in maps (ct_entry.last_seen, route.time) are jiffies too, 32 bits
 * of them (clock_stamp); the loader converts configured durations with the kernel's
 * HZ (dataplane.KernelHZ).
 * Flow events keep nanoseconds (events.h): users read those. */
#ifndef MOAT_CLOCK_H
#define MOAT_CLOCK_H

#include "common.h"

static __always_inline __u64 clock_now(void)
{
	return bpf_jiffies64();
}

/* Stamps kept in maps are the low 32 bits of jiffies, compared modulo 2^32: that keeps
 * a conntrack element (the kernel's 48-byte element header, the 24-byte key, the
 * 56-byte value) within two cache lines instead of three, which measured 10-25% more
 * established packets per core. Every lifetime is far below 2^31 ticks (the loader
 * refuses longer ones), so the signed difference of two stamps is their true
 * distance, across the counter's wrap too. */
static __always_inline __u32 clock_stamp(__u64 now)
{
	return (__u32)now;
}

/* clock_since returns the ticks from stamp then to now; negative when then is later
 * (another CPU stamped it after this one read the clock). */
static __always_inline __s32 clock_since(__u64 now, __u32 then)
{
	return (__s32)((__u32)now - then);
}

#endif /* MOAT_CLOCK_H */
