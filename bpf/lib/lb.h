/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Services, backends and Maglev selection. A service is (tenant, VIP, port, protocol);
 * its Maglev table is an inner array of its own size (a prime, per service). Each
 * service owns two table slots (2·id and 2·id+1): the map writer fills the slot not in
 * use and then points the service entry at it, one atomic hash update, so a new table
 * takes effect without replacing an inner map (which makes the kernel wait for an RCU
 * grace period: tens of milliseconds). Backends live in one array indexed by backend
 * id; the zero value of a slot is an evicted backend, so an id that was never written
 * is fail-closed. */
#ifndef MOAT_LB_H
#define MOAT_LB_H

#include "common.h"
#include "config.h"
#include "hash.h"

struct service_key {
	__u32 tenant_id;
	__be32 addr;
	__be16 port;
	__u8 proto;
	__u8 _pad;
};

struct service {
	__u32 id;         /* index of the service counters */
	__u32 table_size; /* Maglev table size M, a prime; 0 = no backend */
	__u32 table;      /* slot of its current table in maglev_tables: 2·id or 2·id+1 */
};

/* Values of struct backend.state; lb.State in Go has the same numbers. */
enum backend_state {
	BACKEND_EVICTED = 0,  /* no packet at all: its flows stop at once */
	BACKEND_ADMITTED = 1, /* new and existing flows */
	BACKEND_DRAINING = 2, /* existing flows only */
};

struct backend {
	__be32 addr;
	__be16 port;
	__u8 state;
	__u8 _pad;
	__u32 tenant_id;  /* checked against the packet's tenant on every use */
	__u32 service_id;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_SERVICES);
	__type(key, struct service_key);
	__type(value, struct service);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} services SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_BACKENDS);
	__type(key, __u32);
	__type(value, struct backend);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} backends SEC(".maps");

/* The inner map is a template: BPF_F_INNER_MAP lets each service's table have its
 * own max_entries (its Maglev size). */
/* Mmapable, so that the writer fills a table of 65537 slots with one copy (0.2 ms)
 * instead of one update per slot (17 ms through BPF_MAP_UPDATE_BATCH): that is most
 * of the time from an attestation result to a backend's admission. */
struct maglev_table {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__uint(map_flags, BPF_F_INNER_MAP | BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, __u32); /* backend id */
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, 2 * MAX_SERVICES);
	__type(key, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__array(values, struct maglev_table);
} maglev_tables SEC(".maps");

static __always_inline struct service *service_lookup(__u32 tenant_id, __be32 addr, __be16 port,
						       __u8 proto)
{
	struct service_key k = { .tenant_id = tenant_id, .addr = addr, .port = port, .proto = proto };

	return bpf_map_lookup_elem(&services, &k);
}

static __always_inline struct backend *backend_lookup(__u32 id)
{
	return bpf_map_lookup_elem(&backends, &id);
}

/* maglev_pick returns the backend id in the service's table slot for this flow, or
 * 0 with *found = 0 when the service has no table. */
static __always_inline __u32 maglev_pick(struct service *svc, __u32 hash, int *found)
{
	__u32 size = svc->table_size;
	__u32 slot, *id;
	void *table;

	*found = 0;
	if (size == 0)
		return 0;
	table = bpf_map_lookup_elem(&maglev_tables, &svc->table);
	if (!table)
		return 0;
	slot = hash % size;
	id = bpf_map_lookup_elem(table, &slot);
	if (!id)
		return 0;
	*found = 1;
	return *id;
}

#endif /* MOAT_LB_H */
