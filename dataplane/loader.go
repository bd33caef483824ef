package dataplane

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/rlimit"
	"golang.org/x/sys/unix"

	"github.com/seed4c/moat/tenant"
)

// DefaultPinRoot is where instances pin their maps and links: one directory each.
const DefaultPinRoot = "/sys/fs/bpf/moat"

// Options configure one fast path instance.
type Options struct {
	// Instance names the instance; its maps and links are pinned under
	// PinRoot/Instance, so a restarted daemon with the same name finds them again.
	Instance string
	PinRoot  string // default DefaultPinRoot
	Config   Config
	Limits   tenant.Limits
	MaxFlows uint32 // connection tracking entries (two per flow); default 262144
	Logger   *slog.Logger
}

// DefaultOptions returns the embedded defaults for instance.
func DefaultOptions(instance string) Options {
	return Options{
		Instance: instance,
		PinRoot:  DefaultPinRoot,
		Config:   DefaultConfig(),
		Limits:   tenant.DefaultLimits(),
		MaxFlows: 262144,
	}
}

var instanceRE = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,31}$`)

// PinDir is the directory of an instance's pins.
func (o Options) PinDir() string {
	root := o.PinRoot
	if root == "" {
		root = DefaultPinRoot
	}
	return filepath.Join(root, o.Instance)
}

func (o Options) validate() error {
	if !instanceRE.MatchString(o.Instance) {
		return fmt.Errorf("instance name %q: want 1-32 characters of a-z 0-9 _ -", o.Instance)
	}
	if err := o.Config.Validate(); err != nil {
		return err
	}
	l := o.Limits
	for _, v := range []struct {
		name string
		n    uint32
	}{
		{"max tenants", l.MaxTenants}, {"max services", l.MaxServices}, {"max backends", l.MaxBackends},
		{"max attachments", l.MaxAttachments}, {"max policy entries", l.MaxPolicy}, {"max flows", o.MaxFlows},
	} {
		if v.n < 2 {
			return fmt.Errorf("%s %d: must be at least 2 (id 0 is reserved)", v.name, v.n)
		}
	}
	return nil
}

// Dataplane is one loaded fast path instance: its programs and pinned maps. Closing it
// leaves the pins, so the fast path keeps forwarding while no daemon runs.
type Dataplane struct {
	opts   Options
	log    *slog.Logger
	objs   gatewayObjects
	writer *Writer
}

// Open loads the fast path for opts.Instance, reusing the instance's pinned maps when
// they exist (a restart keeps every flow and counter) and creating them otherwise.
// It mounts bpffs at /sys/fs/bpf when nothing is mounted there. An Open that fails
// leaves the instance's pins as it found them: none when it was to create them (the
// maps are pinned before the program is verified), and those of a fast path that may
// still be running otherwise.
func Open(opts Options) (*Dataplane, error) { return open(opts, nil) }

// open is Open; edit, when set, changes the specification before it is loaded (tests
// make the load fail with it).
func open(opts Options, edit func(*ebpf.CollectionSpec)) (_ *Dataplane, err error) {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if err := opts.validate(); err != nil {
		return nil, fmt.Errorf("fast path options: %w", err)
	}
	if err := ensureBPFFS(filepath.Dir(opts.PinDir())); err != nil {
		return nil, err
	}
	if err := rlimit.RemoveMemlock(); err != nil {
		return nil, fmt.Errorf("lift memlock limit: %w", err)
	}
	spec, err := newSpec(opts)
	if err != nil {
		return nil, err
	}
	if edit != nil {
		edit(spec)
	}
	dir := opts.PinDir()
	_, statErr := os.Stat(dir)
	if err := os.MkdirAll(filepath.Join(dir, "links"), 0o700); err != nil {
		return nil, fmt.Errorf("create pin directory %s: %w", dir, err)
	}
	if errors.Is(statErr, os.ErrNotExist) {
		defer func() {
			if err != nil {
				err = errors.Join(err, os.RemoveAll(dir))
			}
		}()
	}
	if err := replaceStaleConntrack(dir, spec.Maps[gatewayMapConntrack], opts.Logger); err != nil {
		return nil, err
	}
	d := &Dataplane{opts: opts, log: opts.Logger}
	err = spec.LoadAndAssign(&d.objs, &ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: dir}})
	var ve *ebpf.VerifierError
	switch {
	case errors.As(err, &ve):
		return nil, fmt.Errorf("load fast path: verifier refused the program: %+v", ve)
	case errors.Is(err, ebpf.ErrMapIncompatible):
		return nil, fmt.Errorf("load fast path: the maps pinned in %s were made with other sizes or by another version "+
			"(remove the instance with 'moat dataplane remove --instance %s', or start with the same sizes): %w",
			dir, opts.Instance, err)
	case err != nil:
		return nil, fmt.Errorf("load fast path: %w", err)
	}
	d.writer = newWriter(&d.objs.gatewayMaps, spec.Maps[gatewayMapMaglevTables].InnerMap, opts.Limits, opts.MaxFlows)
	if err := d.writer.fillFilters(); err != nil {
		d.objs.Close()
		return nil, fmt.Errorf("load fast path: %w", err)
	}
	return d, nil
}

// replaceStaleConntrack removes the instance's pinned conntrack map when it was made
// by a version with another entry layout (same number of flows, other key or value
// size): flows are the one state the fast path rebuilds by itself (each flow's next
// packet is balanced again, to the same backend while its service's Maglev table is
// unchanged), and the alternative is refusing to load until the operator removes the
// whole instance. A map of another size is left alone: that is a configuration that
// differs from the running instance's, which Open refuses.
func replaceStaleConntrack(dir string, want *ebpf.MapSpec, log *slog.Logger) error {
	path := filepath.Join(dir, want.Name)
	m, err := ebpf.LoadPinnedMap(path, nil)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("open pinned conntrack map %s: %w", path, err)
	}
	incompatible := want.Compatible(m)
	sameSize := m.MaxEntries() == want.MaxEntries
	m.Close()
	if incompatible == nil || !sameSize {
		return nil
	}
	log.Warn("replacing the pinned conntrack map, which this version cannot use: tracked flows are balanced again",
		"pin", path, "reason", incompatible)
	if err := os.Remove(path); err != nil {
		return fmt.Errorf("replace pinned conntrack map: %w", err)
	}
	return nil
}

// newSpec returns the object's collection spec sized and configured by opts.
func newSpec(opts Options) (*ebpf.CollectionSpec, error) {
	spec, err := loadGateway()
	if err != nil {
		return nil, fmt.Errorf("read embedded fast path object: %w", err)
	}
	var s gatewaySpecs
	if err := spec.Assign(&s); err != nil {
		return nil, fmt.Errorf("fast path object: %w", err)
	}
	l := opts.Limits
	s.Attachments.MaxEntries = l.MaxAttachments
	s.EgressPorts.MaxEntries = l.MaxAttachments
	s.TxPorts.MaxEntries = l.MaxAttachments
	s.Services.MaxEntries = l.MaxServices
	s.MaglevTables.MaxEntries = 2 * l.MaxServices // two table slots per service (bpf/lib/lb.h)
	s.ServiceStats.MaxEntries = l.MaxServices
	s.Backends.MaxEntries = l.MaxBackends
	s.BackendStats.MaxEntries = l.MaxBackends
	s.TenantStats.MaxEntries = l.MaxTenants
	s.Policy.MaxEntries = l.MaxPolicy
	s.Conntrack.MaxEntries = opts.MaxFlows

	c := opts.Config
	hz, err := KernelHZ()
	if err != nil {
		return nil, err
	}
	var tcp, closing, udp, refresh, routeTTL uint64
	for _, l := range []struct {
		d    time.Duration
		into *uint64
	}{{c.CTTCPTimeout, &tcp}, {c.CTTCPClosingTimeout, &closing}, {c.CTUDPTimeout, &udp}, {c.CTRefresh, &refresh}, {c.RouteTTL, &routeTTL}} {
		*l.into = toJiffies(l.d, hz)
		// Stamps are 32-bit jiffies compared modulo 2^32 (bpf/lib/clock.h).
		if *l.into >= maxStampAge {
			return nil, fmt.Errorf("lifetime %v: the fast path's clock measures at most %v at HZ=%d", l.d,
				time.Duration(maxStampAge/hz)*time.Second, hz)
		}
	}
	if refresh >= min(tcp, closing, udp) {
		return nil, fmt.Errorf("conntrack refresh interval %v and timeouts %v, %v, %v are the same number of ticks at HZ=%d: "+
			"the refresh interval must be shorter by a tick (%v)", c.CTRefresh, c.CTTCPTimeout, c.CTTCPClosingTimeout, c.CTUDPTimeout,
			hz, time.Second/time.Duration(hz))
	}
	for _, v := range []struct {
		spec *ebpf.VariableSpec
		val  any
	}{
		{s.CfgCtTcpTimeoutJiffies, tcp},
		{s.CfgCtTcpClosingTimeoutJiffies, closing},
		{s.CfgCtUdpTimeoutJiffies, udp},
		{s.CfgCtRefreshJiffies, refresh},
		{s.CfgRouteTtlJiffies, routeTTL},
		{s.CfgHz, hz},
		{s.CfgHashSeed, c.HashSeed},
		{s.CfgEventMask, c.EventMask},
		{s.CfgEventRate, c.EventRate},
		{s.CfgEventBurst, c.EventBurst},
	} {
		if err := v.spec.Set(v.val); err != nil {
			return nil, fmt.Errorf("set %s: %w", v.spec.Name, err)
		}
	}
	return spec, nil
}

const bpffsMagic = 0xcafe4a11

// ensureBPFFS makes sure dir lies on a bpffs, mounting one at /sys/fs/bpf if needed.
func ensureBPFFS(dir string) error {
	probe := dir
	for {
		if _, err := os.Stat(probe); err == nil {
			break
		}
		parent := filepath.Dir(probe)
		if parent == probe {
			break
		}
		probe = parent
	}
	var st unix.Statfs_t
	if err := unix.Statfs(probe, &st); err == nil && st.Type == bpffsMagic {
		return nil
	}
	const mnt = "/sys/fs/bpf"
	if err := unix.Statfs(mnt, &st); err == nil && st.Type == bpffsMagic {
		if filepath.Clean(dir) == mnt || len(dir) > len(mnt) && dir[:len(mnt)+1] == mnt+"/" {
			return nil
		}
		return fmt.Errorf("pin root %s is not on a bpffs (mount one there, or pin under %s)", dir, mnt)
	}
	if err := unix.Mount("bpf", mnt, "bpf", 0, "mode=0700"); err != nil {
		return fmt.Errorf("mount bpffs at %s: %w", mnt, err)
	}
	return nil
}

// Writer returns the instance's map writer: the only code that writes its maps.
func (d *Dataplane) Writer() *Writer { return d.writer }

// Counters reads the instance's counters, summed over CPUs.
func (d *Dataplane) Counters() (Counters, error) { return readCounters(&d.objs.gatewayMaps) }

// Program returns the fast path's XDP program (for tests and benchmarks that run it
// with BPF_PROG_TEST_RUN).
func (d *Dataplane) Program() *ebpf.Program { return d.objs.XdpGateway }

// Options returns the options the instance was opened with.
func (d *Dataplane) Options() Options { return d.opts }

// Close releases this process's handles. Pinned maps and links stay: attached
// interfaces keep forwarding.
func (d *Dataplane) Close() error {
	d.writer.close()
	return d.objs.Close()
}
