package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/netip"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"go.yaml.in/yaml/v3"

	"github.com/seed4c/moat/attest"
	"github.com/seed4c/moat/controlapi/auth"
	"github.com/seed4c/moat/controlapi/client"
	"github.com/seed4c/moat/controlapi/state"
	"github.com/seed4c/moat/tenant"
)

// Where `moat ctl` looks when neither a flag nor the environment says.
var (
	ctlDefaultServer    = "https://127.0.0.1:9443"
	ctlDefaultTokenFile = "/var/lib/moat/operator.token"
	ctlDefaultCAFile    = "/var/lib/moat/ca.crt"
)

// ctlOptions are the flags every `moat ctl` command shares, and the client they make.
type ctlOptions struct {
	server, token, tokenFile, caFile, output string
	insecure                                 bool
	timeout                                  time.Duration
	c                                        *client.Client
}

func ctlCmd() *cobra.Command {
	o := &ctlOptions{}
	cmd := &cobra.Command{
		Use:   "ctl",
		Short: "Manage a gateway through its REST API: tenants, services, backends, rules, policies, overlay peers, tokens",
		Long: `ctl is the command-line client of the gateway's control API, for operators and tenant
admins. Changes are made with If-Match: an update reads the object, applies the flags and
writes it back only if nobody changed it meanwhile; otherwise it says so and writes nothing.

The server, token and CA come from the flags, else from MOAT_SERVER, MOAT_TOKEN and
MOAT_CA_FILE, else from the gateway's defaults (` + ctlDefaultServer + `,
` + ctlDefaultTokenFile + ` when readable, ` + ctlDefaultCAFile + ` when present).
Commands on a tenant's objects take --tenant (or MOAT_TENANT); a tenant admin may leave it
out. Errors are the API's problem detail after the HTTP status; the exit code is then 1.`,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error { return o.setup(cmd) },
	}
	f := cmd.PersistentFlags()
	f.StringVar(&o.server, "server", ctlDefaultServer, "API base URL (env MOAT_SERVER)")
	f.StringVar(&o.token, "token", "", "bearer token (env MOAT_TOKEN)")
	f.StringVar(&o.tokenFile, "token-file", ctlDefaultTokenFile, "file holding the bearer token (used when readable)")
	f.StringVar(&o.caFile, "ca-file", ctlDefaultCAFile, "PEM CA bundle to check the server's certificate with (env MOAT_CA_FILE; used when present, else the system's roots)")
	f.BoolVar(&o.insecure, "insecure-skip-verify", false, "do not check the server's certificate (anyone on the path can then read the token)")
	f.StringVarP(&o.output, "output", "o", "table", "output format: table, json or yaml")
	f.DurationVar(&o.timeout, "timeout", 30*time.Second, "timeout of each command")
	cmd.AddCommand(
		tenantKind().command(o),
		serviceKind().command(o),
		backendCmd(o),
		ruleKind().command(o),
		policyKind().command(o),
		overlayPeerKind().command(o),
		transitionsCmd(o),
		tokenCmd(o),
		statusCmd(o),
		openapiCmd(o),
	)
	return cmd
}

// setup resolves the shared flags against the environment and makes the client.
func (o *ctlOptions) setup(cmd *cobra.Command) error {
	f := cmd.Flags()
	switch o.output {
	case "table", "json", "yaml":
	default:
		return fmt.Errorf("-o %q: want table, json or yaml", o.output)
	}
	if env := os.Getenv("MOAT_SERVER"); !f.Changed("server") && env != "" {
		o.server = env
	}
	u, err := url.Parse(o.server)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return fmt.Errorf("--server %q: want a URL such as https://gateway:9443", o.server)
	}
	switch env := os.Getenv("MOAT_TOKEN"); {
	case f.Changed("token"):
	case f.Changed("token-file"):
		raw, err := os.ReadFile(o.tokenFile)
		if err != nil {
			return fmt.Errorf("--token-file: %w", err)
		}
		o.token = string(raw)
	case env != "":
		o.token = env
	default:
		if raw, err := os.ReadFile(o.tokenFile); err == nil {
			o.token = string(raw)
		}
	}
	o.token = strings.TrimSpace(o.token)

	ca := o.caFile
	switch env := os.Getenv("MOAT_CA_FILE"); {
	case f.Changed("ca-file"):
	case env != "":
		ca = env
	default:
		if _, err := os.Stat(ca); err != nil {
			ca = "" // the system's roots (ACME)
		}
	}
	if o.insecure {
		if f.Changed("ca-file") {
			return errors.New("give --ca-file or --insecure-skip-verify, not both")
		}
		ca = ""
		fmt.Fprintln(cmd.ErrOrStderr(), "warning: --insecure-skip-verify: the server's certificate is not checked; anyone on the path can impersonate it and read your token")
	}
	if u.Scheme == "http" && o.token != "" && !isLoopback(u.Hostname()) {
		fmt.Fprintf(cmd.ErrOrStderr(), "warning: sending the token to %s over plain http\n", u.Host)
	}
	hc, err := client.NewHTTPClient(client.TLSOptions{CAFile: ca, InsecureSkipVerify: o.insecure})
	if err != nil {
		return err
	}
	o.c = client.New(o.server, o.token, hc)
	o.c.UserAgent = "moat-ctl"
	return nil
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// run gives fn a context bounded by --timeout and the client, and explains errors
// the API's own message does not.
func (o *ctlOptions) run(cmd *cobra.Command, fn func(ctx context.Context, c *client.Client) error) error {
	ctx, cancel := context.WithTimeout(cmd.Context(), o.timeout)
	defer cancel()
	err := fn(ctx, o.c)
	if client.IsUnauthenticated(err) && o.token == "" {
		return fmt.Errorf("%w (no token given: use --token, --token-file or MOAT_TOKEN)", err)
	}
	return err
}

