package tenant

import (
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"slices"

	"github.com/seed4c/moat/lb"
)

// Limits bounds the ids Compile hands out by the sizes of the fast path's maps, so a
// configuration that cannot fit is refused here, whole, rather than half-written.
type Limits struct {
	MaxTenants     uint32 // ids 1..MaxTenants-1
	MaxServices    uint32
	MaxBackends    uint32
	MaxAttachments uint32
	MaxPolicy      uint32
}

// DefaultLimits are the map sizes the fast path is built with (bpf/lib/common.h).
func DefaultLimits() Limits {
	return Limits{
		MaxTenants:     4096,
		MaxServices:    4096,
		MaxBackends:    65536,
		MaxAttachments: 1024,
		MaxPolicy:      65536,
	}
}

// Interfaces resolves a gateway interface name to its ifindex. The dataplane provides
// the real one (netlink); tests give a map.
type Interfaces interface {
	// Index returns the interface's index, or an error naming the interface when the
	// gateway has no interface of that name.
	Index(name string) (uint32, error)
}

// IDs are the numeric identities Compile gave to tenants, services and backends. They
// are kept across compilations (pass the previous Compiled.IDs back in) because
// connection tracking entries and counters refer to them: a backend keeps its id for
// its whole life, and an id freed by one compilation is not handed to something else
// by the next one while unused ids remain.
type IDs struct {
	Tenants  map[string]uint32 `json:"tenants"`  // by tenant name
	Services map[string]uint32 `json:"services"` // by "tenant/service"
	Backends map[string]uint32 `json:"backends"` // by "tenant/service/backend"
}

// Compiled is a configuration turned into the entries of the fast path's maps. It is
// plain data: the dataplane's writer translates it into map writes and its reference
// model evaluates packets against it.
type Compiled struct {
	Attachments []AttachmentEntry
	Egress      []EgressEntry
	Services    []ServiceEntry
	Backends    []BackendEntry
	Policy      []PolicyEntry
	// TxPorts are the interfaces the fast path may redirect to: every attached one.
	TxPorts []uint32
	IDs     IDs
}

// AttachmentEntry classifies frames arriving on (Ifindex, VLAN) to TenantID.
type AttachmentEntry struct {
	Ifindex  uint32
	VLAN     uint16
	TenantID uint32
	FIBTable uint32
	Tenant   string
}

// EgressEntry lets TenantID's frames leave through Ifindex, tagged with VLAN.
type EgressEntry struct {
	TenantID uint32
	Ifindex  uint32
	VLAN     uint16
}

// ServiceEntry is one service and its Maglev table. Table holds backend ids; it is
// empty (TableSize 0) when no backend of the service is admitted.
type ServiceEntry struct {
	TenantID  uint32
	VIP       netip.Addr
	Port      uint16
	Protocol  Protocol
	ID        uint32
	TableSize uint32
	Table     []uint32
	Tenant    string
	Name      string
}

// BackendEntry is one backend as the fast path sees it.
type BackendEntry struct {
	ID        uint32
	TenantID  uint32
	ServiceID uint32
	Addr      netip.Addr
	Port      uint16
	State     lb.State
	Tenant    string
	Service   string
	Name      string
}

// PolicyEntry allows Source to reach ServiceID of TenantID.
type PolicyEntry struct {
	TenantID  uint32
	ServiceID uint32
	Source    netip.Prefix
	RuleID    uint32 // 1-based index of the rule in its tenant
}

var nameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9._-]{0,62}[a-z0-9])?$`)

func checkName(kind, name string) error {
	if !nameRE.MatchString(name) {
		return fmt.Errorf("%s name %q: want 1-64 characters of a-z 0-9 . _ -, starting and ending with a letter or digit", kind, name)
	}
	return nil
}

func checkUnicastV4(what string, a netip.Addr) error {
	switch {
	case !a.IsValid():
		return fmt.Errorf("%s is missing", what)
	case !a.Is4() && !a.Is4In6():
		return fmt.Errorf("%s %s: only IPv4 is supported so far", what, a)
	case a.Unmap().IsUnspecified(), a.Unmap().IsMulticast(), a.Unmap() == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return fmt.Errorf("%s %s is not a unicast address", what, a)
	}
	return nil
}

// Compile validates cfg as a whole and compiles it. Every problem is reported (joined,
// each with the path to what is wrong); on error nothing is returned, so nothing can be
// half-applied. prev carries the ids of the previous compilation (zero for the first).
func Compile(cfg Config, ifaces Interfaces, prev IDs, limits Limits) (*Compiled, error) {
	c := &compiler{ifaces: ifaces, limits: limits, out: &Compiled{}}
	c.ids = newAllocator(prev)
	c.compile(cfg)
	if len(c.errs) > 0 {
		return nil, errors.Join(c.errs...)
	}
	c.out.IDs = c.ids.result()
	return c.out, nil
}

type compiler struct {
	ifaces Interfaces
	limits Limits
	ids    *allocator
	out    *Compiled
	errs   []error
}

func (c *compiler) fail(format string, args ...any) {
	c.errs = append(c.errs, fmt.Errorf(format, args...))
}

type attachKey struct {
	ifindex uint32
	vlan    uint16
}

func (c *compiler) compile(cfg Config) {
	tenantNames := map[string]bool{}
	attachedBy := map[attachKey]string{}
	txPorts := map[uint32]bool{}

	// Ids of everything present are claimed first, new things get theirs after, so
	// that a new name never takes the id an existing one keeps.
	for _, t := range cfg.Tenants {
		c.ids.keep(kindTenant, t.Name)
		for _, s := range t.Services {
			c.ids.keep(kindService, t.Name+"/"+s.Name)
			for _, b := range s.Backends {
				c.ids.keep(kindBackend, t.Name+"/"+s.Name+"/"+b.Name)
			}
		}
	}

	for _, t := range cfg.Tenants {
		if err := checkName("tenant", t.Name); err != nil {
			c.fail("%w", err)
			continue
		}
		if tenantNames[t.Name] {
			c.fail("tenant %q: defined twice", t.Name)
			continue
		}
		tenantNames[t.Name] = true
		tid, err := c.ids.get(kindTenant, t.Name, c.limits.MaxTenants)
		if err != nil {
			c.fail("tenant %q: %w", t.Name, err)
			continue
		}
		c.compileAttachments(t, tid, attachedBy, txPorts)
		svcIDs := c.compileServices(t, tid)
		c.compileRules(t, tid, svcIDs)
	}

	if n := uint32(len(c.out.Attachments)); n > c.limits.MaxAttachments {
		c.fail("%d attachments in all, above the fast path's limit of %d", n, c.limits.MaxAttachments)
	}
	if n := uint32(len(c.out.Policy)); n > c.limits.MaxPolicy {
		c.fail("%d compiled allow entries (sources x services), above the fast path's limit of %d", n, c.limits.MaxPolicy)
	}
	for ifindex := range txPorts {
		c.out.TxPorts = append(c.out.TxPorts, ifindex)
	}
	slices.Sort(c.out.TxPorts)
}

func (c *compiler) compileAttachments(t Tenant, tid uint32, attachedBy map[attachKey]string, txPorts map[uint32]bool) {
	onIface := map[uint32]bool{}
	for _, a := range t.Attachments {
		where := fmt.Sprintf("tenant %q: attachment %s.%d", t.Name, a.Interface, a.VLAN)
		if a.VLAN > 4094 {
			c.fail("%s: VLAN id %d out of range 0-4094", where, a.VLAN)
			continue
		}
		ifindex, err := c.ifaces.Index(a.Interface)
		if err != nil {
			c.fail("%s: %w", where, err)
			continue
		}
		k := attachKey{ifindex, a.VLAN}
		if other, taken := attachedBy[k]; taken {
			c.fail("%s: already attached to tenant %q", where, other)
			continue
		}
		if onIface[ifindex] {
			// The egress tag of the tenant's frames on an interface must be unique.
			c.fail("%s: tenant is already attached to %s on another VLAN", where, a.Interface)
			continue
		}
		attachedBy[k] = t.Name
		onIface[ifindex] = true
		txPorts[ifindex] = true
		c.out.Attachments = append(c.out.Attachments, AttachmentEntry{
			Ifindex: ifindex, VLAN: a.VLAN, TenantID: tid, FIBTable: t.FIBTable, Tenant: t.Name,
		})
		c.out.Egress = append(c.out.Egress, EgressEntry{TenantID: tid, Ifindex: ifindex, VLAN: a.VLAN})
	}
}

type serviceKey struct {
	vip   netip.Addr
	port  uint16
	proto Protocol
}

func (c *compiler) compileServices(t Tenant, tid uint32) map[string]uint32 {
	ids := map[string]uint32{}
	byKey := map[serviceKey]string{}
	for _, s := range t.Services {
		where := fmt.Sprintf("tenant %q: service %q", t.Name, s.Name)
		if err := checkName("service", s.Name); err != nil {
			c.fail("tenant %q: %w", t.Name, err)
			continue
		}
		if _, dup := ids[s.Name]; dup {
			c.fail("%s: defined twice", where)
			continue
		}
		ok := true
		if err := checkUnicastV4("VIP", s.VIP); err != nil {
			c.fail("%s: %w", where, err)
			ok = false
		}
		if s.Port == 0 {
			c.fail("%s: port 0", where)
			ok = false
		}
		if s.Protocol != TCP && s.Protocol != UDP {
			c.fail("%s: protocol %s is not balanced (want tcp or udp)", where, s.Protocol)
			ok = false
		}
		size := s.MaglevSize
		if size == 0 {
			size = lb.DefaultTableSize
		}
		if !lb.IsPrime(size) || size > lb.MaxTableSize {
			c.fail("%s: maglev_size %d must be a prime no larger than %d (try %d)", where, size, lb.MaxTableSize, lb.NextPrime(size))
			ok = false
		} else if n := uint32(len(s.Backends)); n > size/lb.MinSlotsPerBackend {
			c.fail("%s: maglev_size %d is too small for %d backends (at least %d slots per backend: try %d)",
				where, size, n, lb.MinSlotsPerBackend, lb.NextPrime(n*lb.MinSlotsPerBackend))
			ok = false
		}
		k := serviceKey{s.VIP.Unmap(), s.Port, s.Protocol}
		if other, dup := byKey[k]; ok && dup {
			c.fail("%s: %s:%d/%s is already service %q of the same tenant", where, s.VIP, s.Port, s.Protocol, other)
			ok = false
		}
		sid, err := c.ids.get(kindService, t.Name+"/"+s.Name, c.limits.MaxServices)
		if err != nil {
			c.fail("%s: %w", where, err)
			ok = false
		}
		ids[s.Name] = sid // recorded even when invalid, so rules naming it don't add noise
		if !ok {
			continue
		}
		byKey[k] = s.Name
		backends, table, ok := c.compileBackends(t, s, tid, sid, size, where)
		if !ok {
			continue
		}
		c.out.Backends = append(c.out.Backends, backends...)
		entry := ServiceEntry{
			TenantID: tid, VIP: s.VIP.Unmap(), Port: s.Port, Protocol: s.Protocol, ID: sid,
			Tenant: t.Name, Name: s.Name,
		}
		if table != nil {
			entry.TableSize, entry.Table = size, table
		}
		c.out.Services = append(c.out.Services, entry)
	}
	return ids
}

func (c *compiler) compileBackends(t Tenant, s Service, tid, sid, size uint32, where string) ([]BackendEntry, []uint32, bool) {
	var (
		out      []BackendEntry
		admitted []lb.Backend
		names    = map[string]bool{}
		addrs    = map[netip.AddrPort]string{}
		ok       = true
	)
	for _, b := range s.Backends {
		bwhere := fmt.Sprintf("%s: backend %q", where, b.Name)
		if err := checkName("backend", b.Name); err != nil {
			c.fail("%s: %w", where, err)
			ok = false
			continue
		}
		if names[b.Name] {
			c.fail("%s: defined twice", bwhere)
			ok = false
			continue
		}
		names[b.Name] = true
		if err := checkUnicastV4("address", b.Addr); err != nil {
			c.fail("%s: %w", bwhere, err)
			ok = false
			continue
		}
		if b.Weight == 0 {
			c.fail("%s: weight 0 (remove the backend, or set it draining, instead)", bwhere)
			ok = false
		}
		if b.State > lb.StateDraining {
			c.fail("%s: %w %d", bwhere, lb.ErrInvalidState, b.State)
			ok = false
		}
		port := b.Port
		if port == 0 {
			port = s.Port
		}
		ap := netip.AddrPortFrom(b.Addr.Unmap(), port)
		if other, dup := addrs[ap]; dup {
			c.fail("%s: %s is already backend %q of the service", bwhere, ap, other)
			ok = false
		}
		addrs[ap] = b.Name
		bid, err := c.ids.get(kindBackend, t.Name+"/"+s.Name+"/"+b.Name, c.limits.MaxBackends)
		if err != nil {
			c.fail("%s: %w", bwhere, err)
			ok = false
			continue
		}
		out = append(out, BackendEntry{
			ID: bid, TenantID: tid, ServiceID: sid, Addr: b.Addr.Unmap(), Port: port, State: b.State,
			Tenant: t.Name, Service: s.Name, Name: b.Name,
		})
		if b.State.AcceptsNewFlows() && b.Weight > 0 {
			admitted = append(admitted, lb.Backend{ID: bid, Weight: b.Weight})
		}
	}
	if !ok || len(admitted) == 0 {
		return out, nil, ok
	}
	table, err := lb.BuildTable(admitted, size)
	if err != nil {
		c.fail("%s: build Maglev table: %w", where, err)
		return nil, nil, false
	}
	return out, table, true
}

func (c *compiler) compileRules(t Tenant, tid uint32, svcIDs map[string]uint32) {
	type policyKey struct {
		sid uint32
		src netip.Prefix
	}
	seen := map[policyKey]bool{}
	for i, r := range t.Rules {
		where := fmt.Sprintf("tenant %q: rule %d", t.Name, i+1)
		if r.Name != "" {
			where = fmt.Sprintf("tenant %q: rule %q", t.Name, r.Name)
		}
		if len(r.Sources) == 0 {
			c.fail("%s: no sources", where)
		}
		if len(r.Services) == 0 {
			c.fail("%s: no services (name them, or %q for all)", where, AllServices)
		}
		var sids []uint32
		for _, name := range r.Services {
			if name == AllServices {
				for _, s := range t.Services {
					if id, ok := svcIDs[s.Name]; ok {
						sids = append(sids, id)
					}
				}
				continue
			}
			id, ok := svcIDs[name]
			if !ok {
				c.fail("%s: unknown service %q", where, name)
				continue
			}
			sids = append(sids, id)
		}
		for _, src := range r.Sources {
			if !src.IsValid() || !src.Addr().Is4() {
				c.fail("%s: source %s: want an IPv4 prefix", where, src)
				continue
			}
			if src.Masked() != src {
				c.fail("%s: source %s has host bits set (did you mean %s?)", where, src, src.Masked())
				continue
			}
			for _, sid := range sids {
				k := policyKey{sid, src}
				if seen[k] {
					continue
				}
				seen[k] = true
				c.out.Policy = append(c.out.Policy, PolicyEntry{TenantID: tid, ServiceID: sid, Source: src, RuleID: uint32(i + 1)})
			}
		}
	}
}
