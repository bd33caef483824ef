/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Types shared by the benchmark's programs and their Go side (bench/). */
#ifndef MOAT_BENCH_H
#define MOAT_BENCH_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/in.h>
#include <linux/tcp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#ifndef __always_inline
#define __always_inline inline __attribute__((always_inline))
#endif

/* Packets and bytes, per CPU. */
struct counter {
	__u64 packets;
	__u64 bytes;
};

/* One flow's client end: address and port, network order. */
struct flow {
	__be32 addr;
	__be16 port;
	__u16 pad;
};

#endif /* MOAT_BENCH_H */