// print writes v as JSON or YAML, or as the table that table writes.
func (o *ctlOptions) print(cmd *cobra.Command, v any, table func(w io.Writer)) error {
	out := cmd.OutOrStdout()
	switch o.output {
	case "json":
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	case "yaml":
		raw, err := toYAML(v)
		if err != nil {
			return err
		}
		_, err = out.Write(raw)
		return err
	}
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	table(tw)
	return tw.Flush()
}

// toYAML writes v as YAML with its JSON field names and order.
func toYAML(v any) ([]byte, error) {
	raw, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(raw, &doc); err != nil {
		return nil, err
	}
	var plain func(n *yaml.Node)
	plain = func(n *yaml.Node) {
		n.Style = 0 // block style, quotes only where needed
		for _, c := range n.Content {
			plain(c)
		}
	}
	plain(&doc)
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(&doc); err != nil {
		return nil, err
	}
	return buf.Bytes(), enc.Close()
}

// decodeFile reads a JSON or YAML object ("-": standard input) strictly into v.
func decodeFile(name string, v any) error {
	var raw []byte
	var err error
	if name == "-" {
		raw, err = io.ReadAll(os.Stdin)
	} else {
		raw, err = os.ReadFile(name)
	}
	if err != nil {
		return err
	}
	var doc any
	if err := yaml.Unmarshal(raw, &doc); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	js, err := json.Marshal(jsonable(doc))
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	return nil
}

// jsonable turns YAML's maps with non-string keys (golden_pcrs: {8: ...}) into JSON's.
func jsonable(v any) any {
	switch v := v.(type) {
	case map[string]any:
		for k, x := range v {
			v[k] = jsonable(x)
		}
		return v
	case map[any]any:
		m := make(map[string]any, len(v))
		for k, x := range v {
			m[fmt.Sprint(k)] = jsonable(x)
		}
		return m
	case []any:
		for i, x := range v {
			v[i] = jsonable(x)
		}
		return v
	}
	return v
}

// Table cells.

