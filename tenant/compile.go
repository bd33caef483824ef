package tenant

import (
	"cmp"
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"

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

// StaticInterfaces is Interfaces from a fixed table, name → ifindex: what tests and
// anything that does not ask the kernel give Compile.
type StaticInterfaces map[string]uint32

// Index implements Interfaces.
func (m StaticInterfaces) Index(name string) (uint32, error) {
	if i, ok := m[name]; ok {
		return i, nil
	}
	return 0, fmt.Errorf("no interface %q on this gateway", name)
}

// IDs are the numeric identities Compile gave to tenants, services and backends. They
// are kept across compilations (pass the previous Compiled.IDs back in, and store them
// with the configuration) because connection tracking entries, policy entries and
// counters refer to them: a tenant, service or backend keeps its id for as long as it
// exists under the same name. New ids are handed out in increasing order from where
// the previous compilation stopped (Next), wrapping around at the fast path's limit, so
// an id that was freed is given to something else only once no id is left that was
// never used; even then, an id held in the previous compilation is taken last.
type IDs struct {
	Tenants  map[string]uint32 `json:"tenants"`  // by tenant name
	Services map[string]uint32 `json:"services"` // by "tenant/service"
	Backends map[string]uint32 `json:"backends"` // by "tenant/service/backend"
	// Next is where each kind's search for a new id starts. Zero (IDs written before
	// it existed) means just above the highest id held.
	Next NextIDs `json:"next,omitzero"`
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
	// MaglevSize is the service's table size whether or not it has a table now: the
	// fast path prepares its table slots before the first backend is admitted.
	MaglevSize uint32
	Tenant     string
	Name       string
	// admitted is what Table was built from, sorted by id (for Compiler's reuse).
	admitted []lb.Backend
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

// CheckName refuses a name that is not valid for a tenant, service, backend or rule:
// 1-64 characters of a-z 0-9 . _ -, starting and ending with a letter or digit. Names
// appear in keys, subjects and paths, so no separator can hide in one.
func CheckName(name string) error { return checkName(name) }

func checkName(name string) error {
	if !nameRE.MatchString(name) {
		return fmt.Errorf("name %q: want 1-64 characters of a-z 0-9 . _ -, starting and ending with a letter or digit", name)
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
	return compile(cfg, ifaces, prev, limits, nil, true)
}

// Validate reports what Compile would refuse in cfg, without building any Maglev
// table: what an API checks before it accepts a change.
func Validate(cfg Config, ifaces Interfaces, prev IDs, limits Limits) error {
	_, err := compile(cfg, ifaces, prev, limits, nil, false)
	return err
}

func compile(cfg Config, ifaces Interfaces, prev IDs, limits Limits, reuse map[uint32]builtTable, tables bool) (*Compiled, error) {
	c := &compiler{ifaces: ifaces, limits: limits, out: &Compiled{}, reuse: reuse}
	c.ids = newAllocator(prev, limits)
	c.compile(cfg)
	if len(c.errs) == 0 && tables {
		// Only a configuration found valid pays for its tables.
		c.buildTables()
	}
	if len(c.errs) > 0 {
		return nil, errors.Join(c.errs...)
	}
	c.out.IDs = c.ids.result()
	return c.out, nil
}

// Compiler compiles the successive configurations of one gateway: it keeps the ids of
// one compilation for the next, and reuses the Maglev table of every service whose
// table size and admitted backends (ids and weights) did not change, so that evicting
// one backend rebuilds one table, not all of them. It is not safe for concurrent use.
type Compiler struct {
	ifaces Interfaces
	limits Limits
	ids    IDs
	tables map[uint32]builtTable // by service id, from the last compilation
}

// builtTable is a table and what it was built from (admitted sorted by id).
type builtTable struct {
	size     uint32
	admitted []lb.Backend
	table    []uint32
}

// NewCompiler returns a Compiler starting from ids (those of the last compilation the
// gateway applied, or zero).
func NewCompiler(ifaces Interfaces, limits Limits, ids IDs) *Compiler {
	return &Compiler{ifaces: ifaces, limits: limits, ids: ids}
}

// Compile compiles cfg like the function Compile; on success the result's ids and
// tables become the base of the next call.
func (c *Compiler) Compile(cfg Config) (*Compiled, error) {
	out, err := compile(cfg, c.ifaces, c.ids, c.limits, c.tables, true)
	if err != nil {
		return nil, err
	}
	c.ids = out.IDs
	c.tables = map[uint32]builtTable{}
	for _, s := range out.Services {
		if s.Table != nil {
			c.tables[s.ID] = builtTable{size: s.TableSize, admitted: s.admitted, table: s.Table}
		}
	}
	return out, nil
}

// IDs returns the ids of the last successful compilation.
func (c *Compiler) IDs() IDs { return c.ids }

// tableJob is the Maglev table of one service, built once the whole configuration is
// known to be valid.
type tableJob struct {
	service  int // index in Compiled.Services
	admitted []lb.Backend
	size     uint32
	where    string
}

// buildTables builds every service's table, on as many cores as the process may use:
// tables are independent of one another and their builds are most of a compilation's
// work (milliseconds per table of the default size). Errors are reported in
// configuration order whatever the order the builds finish in.
func (c *compiler) buildTables() {
	jobs := c.tables
	errs := make([]error, len(jobs))
	var next atomic.Int64
	work := func() {
		for {
			i := int(next.Add(1) - 1)
			if i >= len(jobs) {
				return
			}
			j := jobs[i]
			svc := &c.out.Services[j.service]
			svc.admitted = sortedBackends(j.admitted)
			if prev, ok := c.reuse[svc.ID]; ok && prev.size == j.size && slices.Equal(prev.admitted, svc.admitted) {
				svc.TableSize, svc.Table = j.size, prev.table // tables are never written once built
				continue
			}
			table, err := lb.BuildTable(j.admitted, j.size)
			if err != nil {
				errs[i] = fmt.Errorf("%s: build Maglev table: %w", j.where, err)
				continue
			}
			svc.TableSize, svc.Table = j.size, table
		}
	}
	var wg sync.WaitGroup
	for range min(runtime.GOMAXPROCS(0), len(jobs)) - 1 {
		wg.Go(work)
	}
	work()
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			c.errs = append(c.errs, err)
		}
	}
}

// sortedBackends is bs sorted by id: the identity of a table's input.
func sortedBackends(bs []lb.Backend) []lb.Backend {
	out := slices.Clone(bs)
	slices.SortFunc(out, func(a, b lb.Backend) int { return cmp.Compare(a.ID, b.ID) })
	return out
}

type compiler struct {
	reuse  map[uint32]builtTable // tables of a previous compilation, by service id
	ifaces Interfaces
	limits Limits
	ids    *allocator
	out    *Compiled
	errs   []error
	tables []tableJob
	// policyFull is set when the rules expand to more entries than the fast path
	// holds; expansion stops there, so that a short document cannot make Compile
	// allocate sources × services entries before refusing it.
	policyFull bool
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

	for i, t := range cfg.Tenants {
		if err := checkName(t.Name); err != nil {
			c.fail("tenant #%d: %w", i+1, err)
			continue
		}
		if tenantNames[t.Name] {
			c.fail("tenant %q: defined twice", t.Name)
			continue
		}
		tenantNames[t.Name] = true
		tid, err := c.ids.get(kindTenant, t.Name)
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
	if c.policyFull {
		c.fail("more than %d compiled allow entries (one per source and service of each rule, identical ones counted once): above the fast path's limit",
			c.limits.MaxPolicy)
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
			if other == t.Name {
				c.fail("%s: listed twice", where)
			} else {
				c.fail("%s: already attached to tenant %q", where, other)
			}
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
	for i, s := range t.Services {
		where := fmt.Sprintf("tenant %q: service %q", t.Name, s.Name)
		if err := checkName(s.Name); err != nil {
			c.fail("tenant %q: service #%d: %w", t.Name, i+1, err)
			continue
		}
		if _, dup := ids[s.Name]; dup {
			c.fail("%s: defined twice", where)
			continue
		}
		keyOK := true // the service's key (VIP, port, protocol) is well formed
		if err := checkUnicastV4("VIP", s.VIP); err != nil {
			c.fail("%s: %w", where, err)
			keyOK = false
		}
		if s.Port == 0 {
			c.fail("%s: port 0", where)
			keyOK = false
		}
		if s.Protocol != TCP && s.Protocol != UDP {
			c.fail("%s: protocol %s is not balanced (want tcp or udp)", where, s.Protocol)
			keyOK = false
		}
		ok := keyOK
		size, err := tableSize(s.MaglevSize, len(s.Backends))
		if err != nil {
			c.fail("%s: %w", where, err)
			ok = false
		}
		k := serviceKey{s.VIP.Unmap(), s.Port, s.Protocol}
		if other, dup := byKey[k]; keyOK && dup {
			c.fail("%s: %s:%d/%s is already service %q of the same tenant", where, k.vip, s.Port, s.Protocol, other)
			ok = false
		} else if keyOK {
			byKey[k] = s.Name
		}
		sid, err := c.ids.get(kindService, t.Name+"/"+s.Name)
		if err != nil {
			c.fail("%s: %w", where, err)
			ok = false
		}
		ids[s.Name] = sid // recorded even when invalid, so rules naming it don't add noise
		// The backends are checked even when the service is invalid, so that their
		// problems are reported in the same round.
		backends, admitted, backendsOK := c.compileBackends(t, s, tid, sid, where)
		if !ok || !backendsOK {
			continue
		}
		c.out.Backends = append(c.out.Backends, backends...)
		if len(admitted) > 0 {
			// No admitted backend: no table (TableSize 0), and the fast path drops.
			c.tables = append(c.tables, tableJob{service: len(c.out.Services), admitted: admitted, size: size, where: where})
		}
		c.out.Services = append(c.out.Services, ServiceEntry{
			TenantID: tid, VIP: s.VIP.Unmap(), Port: s.Port, Protocol: s.Protocol, ID: sid, MaglevSize: size,
			Tenant: t.Name, Name: s.Name,
		})
	}
	return ids
}

// tableSize returns the Maglev table size of a service that asks for size (0: the
// default) and has n backends, or why it cannot have it. Every backend counts, whatever
// its state: whether a configuration is valid must not depend on which backends
// attestation happens to admit at the moment.
func tableSize(size uint32, n int) (uint32, error) {
	if size == 0 {
		size = lb.DefaultTableSize
	}
	const most = int(lb.MaxTableSize / lb.MinSlotsPerBackend)
	switch {
	case size > lb.MaxTableSize:
		return 0, fmt.Errorf("maglev_size %d is above the largest table, %d", size, lb.MaxTableSize)
	case !lb.IsPrime(size):
		return 0, fmt.Errorf("maglev_size %d is not a prime (try %d)", size, lb.NextPrime(size))
	case n > most:
		return 0, fmt.Errorf("%d backends: a service has at most %d (%d slots each in a table of at most %d)",
			n, most, lb.MinSlotsPerBackend, lb.MaxTableSize)
	case uint32(n) > size/lb.MinSlotsPerBackend:
		return 0, fmt.Errorf("maglev_size %d is too small for %d backends (at least %d slots per backend: try %d)",
			size, n, lb.MinSlotsPerBackend, lb.NextPrime(uint32(n)*lb.MinSlotsPerBackend))
	}
	return size, nil
}

// compileBackends checks and compiles a service's backends, and returns those whose
// state admits them into the service's table.
func (c *compiler) compileBackends(t Tenant, s Service, tid, sid uint32, where string) ([]BackendEntry, []lb.Backend, bool) {
	var (
		out      []BackendEntry
		admitted []lb.Backend
		names    = map[string]bool{}
		addrs    = map[netip.AddrPort]string{}
		ok       = true
	)
	for i, b := range s.Backends {
		bwhere := fmt.Sprintf("%s: backend %q", where, b.Name)
		if err := checkName(b.Name); err != nil {
			c.fail("%s: backend #%d: %w", where, i+1, err)
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
		} else {
			addrs[ap] = b.Name
		}
		bid, err := c.ids.get(kindBackend, t.Name+"/"+s.Name+"/"+b.Name)
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
	return out, admitted, ok
}

func (c *compiler) compileRules(t Tenant, tid uint32, svcIDs map[string]uint32) {
	type policyKey struct {
		sid uint32
		src netip.Prefix
	}
	seen := map[policyKey]bool{}
	ruleNames := map[string]bool{}
	for i, r := range t.Rules {
		where := fmt.Sprintf("tenant %q: rule #%d", t.Name, i+1)
		if r.Name != "" {
			// A rule's name is optional; one that is given must be a name, and name
			// one rule only, since logs and errors use it to point at the rule.
			if err := checkName(r.Name); err != nil {
				c.fail("%s: %w", where, err)
			} else if ruleNames[r.Name] {
				c.fail("tenant %q: rule %q: defined twice", t.Name, r.Name)
			} else {
				where = fmt.Sprintf("tenant %q: rule %q", t.Name, r.Name)
			}
			ruleNames[r.Name] = true
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
				if c.policyFull || uint32(len(c.out.Policy)) >= c.limits.MaxPolicy {
					c.policyFull = true
					break
				}
				seen[k] = true
				c.out.Policy = append(c.out.Policy, PolicyEntry{TenantID: tid, ServiceID: sid, Source: src, RuleID: uint32(i + 1)})
			}
		}
	}
}
