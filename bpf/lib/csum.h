/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Internet checksum arithmetic (RFC 1071) and incremental updates (RFC 1624 eq. 3).
 * Every operand is a raw 16-bit load of packet bytes: the one's complement sum is
 * byte-order independent, so no swapping is needed. dataplane/model mirrors these
 * functions bit for bit; the differential test compares the bytes they produce. */
#ifndef MOAT_CSUM_H
#define MOAT_CSUM_H

#include "common.h"

static __always_inline __u16 csum_fold(__u32 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)sum;
}

/* csum_replace2 updates *check for a 16-bit field that changed from old to new. */
static __always_inline void csum_replace2(__u16 *check, __u16 old, __u16 new)
{
	__u32 sum = (__u16)~*check;
	sum += (__u16)~old;
	sum += new;
	*check = (__u16)~csum_fold(sum);
}

/* csum_replace4 updates *check for a 32-bit field (an address) that changed. */
static __always_inline void csum_replace4(__u16 *check, __u32 old, __u32 new)
{
	__u32 sum = (__u16)~*check;
	sum += (__u16)~(old & 0xffff);
	sum += (__u16)~(old >> 16);
	sum += new & 0xffff;
	sum += new >> 16;
	*check = (__u16)~csum_fold(sum);
}

#endif /* MOAT_CSUM_H */