func ts(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format(time.RFC3339)
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func num[N uint16 | uint32 | int](n N) string {
	if n == 0 {
		return "-"
	}
	return strconv.Itoa(int(n))
}

func joined[T fmt.Stringer](vs []T) string {
	out := make([]string, len(vs))
	for i, v := range vs {
		out[i] = v.String()
	}
	return dash(strings.Join(out, ","))
}

// Names and scopes.

// where is the tenant (and service) a command works in.
type where struct{ tenant, service string }

// scope is how deep a kind's objects live: in the gateway, a tenant, or a service.
type scope int

const (
	inGateway scope = iota
	inTenant
	inService
)

// scopeFlags adds --tenant (and --service) to a command group and returns how to read
// them; a missing tenant is the token's only tenant when it sees just one.
func (o *ctlOptions) scopeFlags(cmd *cobra.Command, sc scope) func(ctx context.Context) (where, error) {
	var w where
	if sc >= inTenant {
		cmd.PersistentFlags().StringVarP(&w.tenant, "tenant", "t", "", "tenant (env MOAT_TENANT; default: the token's only tenant)")
	}
	if sc >= inService {
		cmd.PersistentFlags().StringVarP(&w.service, "service", "s", "", "service (required)")
	}
	return func(ctx context.Context) (where, error) {
		out := w
		if sc >= inTenant {
			t, err := o.tenant(ctx, w.tenant)
			if err != nil {
				return out, err
			}
			out.tenant = t
		}
		if sc >= inService && out.service == "" {
			return out, errors.New("--service is required")
		}
		return out, nil
	}
}

func (o *ctlOptions) tenant(ctx context.Context, flag string) (string, error) {
	if flag != "" {
		return flag, nil
	}
	if env := os.Getenv("MOAT_TENANT"); env != "" {
		return env, nil
	}
	p, err := o.c.Tenants().Page(ctx, 2, "")
	if err != nil {
		return "", fmt.Errorf("--tenant not given, and listing the tenants failed: %w", err)
	}
	if len(p.Items) != 1 {
		return "", errors.New("--tenant is required (the token sees several tenants)")
	}
	return p.Items[0].Name, nil
}

// same sets *dst to v, refusing a file that names another object.
func same(dst *string, field, v string) error {
	if *dst != "" && *dst != v {
		return fmt.Errorf("the file says %s %q but the command says %q", field, *dst, v)
	}
	*dst = v
	return nil
}

// The generic commands: list, get, create, update, delete.

// kind describes one kind of object: T is what is written, V what is read (they
// differ for backends, which are read with their status).
type kind[T, V any] struct {
	name, plural string
	createVerb   string // "create", or "register" for backends
	scope        scope
	header       string         // table header, tab-separated
	row          func(V) string // table row, tab-separated
	object       func(V) T      // what an update starts from
	version      func(V) uint64
	meta         func(*T) *state.Meta
	nameOf       func(*T) string
	// read decodes a file into v (default: decodeFile, strictly).
	read func(name string, v *T) error
	// place puts the name and scope into v, refusing a file that says otherwise.
	place    func(v *T, w where, name string) error
	defaults func(*T) // before a create's file and flags
	// flags adds the kind's field flags to fs.
	flags func(fs *pflag.FlagSet) *fields[T]
	list  func(ctx context.Context, c *client.Client, w where) ([]V, error)
	get   func(ctx context.Context, c *client.Client, w where, name string) (V, error)
	// add and put are the client's Create and Update methods.
	add func(c *client.Client, ctx context.Context, v T) (V, error)
	put func(c *client.Client, ctx context.Context, v T, version uint64) (V, error)
	del func(ctx context.Context, c *client.Client, w where, name string, version uint64) error
}

func (k kind[T, V]) table(vs ...V) func(w io.Writer) {
	return func(w io.Writer) {
		fmt.Fprintln(w, k.header)
		for _, v := range vs {
			fmt.Fprintln(w, k.row(v))
		}
	}
}

// a is the kind's name with its indefinite article.
func (k kind[T, V]) a() string {
	if strings.ContainsRune("aeiou", rune(k.name[0])) {
		return "an " + k.name
	}
	return "a " + k.name
}

func (k kind[T, V]) readFile(name string, v *T) error {
	if k.read != nil {
		return k.read(name, v)
	}
	return decodeFile(name, v)
}

// command builds the kind's command group.
func (k kind[T, V]) command(o *ctlOptions) *cobra.Command {
	cmd, _ := k.commands(o)
	return cmd
}

// commands builds the kind's command group, and returns how its commands find the
// tenant and service they work in.
func (k kind[T, V]) commands(o *ctlOptions) (*cobra.Command, func(context.Context) (where, error)) {
	group := &cobra.Command{Use: k.name, Aliases: []string{k.plural}, Short: "Manage " + k.plural}
	loc := o.scopeFlags(group, k.scope)
	var file string
	var version uint64

	list := &cobra.Command{
		Use: "list", Aliases: []string{"ls"}, Short: "List " + k.plural, Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return o.run(cmd, func(ctx context.Context, c *client.Client) error {
				w, err := loc(ctx)
				if err != nil {
					return err
				}
				vs, err := k.list(ctx, c, w)
				if err != nil {
					return err
				}
				return o.print(cmd, vs, k.table(vs...))
			})
		},
	}
	get := &cobra.Command{
		Use: "get NAME", Short: "Show " + k.a(), Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return o.run(cmd, func(ctx context.Context, c *client.Client) error {
				w, err := loc(ctx)
				if err != nil {
					return err
				}
				v, err := k.get(ctx, c, w, args[0])
				if err != nil {
					return err
				}
				return o.print(cmd, v, k.table(v))
			})
		},
	}
	create := &cobra.Command{
		Use: k.createVerb + " [NAME] [-f FILE] [flags]", Short: strings.ToUpper(k.createVerb[:1]) + k.createVerb[1:] + " " + k.a() + " from flags and/or a JSON or YAML file",
		Args: cobra.MaximumNArgs(1),
	}
	createFlags := k.flags(create.Flags())
	create.RunE = func(cmd *cobra.Command, args []string) error {
		return o.run(cmd, func(ctx context.Context, c *client.Client) error {
			w, err := loc(ctx)
			if err != nil {
				return err
			}
			var v T
			if k.defaults != nil {
				k.defaults(&v)
			}
			if file != "" {
				if err := k.readFile(file, &v); err != nil {
					return err
				}
			}
			name := k.nameOf(&v)
			if len(args) == 1 {
				name = args[0]
			}
			if name == "" {
				return errors.New("name the " + k.name + " (argument NAME or the file's name)")
			}
			if err := k.place(&v, w, name); err != nil {
				return err
			}
			if err := createFlags.set(&v); err != nil {
				return err
			}
			out, err := k.add(c, ctx, v)
			if err != nil {
				return err
			}
			return o.print(cmd, out, k.table(out))
		})
	}
	update := &cobra.Command{
		Use:   "update NAME [-f FILE] [flags]",
		Short: "Change " + k.a() + ": flags replace the fields they name, -f FILE replaces the whole " + k.name + "; written only if unchanged since read",
		Args:  cobra.ExactArgs(1),
	}
	updateFlags := k.flags(update.Flags())
	update.RunE = func(cmd *cobra.Command, args []string) error {
		return o.run(cmd, func(ctx context.Context, c *client.Client) error {
			if file == "" && !updateFlags.given() {
				return errors.New("nothing to change: give the fields to change as flags, or -f FILE")
			}
			w, err := loc(ctx)
			if err != nil {
				return err
			}
			cur, err := k.get(ctx, c, w, args[0])
			if err != nil {
				return err
			}
			v, base := k.object(cur), k.version(cur)
			if file != "" {
				v = *new(T)
				if err := k.readFile(file, &v); err != nil {
					return err
				}
				if err := k.place(&v, w, args[0]); err != nil {
					return err
				}
				// A file saved by get holds the version it was read at: the change is
				// based on that one.
				if fv := k.meta(&v).Version; fv != 0 {
					base = fv
				}
			}
			if err := updateFlags.set(&v); err != nil {
				return err
			}
			if cmd.Flags().Changed("version") {
				base = version
			}
			out, err := k.put(c, ctx, v, base)
			if client.IsVersionMismatch(err) {
				return fmt.Errorf("%w\n%s %s changed since version %d was read: nothing was written; "+
					"get it again and redo the change if it still applies", err, k.name, args[0], base)
			}
			if err != nil {
				return err
			}
			return o.print(cmd, out, k.table(out))
		})
	}
	for _, c := range []*cobra.Command{create, update} {
		c.Flags().StringVarP(&file, "file", "f", "", "JSON or YAML file with the "+k.name+"'s fields (- for standard input)")
	}
	update.Flags().Uint64Var(&version, "version", 0, "write only if the "+k.name+" is still at this version (ETag) from an earlier get (default: the file's version, else the version just read)")
	del := &cobra.Command{
		Use: "delete NAME", Aliases: []string{"rm"}, Short: "Delete " + k.a(), Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return o.run(cmd, func(ctx context.Context, c *client.Client) error {
				w, err := loc(ctx)
				if err != nil {
					return err
				}
				if err := k.del(ctx, c, w, args[0], version); err != nil {
					return err
				}
				if o.output == "table" {
					fmt.Fprintf(cmd.OutOrStdout(), "%s %s deleted\n", k.name, args[0])
				}
				return nil
			})
		},
	}
	del.Flags().Uint64Var(&version, "version", 0, "delete only if the "+k.name+" is still at this version (default: whatever its version)")
	group.AddCommand(list, get, create, update, del)
	return group, loc
}

