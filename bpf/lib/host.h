/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Services of the gateway itself reachable from tenant networks: the attestation
 * verifier that backend agents push evidence to, for instance. Only the listed
 * (ingress interface, gateway address, port, protocol) reach the kernel stack, and
 * only untagged (the stack has no VLAN devices here); everything else addressed to the
 * gateway is dropped like any other destination that is not a service. */
#ifndef MOAT_HOST_H
#define MOAT_HOST_H

#include "common.h"
#include "filter.h"

#define MAX_HOST_SERVICES 256

struct host_service_key {
	__u32 ifindex;
	__be32 addr;
	__be16 port;
	__u8 proto;
	__u8 _pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_HOST_SERVICES);
	__type(key, struct host_service_key);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} host_services SEC(".maps");

/* host_filter is a key filter (filter.h) of host_services, with the ingress ifindex in
 * the tenant's place: every stray (a cross-tenant probe, a scan, a flood of spoofed
 * replies) asks whether it is for a host service before it is dropped, and a clear bit
 * answers with one array load instead of a hash lookup. An optimisation only: the
 * writer sets a service's bit before it inserts the service and clears bits after it
 * deleted services (dataplane/host.go), so a clear bit is always right. */
struct filter host_filter SEC(".maps");

static __always_inline int host_service(__u32 ifindex, __be32 addr, __be16 port, __u8 proto)
{
	struct host_service_key k = { .ifindex = ifindex, .addr = addr, .port = port, .proto = proto };

	if (!filter_has(&host_filter, ifindex, addr, port, proto))
		return 0;

	return bpf_map_lookup_elem(&host_services, &k) != NULL;
}

#endif /* MOAT_HOST_H */
