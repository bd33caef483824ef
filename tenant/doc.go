// Package tenant is moat's configuration model: the tenants of one gateway, where
// their traffic enters, the services they publish, the backends behind those services
// and who may reach them. Compile checks a whole configuration and turns it into the
// entries of the fast path's maps; the dataplane writes those entries and nothing else.
// The package is pure Go: it imports neither the dataplane nor cilium/ebpf.
//
// # The model
//
// A configuration (Config) is a list of tenants. Tenants are isolated from one another:
// their address spaces may overlap, two tenants may use the same client prefixes and
// even the same VIP:port, and nothing one tenant sends ever reaches another.
//
//   - A tenant has attachments: a gateway interface, untagged (VLAN 0) or on one 802.1Q
//     VLAN (1-4094). Frames arriving on an attachment belong to its tenant; frames that
//     arrive anywhere else are dropped. The tenant's frames leave only through its own
//     attachments, tagged with the attachment's VLAN. An optional FIB table makes the
//     fast path route the tenant's packets in that kernel routing table.
//   - A service is a virtual IP, port and protocol (tcp or udp) of the tenant, balanced
//     over its backends with a weighted Maglev table. The table's size is the service's
//     maglev_size, a prime (65537 when not given).
//   - A backend is an IPv4 address and port (the service's port when not given), with
//     a weight and an admission state: admitted backends receive new flows; draining
//     ones keep the flows they have and get no new one; evicted ones get nothing, and
//     their flows stop at once. Only admitted backends are in the Maglev table; a
//     service with no admitted backend has no table, and its new flows are dropped.
//     Attestation moves backends between these states.
//   - A rule allows source prefixes (IPv4, CIDR) to reach services of the same tenant,
//     named, or "*" for all of them, present and future. Everything no rule allows is
//     denied.
//
// Names (tenants, services, backends, and rules when named) are 1 to 64 characters of
// a-z, 0-9, '.', '_' and '-', starting and ending with a letter or digit. Services are
// named within their tenant, backends within their service, so "web" may exist in
// every tenant.
//
// # Validation
//
// Compile accepts a configuration whole or not at all. When anything is wrong it returns
// no entries and an error listing every problem found, one per line, each starting with
// the path to what is wrong:
//
//	tenant "a": attachment eth1.4095: VLAN id 4095 out of range 0-4094
//	tenant "a": service "web": backend "w1": weight 0 (remove the backend, or set it draining, instead)
//	tenant "b": rule "lan": source 10.0.0.1/24 has host bits set (did you mean 10.0.0.0/24?)
//
// A configuration is refused when:
//   - a name is malformed, or two tenants, two services of a tenant, two backends of a
//     service or two rules of a tenant have the same name;
//   - an attachment names an interface the gateway does not have, or a VLAN above
//     4094; an (interface, VLAN) is attached to two tenants, or listed twice; a tenant
//     is attached to one interface on two VLANs (its outgoing tag there would be
//     ambiguous);
//   - a VIP or backend address is missing, not IPv4 (IPv4-mapped IPv6 is read as
//     IPv4), or not unicast (0.0.0.0, multicast, 255.255.255.255);
//   - a service has port 0 or a protocol other than tcp and udp, or the same VIP, port
//     and protocol as another service of its tenant;
//   - a backend has weight 0 (set it draining to stop new flows instead) or an unknown
//     state, or the same address and port as another backend of its service;
//   - a maglev_size is not a prime, is above 1048573, or leaves fewer than 64 slots per
//     backend (every backend counts, whatever its state, so that a change of admission
//     never makes a configuration invalid): 65537 slots serve 1024 backends;
//   - a rule has no source or no service, names a service its tenant does not have, or
//     has a source that is not an IPv4 prefix or has host bits set;
//   - the configuration does not fit the fast path's maps (Limits): too many tenants,
//     services or backends for the ids left, too many attachments, or too many allow
//     entries (each rule gives one per source and service, identical ones counted once).
//
// # Compiled entries
//
// Compiled holds the maps' contents: attachments ((interface, VLAN) → tenant), egress
// ports ((tenant, interface) → VLAN), the interfaces the fast path may redirect to,
// services ((tenant, VIP, port, protocol) → service and Maglev table), backends and
// allow entries ((tenant, service, source prefix) → rule). Every key carries the
// tenant's id: that is what keeps tenants with the same addresses apart.
//
// # Identities
//
// Tenants, services and backends are known to the fast path by numeric ids, which its
// connection tracking entries, allow entries and counters refer to. Pass the previous
// compilation's IDs to the next Compile (and store them with the configuration):
//
//   - a tenant, service or backend keeps its id for as long as it exists under the same
//     name, whatever else is added, removed, reordered or changed (a backend's state,
//     weight or address);
//   - something new, or renamed, or removed and added again, gets a new id. Ids are
//     handed out in increasing order from where the previous compilation stopped, and
//     wrap around to 1 only at the map's limit, so an id that was freed is not given to
//     anything else while some id has never been used; and after the wrap, an id held
//     in the previous compilation is taken only when no other is free. A flow pinned to
//     a removed backend, or a counter of a removed service, is thus never mistaken for
//     a newcomer's.
//
// Id 0 means "none" in every map and is never handed out.
//
// # Configuration documents
//
// ParseConfig reads a configuration from JSON, strictly: unknown fields, fields given
// twice, fields spelt in another case, values of the wrong type and anything after the
// document are errors. Protocols ("tcp", "udp") and backend states ("admitted",
// "draining", "evicted") are written by name. For example:
//
//	{"tenants": [{
//	  "name": "shop",
//	  "attachments": [{"interface": "eth1", "vlan": 100}],
//	  "services": [{
//	    "name": "web", "vip": "10.100.0.1", "port": 443, "protocol": "tcp",
//	    "backends": [
//	      {"name": "web-1", "addr": "10.1.0.11", "port": 8443, "weight": 1, "state": "admitted"},
//	      {"name": "web-2", "addr": "10.1.0.12", "port": 8443, "weight": 2, "state": "draining"}
//	    ]
//	  }],
//	  "rules": [{"name": "customers", "sources": ["0.0.0.0/0"], "services": ["web"]}]
//	}]}
package tenant