// fields are a kind's field flags and how to apply each one given.
type fields[T any] struct {
	fs    *pflag.FlagSet
	names []string
	apply []func(*T) error
}

// on applies fn to the object when flag name was given.
func (f *fields[T]) on(name string, fn func(v *T) error) {
	f.names = append(f.names, name)
	f.apply = append(f.apply, func(v *T) error {
		if !f.fs.Changed(name) {
			return nil
		}
		if err := fn(v); err != nil {
			return fmt.Errorf("--%s: %w", name, err)
		}
		return nil
	})
}

// given reports whether any field flag was given.
func (f *fields[T]) given() bool {
	return slices.ContainsFunc(f.names, f.fs.Changed)
}

func (f *fields[T]) set(v *T) error {
	for _, a := range f.apply {
		if err := a(v); err != nil {
			return err
		}
	}
	return nil
}

// Tenants.

func tenantKind() kind[state.Tenant, state.Tenant] {
	return kind[state.Tenant, state.Tenant]{
		name: "tenant", plural: "tenants", createVerb: "create", scope: inGateway,
		header: "NAME\tATTACHMENTS\tFIB TABLE\tVERSION\tUPDATED",
		row: func(t state.Tenant) string {
			var at []string
			for _, a := range t.Attachments {
				at = append(at, attachmentString(a))
			}
			return strings.Join([]string{t.Name, dash(strings.Join(at, ",")), num(t.FIBTable), strconv.FormatUint(t.Version, 10), ts(t.Updated)}, "\t")
		},
		object:  func(t state.Tenant) state.Tenant { return t },
		version: func(t state.Tenant) uint64 { return t.Version },
		meta:    func(t *state.Tenant) *state.Meta { return &t.Meta },
		nameOf:  func(t *state.Tenant) string { return t.Name },
		place:   func(t *state.Tenant, _ where, name string) error { return same(&t.Name, "name", name) },
		flags: func(fs *pflag.FlagSet) *fields[state.Tenant] {
			var (
				attach []string
				fib    uint32
			)
			fs.StringArrayVar(&attach, "attach", nil, "attachment IFACE or IFACE/VLAN (repeat; replaces the list)")
			fs.Uint32Var(&fib, "fib-table", 0, "routing table for the tenant's traffic")
			ff := &fields[state.Tenant]{fs: fs}
			ff.on("attach", func(t *state.Tenant) error {
				t.Attachments = nil
				for _, s := range attach {
					a, err := parseAttachment(s)
					if err != nil {
						return err
					}
					t.Attachments = append(t.Attachments, a)
				}
				return nil
			})
			ff.on("fib-table", func(t *state.Tenant) error { t.FIBTable = fib; return nil })
			tenantOverlayFlags(fs, ff)
			return ff
		},
		list: func(ctx context.Context, c *client.Client, _ where) ([]state.Tenant, error) {
			return c.ListTenants(ctx)
		},
		get: func(ctx context.Context, c *client.Client, _ where, name string) (state.Tenant, error) {
			return c.GetTenant(ctx, name)
		},
		add: (*client.Client).CreateTenant,
		put: (*client.Client).UpdateTenant,
		del: func(ctx context.Context, c *client.Client, _ where, name string, v uint64) error {
			return c.DeleteTenant(ctx, name, v)
		},
	}
}

func attachmentString(a tenant.Attachment) string {
	if a.VLAN == 0 {
		return a.Interface
	}
	return a.Interface + "/" + strconv.Itoa(int(a.VLAN))
}

func parseAttachment(s string) (tenant.Attachment, error) {
	iface, vlan, tagged := strings.Cut(s, "/")
	a := tenant.Attachment{Interface: iface}
	if iface == "" {
		return a, fmt.Errorf("%q: want IFACE or IFACE/VLAN", s)
	}
	if tagged {
		n, err := strconv.ParseUint(vlan, 10, 12)
		if err != nil || n == 0 || n > 4094 { // 4095 is reserved (802.1Q)
			return a, fmt.Errorf("%q: VLAN %q: want 1 to 4094", s, vlan)
		}
		a.VLAN = uint16(n)
	}
	return a, nil
}

// Services.

func serviceKind() kind[state.Service, state.Service] {
	return kind[state.Service, state.Service]{
		name: "service", plural: "services", createVerb: "create", scope: inTenant,
		header: "NAME\tVIP\tPORT\tPROTOCOL\tMIN TRUST\tMAGLEV\tVERSION",
		row: func(s state.Service) string {
			return strings.Join([]string{s.Name, s.VIP.String(), strconv.Itoa(int(s.Port)), s.Protocol.String(), s.MinTrust.String(),
				num(s.MaglevSize), strconv.FormatUint(s.Version, 10)}, "\t")
		},
		object:   func(s state.Service) state.Service { return s },
		version:  func(s state.Service) uint64 { return s.Version },
		meta:     func(s *state.Service) *state.Meta { return &s.Meta },
		nameOf:   func(s *state.Service) string { return s.Name },
		defaults: func(s *state.Service) { s.Protocol = tenant.TCP },
		place: func(s *state.Service, w where, name string) error {
			return errors.Join(same(&s.Tenant, "tenant", w.tenant), same(&s.Name, "name", name))
		},
		flags: func(fs *pflag.FlagSet) *fields[state.Service] {
			var (
				vip, proto, trust string
				port              uint16
				maglev            uint32
			)
			fs.StringVar(&vip, "vip", "", "virtual IP address")
			fs.Uint16Var(&port, "port", 0, "port")
			fs.StringVar(&proto, "protocol", "tcp", "tcp or udp")
			fs.StringVar(&trust, "min-trust", "none", "least attestation trust a backend needs: none, allow-listed or certified")
			fs.Uint32Var(&maglev, "maglev-size", 0, "Maglev table size (a prime; default: the gateway's)")
			ff := &fields[state.Service]{fs: fs}
			ff.on("vip", func(s *state.Service) (err error) { s.VIP, err = netip.ParseAddr(vip); return err })
			ff.on("port", func(s *state.Service) error { s.Port = port; return nil })
			ff.on("protocol", func(s *state.Service) (err error) { s.Protocol, err = tenant.ParseProtocol(proto); return err })
			ff.on("min-trust", func(s *state.Service) error { return s.MinTrust.UnmarshalText([]byte(trust)) })
			ff.on("maglev-size", func(s *state.Service) error { s.MaglevSize = maglev; return nil })
			return ff
		},
		list: func(ctx context.Context, c *client.Client, w where) ([]state.Service, error) {
			return c.ListServices(ctx, w.tenant)
		},
		get: func(ctx context.Context, c *client.Client, w where, name string) (state.Service, error) {
			return c.GetService(ctx, w.tenant, name)
		},
		add: (*client.Client).CreateService,
		put: (*client.Client).UpdateService,
		del: func(ctx context.Context, c *client.Client, w where, name string, v uint64) error {
			return c.DeleteService(ctx, w.tenant, name, v)
		},
	}
}

// Backends.

func backendKind() kind[state.Backend, client.BackendView] {
	return kind[state.Backend, client.BackendView]{
		name: "backend", plural: "backends", createVerb: "register", scope: inService,
		header: "NAME\tIDENTITY\tADDRESS\tWEIGHT\tPOLICY\tDRAIN\tSTATE\tREASON\tSINCE",
		row: func(b client.BackendView) string {
			addr := b.Addr.String()
			if b.Port != 0 {
				addr = netip.AddrPortFrom(b.Addr, b.Port).String()
			}
			drain := "-"
			if b.Drain {
				drain = "yes"
			}
			return strings.Join([]string{b.Name, b.Identity, addr, strconv.Itoa(int(b.Weight)), b.Policy, drain,
				dash(string(b.Status.State)), dash(b.Status.Reason), ts(b.Status.Since)}, "\t")
		},
		object:  func(b client.BackendView) state.Backend { return b.Backend },
		version: func(b client.BackendView) uint64 { return b.Version },
		meta:    func(b *state.Backend) *state.Meta { return &b.Meta },
		// A backend as get shows it has its subject and status too, which are not written.
		read: func(name string, b *state.Backend) error {
			v := client.BackendView{Backend: *b}
			err := decodeFile(name, &v)
			*b = v.Backend
			return err
		},
		nameOf:   func(b *state.Backend) string { return b.Name },
		defaults: func(b *state.Backend) { b.Weight = 1 },
		place: func(b *state.Backend, w where, name string) error {
			return errors.Join(same(&b.Tenant, "tenant", w.tenant), same(&b.Service, "service", w.service), same(&b.Name, "name", name))
		},
		flags: func(fs *pflag.FlagSet) *fields[state.Backend] {
			var (
				identity, addr, policy, ek, peer string
				port                             uint16
				weight                           uint32
			)
			fs.StringVar(&identity, "identity", "", "the backend host's attestation identity in the tenant")
			fs.StringVar(&addr, "addr", "", "the backend's IP address")
			fs.Uint16Var(&port, "port", 0, "the backend's port (default: the service's)")
			fs.Uint32Var(&weight, "weight", 1, "relative share of new flows")
			fs.StringVar(&policy, "policy", "", "the tenant's attestation policy the host is appraised against")
			fs.StringVar(&ek, "ek-sha256", "", "pin the host's TPM: SHA-256 (hex) of its EK public key (\"\" unpins)")
			fs.StringVar(&peer, "overlay-peer", "", "another site: the overlay peer (gateway) whose VIP --addr is; no identity, policy or EK")
			ff := &fields[state.Backend]{fs: fs}
			ff.on("identity", func(b *state.Backend) error { b.Identity = identity; return nil })
			ff.on("addr", func(b *state.Backend) (err error) { b.Addr, err = netip.ParseAddr(addr); return err })
			ff.on("port", func(b *state.Backend) error { b.Port = port; return nil })
			ff.on("weight", func(b *state.Backend) error { b.Weight = weight; return nil })
			ff.on("policy", func(b *state.Backend) error { b.Policy = policy; return nil })
			ff.on("ek-sha256", func(b *state.Backend) error { b.EKSHA256 = strings.ToLower(ek); return nil })
			ff.on("overlay-peer", func(b *state.Backend) error { b.OverlayPeer = peer; return nil })
			return ff
		},
		list: func(ctx context.Context, c *client.Client, w where) ([]client.BackendView, error) {
			return c.ListBackends(ctx, w.tenant, w.service)
		},
		get: func(ctx context.Context, c *client.Client, w where, name string) (client.BackendView, error) {
			return c.GetBackend(ctx, w.tenant, w.service, name)
		},
		add: (*client.Client).CreateBackend,
		put: (*client.Client).UpdateBackend,
		del: func(ctx context.Context, c *client.Client, w where, name string, v uint64) error {
			return c.DeleteBackend(ctx, w.tenant, w.service, name, v)
		},
	}
}

// backendCmd is the generic backend commands plus drain, undrain and attestations.
func backendCmd(o *ctlOptions) *cobra.Command {
	k := backendKind()
	cmd, loc := k.commands(o)
	for _, drain := range []bool{true, false} {
		use, short := "drain NAME", "Stop new flows to a backend (existing flows continue)"
		if !drain {
			use, short = "undrain NAME", "Let new flows reach a drained backend again"
		}
		cmd.AddCommand(&cobra.Command{
			Use: use, Short: short, Args: cobra.ExactArgs(1),
			RunE: func(cc *cobra.Command, args []string) error {
				return o.run(cc, func(ctx context.Context, c *client.Client) error {
					w, err := loc(ctx)
					if err != nil {
						return err
					}
					var b client.BackendView
					if drain {
						b, err = c.DrainBackend(ctx, w.tenant, w.service, args[0])
					} else {
						b, err = c.UndrainBackend(ctx, w.tenant, w.service, args[0])
					}
					if err != nil {
						return err
					}
					return o.print(cc, b, k.table(b))
				})
			},
		})
	}
	cmd.AddCommand(&cobra.Command{
		Use: "attestations NAME", Short: "A backend host's attestation results, oldest first", Args: cobra.ExactArgs(1),
		RunE: func(cc *cobra.Command, args []string) error {
			return o.run(cc, func(ctx context.Context, c *client.Client) error {
				w, err := loc(ctx)
				if err != nil {
					return err
				}
				rs, err := c.ListAttestations(ctx, w.tenant, w.service, args[0])
				if err != nil {
					return err
				}
				return o.print(cc, rs, func(tw io.Writer) {
					fmt.Fprintln(tw, "SEQ\tISSUED\tSTATUS\tTRUST\tEXPIRES\tPOLICY\tREASONS")
					for _, r := range rs {
						fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\n", r.Seq, ts(r.Result.Issued), r.Result.Status, r.Result.TrustLevel,
							ts(r.Result.Expires), dash(r.Result.Policy), dash(strings.Join(r.Result.Reasons, "; ")))
					}
				})
			})
		},
	})
	return cmd
}

// Rules.

func ruleKind() kind[state.Rule, state.Rule] {
	return kind[state.Rule, state.Rule]{
		name: "rule", plural: "rules", createVerb: "create", scope: inTenant,
		header: "NAME\tSOURCES\tSERVICES\tVERSION",
		row: func(r state.Rule) string {
			return strings.Join([]string{r.Name, joined(r.Sources), dash(strings.Join(r.Services, ",")), strconv.FormatUint(r.Version, 10)}, "\t")
		},
		object:  func(r state.Rule) state.Rule { return r },
		version: func(r state.Rule) uint64 { return r.Version },
		meta:    func(r *state.Rule) *state.Meta { return &r.Meta },
		nameOf:  func(r *state.Rule) string { return r.Name },
		place: func(r *state.Rule, w where, name string) error {
			return errors.Join(same(&r.Tenant, "tenant", w.tenant), same(&r.Name, "name", name))
		},
		flags: func(fs *pflag.FlagSet) *fields[state.Rule] {
			var sources, services []string
			fs.StringArrayVar(&sources, "source", nil, "source prefix allowed, such as 10.0.0.0/24 (repeat; replaces the list)")
			fs.StringArrayVar(&services, "service", nil, "service the sources may reach, * for all (repeat; replaces the list)")
			ff := &fields[state.Rule]{fs: fs}
			ff.on("source", func(r *state.Rule) error {
				r.Sources = nil
				for _, s := range sources {
					p, err := netip.ParsePrefix(s)
					if err != nil {
						return err
					}
					r.Sources = append(r.Sources, p)
				}
				return nil
			})
			ff.on("service", func(r *state.Rule) error { r.Services = slices.Clone(services); return nil })
			return ff
		},
		list: func(ctx context.Context, c *client.Client, w where) ([]state.Rule, error) {
			return c.ListRules(ctx, w.tenant)
		},
		get: func(ctx context.Context, c *client.Client, w where, name string) (state.Rule, error) {
			return c.GetRule(ctx, w.tenant, name)
		},
		add: (*client.Client).CreateRule,
		put: (*client.Client).UpdateRule,
		del: func(ctx context.Context, c *client.Client, w where, name string, v uint64) error {
			return c.DeleteRule(ctx, w.tenant, name, v)
		},
	}
}

// Policies.

func policyKind() kind[state.Policy, state.Policy] {
	return kind[state.Policy, state.Policy]{
		name: "policy", plural: "policies", createVerb: "create", scope: inTenant,
		header: "NAME\tPCR\tFILES\tGOLDEN PCRS\tALLOWED EKS\tVERSION",
		row: func(p state.Policy) string {
			files := slices.Sorted(maps.Keys(p.References))
			pcr := p.MeasurementPCR
			if pcr == 0 {
				pcr = attest.DefaultMeasurementPCR
			}
			var golden []string
			for _, n := range slices.Sorted(maps.Keys(p.GoldenPCRs)) {
				golden = append(golden, strconv.Itoa(n))
			}
			return strings.Join([]string{p.Name, strconv.Itoa(pcr), dash(strings.Join(files, ",")), dash(strings.Join(golden, ",")),
				strconv.Itoa(len(p.AllowedEKs)), strconv.FormatUint(p.Version, 10)}, "\t")
		},
		object:  func(p state.Policy) state.Policy { return p },
		version: func(p state.Policy) uint64 { return p.Version },
		meta:    func(p *state.Policy) *state.Meta { return &p.Meta },
		nameOf:  func(p *state.Policy) string { return p.Name },
		place: func(p *state.Policy, w where, name string) error {
			return errors.Join(same(&p.Tenant, "tenant", w.tenant), same(&p.Name, "name", name))
		},
		flags: policyFlags,
		list: func(ctx context.Context, c *client.Client, w where) ([]state.Policy, error) {
			return c.ListPolicies(ctx, w.tenant)
		},
		get: func(ctx context.Context, c *client.Client, w where, name string) (state.Policy, error) {
			return c.GetPolicy(ctx, w.tenant, name)
		},
		add: (*client.Client).CreatePolicy,
		put: (*client.Client).UpdatePolicy,
		del: func(ctx context.Context, c *client.Client, w where, name string, v uint64) error {
			return c.DeletePolicy(ctx, w.tenant, name, v)
		},
	}
}

func policyFlags(fs *pflag.FlagSet) *fields[state.Policy] {
	var (
		refs, measure, removeRefs, golden, eks []string
		pcr                                    int
		pcrs                                   []int
	)
	fs.StringArrayVar(&refs, "reference", nil, "PATH=DIGEST[,DIGEST]: the SHA-256 digests (hex) measured file PATH may have (repeat; replaces PATH's digests)")
	fs.StringArrayVar(&measure, "measure", nil, "PATH[=LOCALFILE]: add the SHA-256 of LOCALFILE (default PATH itself) as a digest PATH may have (repeat)")
	fs.StringArrayVar(&removeRefs, "remove-reference", nil, "PATH: no longer measure PATH (repeat)")
	fs.IntVar(&pcr, "measurement-pcr", 0, "PCR the agent's measurement log extends (8..23; default 15)")
	fs.IntSliceVar(&pcrs, "pcrs", nil, "the exact PCR set quoted, such as 8,15 (default: the measurement PCR)")
	fs.StringArrayVar(&golden, "golden-pcr", nil, "N=HEX[,HEX]: the values PCR N may hold (repeat; replaces N's values)")
	fs.StringArrayVar(&eks, "allowed-ek", nil, "SHA-256 (hex) of an EK accepted without a manufacturer certificate (repeat; replaces the list)")
	// The digests given for a path replace the path's digests: --reference and
	// --measure of one path accumulate on the command line.
	refFlags := map[string][]string{}
	addRef := func(path, digest string) {
		if !slices.Contains(refFlags[path], digest) {
			refFlags[path] = append(refFlags[path], digest)
		}
	}
	ff := &fields[state.Policy]{fs: fs}
	ff.on("remove-reference", func(p *state.Policy) error {
		for _, path := range removeRefs {
			if _, ok := p.References[path]; !ok {
				return fmt.Errorf("policy %s has no reference for %s", p.Name, path)
			}
			delete(p.References, path)
		}
		return nil
	})
	ff.on("reference", func(*state.Policy) error {
		for _, s := range refs {
			path, digests, ok := strings.Cut(s, "=")
			if !ok || path == "" || digests == "" {
				return fmt.Errorf("%q: want PATH=DIGEST[,DIGEST]", s)
			}
			for d := range strings.SplitSeq(digests, ",") {
				addRef(path, strings.ToLower(d))
			}
		}
		return nil
	})
	ff.on("measure", func(*state.Policy) error {
		for _, s := range measure {
			path, local, ok := strings.Cut(s, "=")
			if !ok {
				local = path
			}
			d, err := sha256File(local)
			if err != nil {
				return err
			}
			addRef(path, d)
		}
		return nil
	})
	// Applied after --reference and --measure have collected the digests.
	setRefs := func(p *state.Policy) error {
		if p.References == nil {
			p.References = map[string][]string{}
		}
		for path, ds := range refFlags {
			p.References[path] = ds
		}
		clear(refFlags)
		return nil
	}
	ff.on("reference", setRefs)
	ff.on("measure", setRefs)
	ff.on("measurement-pcr", func(p *state.Policy) error { p.MeasurementPCR = pcr; return nil })
	ff.on("pcrs", func(p *state.Policy) error { p.PCRs = slices.Clone(pcrs); return nil })
	ff.on("golden-pcr", func(p *state.Policy) error {
		done := map[int]bool{}
		for _, s := range golden {
			n, values, ok := strings.Cut(s, "=")
			i, err := strconv.Atoi(n)
			if !ok || err != nil || values == "" {
				return fmt.Errorf("%q: want N=HEX[,HEX]", s)
			}
			if p.GoldenPCRs == nil {
				p.GoldenPCRs = map[int][]string{}
			}
			if !done[i] {
				done[i] = true
				p.GoldenPCRs[i] = nil
			}
			for v := range strings.SplitSeq(values, ",") {
				p.GoldenPCRs[i] = append(p.GoldenPCRs[i], strings.ToLower(v))
			}
		}
		return nil
	})
	ff.on("allowed-ek", func(p *state.Policy) error {
		p.AllowedEKs = nil
		for _, e := range eks {
			p.AllowedEKs = append(p.AllowedEKs, strings.ToLower(e))
		}
		return nil
	})
	return ff
}

// sha256File is the hex SHA-256 of a file's content: the reference value the agent
// measures it as.
func sha256File(name string) (string, error) {
	f, err := os.Open(name)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("%s: %w", name, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// Transitions, tokens, status.

func transitionsCmd(o *ctlOptions) *cobra.Command {
	var tenantName string
	cmd := &cobra.Command{
		Use:   "transitions [--tenant T]",
		Short: "Backend state transitions, oldest first: one tenant's, or every tenant's",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return o.run(cmd, func(ctx context.Context, c *client.Client) error {
				trs, err := c.ListTransitions(ctx, tenantName)
				if client.IsForbidden(err) && tenantName == "" {
					return fmt.Errorf("%w (a tenant admin lists its tenant's with --tenant)", err)
				}
				if err != nil {
					return err
				}
				return o.print(cmd, trs, func(w io.Writer) {
					fmt.Fprintln(w, "SEQ\tTIME\tTENANT\tSERVICE\tBACKEND\tFROM\tTO\tREASON")
					for _, t := range trs {
						fmt.Fprintf(w, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", t.Seq, ts(t.Time), t.Tenant, t.Service, t.Backend,
							dash(string(t.From)), t.To, dash(t.Reason))
					}
				})
			})
		},
	}
	cmd.Flags().StringVarP(&tenantName, "tenant", "t", "", "only this tenant's (default: every tenant's; operators and auditors only)")
	return cmd
}

func tokenTable(toks ...auth.Token) func(w io.Writer) {
	return func(w io.Writer) {
		fmt.Fprintln(w, "ID\tNAME\tROLE\tTENANT\tCREATED")
		for _, t := range toks {
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", t.ID, t.Name, t.Role, dash(t.Tenant), ts(t.Created))
		}
	}
}

func tokenCmd(o *ctlOptions) *cobra.Command {
	cmd := &cobra.Command{Use: "token", Aliases: []string{"tokens"}, Short: "Manage API tokens (operators only)"}
	list := &cobra.Command{
		Use: "list", Aliases: []string{"ls"}, Short: "List tokens (never their secrets)", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return o.run(cmd, func(ctx context.Context, c *client.Client) error {
				toks, err := c.ListTokens(ctx)
				if err != nil {
					return err
				}
				return o.print(cmd, toks, tokenTable(toks...))
			})
		},
	}
	var role, tenantName string
	create := &cobra.Command{
		Use:   "create NAME --role operator|tenant-admin|auditor [--tenant T]",
		Short: "Create a token and print its secret, which cannot be read again",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			r, err := auth.ParseRole(role)
			if err != nil {
				return fmt.Errorf("--role: %w", err)
			}
			return o.run(cmd, func(ctx context.Context, c *client.Client) error {
				nt, err := c.CreateToken(ctx, client.TokenRequest{Name: args[0], Role: r, Tenant: tenantName})
				if err != nil {
					return err
				}
				return o.print(cmd, nt, func(w io.Writer) {
					tokenTable(nt.Token)(w)
					fmt.Fprintf(w, "\nsecret (shown this once; store it now):\n%s\n", nt.Secret)
				})
			})
		},
	}
	create.Flags().StringVar(&role, "role", "", "operator, tenant-admin or auditor")
	create.Flags().StringVarP(&tenantName, "tenant", "t", "", "the tenant of a tenant-admin token")
	_ = create.MarkFlagRequired("role")
	revoke := &cobra.Command{
		Use: "revoke ID", Aliases: []string{"delete", "rm"}, Short: "Revoke a token", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return o.run(cmd, func(ctx context.Context, c *client.Client) error {
				if err := c.DeleteToken(ctx, args[0]); err != nil {
					return err
				}
				if o.output == "table" {
					fmt.Fprintf(cmd.OutOrStdout(), "token %s revoked\n", args[0])
				}
				return nil
			})
		},
	}
	cmd.AddCommand(list, create, revoke)
	return cmd
}

func statusCmd(o *ctlOptions) *cobra.Command {
	return &cobra.Command{
		Use: "status", Short: "The gateway's status (a tenant admin sees its tenant only)", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return o.run(cmd, func(ctx context.Context, c *client.Client) error {
				st, err := c.Status(ctx)
				if err != nil {
					return err
				}
				return o.print(cmd, st, func(w io.Writer) {
					fmt.Fprintln(w, "KEY\tVALUE")
					flatten(w, "", st)
				})
			})
		},
	}
}

// flatten writes a JSON object as sorted dotted keys and values.
func flatten(w io.Writer, prefix string, v any) {
	switch v := v.(type) {
	case map[string]any:
		for _, k := range slices.Sorted(maps.Keys(v)) {
			key := k
			if prefix != "" {
				key = prefix + "." + k
			}
			flatten(w, key, v[k])
		}
	case nil:
		fmt.Fprintf(w, "%s\t-\n", prefix)
	case string, float64, bool:
		fmt.Fprintf(w, "%s\t%v\n", prefix, v)
	default:
		raw, _ := json.Marshal(v)
		fmt.Fprintf(w, "%s\t%s\n", prefix, raw)
	}
}

func openapiCmd(o *ctlOptions) *cobra.Command {
	return &cobra.Command{
		Use: "openapi", Short: "Print the API's OpenAPI 3 document (JSON, or YAML with -o yaml)", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return o.run(cmd, func(ctx context.Context, c *client.Client) error {
				doc, err := c.OpenAPI(ctx)
				if err != nil {
					return err
				}
				if o.output == "yaml" {
					return o.print(cmd, doc, nil)
				}
				var buf bytes.Buffer
				if err := json.Indent(&buf, doc, "", "  "); err != nil {
					return err
				}
				buf.WriteByte('\n')
				_, err = cmd.OutOrStdout().Write(buf.Bytes())
				return err
			})
		},
	}
}
