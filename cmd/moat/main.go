// Command moat is the gateway appliance's one binary: the demo, the fast path's
// operator commands, and (as they land) the gateway daemon, the backend agent, the
// control client and the benchmarks.
package main

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/seed4c/moat/attest/agent"
	"github.com/seed4c/moat/attest/tpm"
	"github.com/seed4c/moat/bench"
	"github.com/seed4c/moat/controlapi/certs"
	"github.com/seed4c/moat/controlapi/gateway"
	"github.com/seed4c/moat/dataplane"
	"github.com/seed4c/moat/dataplane/overlay"
	"github.com/seed4c/moat/internal/demo"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	root := &cobra.Command{
		Use:           "moat",
		Short:         "moat: network isolation gateway and attestation-gated load balancer",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(demoCmd(), dataplaneCmd(), agentCmd(), benchCmd(), gatewayCmd(), ctlCmd())
	if err := root.ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "moat:", err)
		os.Exit(1)
	}
}

func demoCmd() *cobra.Command {
	var o demo.RunOptions
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Run a whole gateway scene in network namespaces: daemon, attested backends, traffic, attacks",
		Long: `demo builds a gateway and two tenants that use the same client prefix, the same VIP and
the same backend addresses; runs ` + "`moat gateway`" + ` in the gateway's namespace and ` + "`moat agent`" + `
with a simulated TPM on every backend host; registers the backends through the REST
API (one host's application tampered with); sends real traffic; attacks one tenant from
the other; balances over a remote host reached only through the attested WireGuard
overlay (the gateway runs with its own simulated SE) and evicts it when its state
changes; changes a local host's application mid-run; prints the state as it goes, and
removes everything it created on exit or Ctrl-C. It needs root.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return demo.Run(cmd.Context(), cmd.OutOrStdout(), o)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.Instance, "instance", "demo", "fast path instance name (pins under /sys/fs/bpf/moat/<instance>)")
	f.IntVar(&o.Backends, "backends", 3, "backend hosts per tenant")
	f.IntVar(&o.Connections, "connections", 30, "connections per tenant in each step")
	f.BoolVar(&o.Hold, "hold", false, "keep the scene up after the steps, until Ctrl-C")
	f.BoolVar(&o.NoOverlay, "no-overlay", false, "leave out the remote host and the WireGuard overlay")
	return cmd
}

func dataplaneCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "dataplane", Short: "Inspect and manage fast path instances"}
	var (
		pinRoot string
		asJSON  bool
	)
	status := &cobra.Command{
		Use:   "status --instance NAME",
		Short: "Print a running instance's interfaces, entries and counters, read from its pins",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			opts := instanceOptions(cmd, pinRoot)
			st, err := dataplane.ReadStatus(opts)
			if errors.Is(err, dataplane.ErrNoInstance) {
				return fmt.Errorf("%w (is it running? pins are under %s)", err, opts.PinDir())
			}
			if err != nil {
				return err
			}
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(st)
			}
			return demo.PrintStatus(cmd.OutOrStdout(), st, nil)
		},
	}
	status.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	remove := &cobra.Command{
		Use:   "remove --instance NAME",
		Short: "Detach an instance from every interface and delete its pins",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			opts := instanceOptions(cmd, pinRoot)
			return dataplane.Remove(opts)
		},
	}
	flush := &cobra.Command{
		Use:   "flush-conntrack --instance NAME",
		Short: "Delete every tracked flow of a running instance: each flow's next packet is balanced again",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			opts := instanceOptions(cmd, pinRoot)
			n, err := dataplane.FlushPinnedConntrack(opts)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "deleted %d conntrack entries (two per flow)\n", n)
			return nil
		},
	}
	for _, c := range []*cobra.Command{status, remove, flush} {
		c.Flags().String("instance", "", "instance name")
		_ = c.MarkFlagRequired("instance")
		c.Flags().StringVar(&pinRoot, "pin-root", dataplane.DefaultPinRoot, "bpffs directory holding the instances")
	}
	cmd.AddCommand(status, remove, flush)
	return cmd
}

// instanceOptions are the options naming the instance of a dataplane subcommand's
// --instance flag under pinRoot.
func instanceOptions(cmd *cobra.Command, pinRoot string) dataplane.Options {
	name, _ := cmd.Flags().GetString("instance")
	opts := dataplane.DefaultOptions(name)
	opts.PinRoot = pinRoot
	return opts
}

func agentCmd() *cobra.Command {
	var (
		cfg                  agent.Config
		wgKey, overlayConfig string
		printOverlay         bool
	)
	cmd := &cobra.Command{
		Use:   "agent --verifier URL --identity ID --measure FILE... (--overlay FILE | --wireguard-key KEY)",
		Short: "Run the attestation agent on a backend host: measure, enroll, attest continuously",
		Long: `agent holds the host's TPM, measures the backend application's files into a PCR,
enrolls with the gateway's verifier and sends fresh TPM quotes every interval over
HTTPS with mutual TLS (attest/README.md describes the protocol).

With --overlay it also joins the WireGuard overlay with its gateways (dataplane/overlay):
its WireGuard key, sealed by its TPM, is the one its quotes bind, and it runs the
verifier its gateways attest to, configuring each only while that passes.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if printOverlay {
				fmt.Fprint(cmd.OutOrStdout(), overlay.HostExample)
				return nil
			}
			for _, name := range []string{"verifier", "identity", "measure"} {
				if !cmd.Flags().Changed(name) {
					return fmt.Errorf("--%s is required", name)
				}
			}
			switch {
			case overlayConfig == "" && wgKey == "":
				return errors.New("give --overlay FILE (the host joins the overlay) or --wireguard-key KEY")
			case overlayConfig != "" && wgKey != "":
				return errors.New("give --overlay or --wireguard-key, not both: the overlay's key is the one bound")
			case overlayConfig != "":
				hc, err := overlay.LoadHostConfig(overlayConfig)
				if err != nil {
					return fmt.Errorf("--overlay: %w", err)
				}
				cfg.Overlay = &overlay.Host{Config: hc, StateDir: cfg.StateDir, Ephemeral: cfg.SE.Kind == tpm.KindSimulator}
			default:
				key, err := base64.StdEncoding.DecodeString(wgKey)
				if err != nil {
					return fmt.Errorf("--wireguard-key: %w", err)
				}
				cfg.WireGuardKey = key
			}
			log := slog.New(slog.NewTextHandler(os.Stderr, nil))
			return agent.Run(cmd.Context(), cfg, log)
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.VerifierURL, "verifier", "", "verifier base URL (https://gateway:port/attest)")
	f.StringVar(&cfg.VerifierCAFile, "verifier-ca", "", "PEM CA bundle for the verifier's certificate (default: system roots)")
	f.StringVar(&cfg.Identity, "identity", "", "backend identity registered at the gateway")
	f.StringArrayVar(&cfg.Measure, "measure", nil, "file to measure (repeat: application binary, configuration)")
	f.StringVar(&wgKey, "wireguard-key", "", "WireGuard public key (base64) bound into every quote, when the host is not in the overlay")
	f.StringVar(&overlayConfig, "overlay", "", "join the WireGuard overlay as configured in this YAML file (--print-overlay shows one)")
	f.BoolVar(&printOverlay, "print-overlay", false, "print a commented overlay configuration and exit")
	f.IntVar(&cfg.PCR, "pcr", 15, "measurement PCR (8..23; 15 cannot be reset before reboot)")
	f.DurationVar(&cfg.Interval, "interval", agent.DefaultInterval, "attestation interval")
	f.StringVar((*string)(&cfg.SE.Kind), "se", string(tpm.KindDevice), "TPM kind: device, swtpm, simulator (demo only)")
	f.StringVar(&cfg.SE.Path, "se-path", "", "device path (default /dev/tpmrm0) or swtpm socket (unix:/path or host:port)")
	f.StringVar((*string)(&cfg.SE.EKAlgorithm), "ek-algorithm", string(tpm.EKECC), "endorsement key: ecc or rsa")
	f.StringVar(&cfg.EKCertFile, "ek-cert", "", "EK certificate file, overriding the TPM's NV copy")
	f.StringVar(&cfg.StateDir, "state-dir", agent.DefaultStateDir, "directory for the TLS key and the measurement log")
	f.StringVar(&cfg.TLSKeyFile, "tls-key", "", "TLS client key (PKCS#8 PEM, created if missing; default STATE-DIR/tls.key)")
	f.StringVar(&cfg.StatusAddr, "status-addr", agent.DefaultStatusAddr, "local status endpoint (GET /status); empty disables")
	return cmd
}

func benchCmd() *cobra.Command {
	var (
		profile, out       string
		systems, scenarios []string
		cpuProfile         bool
	)
	cmd := &cobra.Command{
		Use:   "bench [--profile quick|full] [--out DIR]",
		Short: "Measure moat against plain XDP forwarding, nftables and HAProxy in network namespaces",
		Long: `bench builds the reference scene in network namespaces, measures moat and its baselines
in the same run (packet rates with an XDP live-frames generator, real TCP for connections,
throughput and latency), with the load on CPU 0 and the system under test on CPU 1, writes
report.json, report.md and SVG plots into --out, and removes everything it created. It
needs root and two CPUs; it installs HAProxy from Debian when missing.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			p, ok := bench.Profiles[profile]
			if !ok {
				return fmt.Errorf("--profile %q: want quick, full or smoke", profile)
			}
			o := bench.Options{Profile: p, Systems: systems, Scenarios: scenarios, CPUProfile: cpuProfile,
				Progress: os.Stderr, Command: "moat " + strings.Join(os.Args[1:], " ")}
			rep, err := bench.Run(cmd.Context(), o)
			if rep != nil {
				rep.SortRecords()
				if files, werr := bench.WriteFiles(rep, out); werr != nil {
					err = errors.Join(err, werr)
				} else {
					fmt.Fprintf(cmd.OutOrStdout(), "moat bench: report in %s (%s)\n", out, strings.Join(files, ", "))
					err = errors.Join(err, rep.WriteTargetSummary(cmd.OutOrStdout()))
				}
			}
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&profile, "profile", "quick", "quick (under 5 minutes), full (long) or smoke (seconds)")
	f.StringVar(&out, "out", "bench/results/latest", "directory for the report")
	f.StringSliceVar(&systems, "systems", nil, "systems to measure (default all): "+strings.Join(bench.AllSystems, ", "))
	f.StringSliceVar(&scenarios, "scenarios", nil, "scenarios to measure (default all): "+strings.Join(bench.AllScenarios, ", "))
	cmd.AddCommand(&cobra.Command{
		Use:   "render DIR...",
		Short: "Write report.md and the plots of bench output directories again from their report.json",
		Long: `render rewrites report.md and the SVG plots of each directory from its report.json, as
the run that measured it would write them with this version of moat, and removes plots the
report has no data for. Nothing is measured.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, dirs []string) error {
			var errs []error
			for _, dir := range dirs {
				files, err := bench.Render(dir)
				if err != nil {
					errs = append(errs, fmt.Errorf("render %s: %w", dir, err))
					continue
				}
				fmt.Fprintf(cmd.OutOrStdout(), "%s: %s\n", dir, strings.Join(files, ", "))
			}
			return errors.Join(errs...)
		},
	})
	f.BoolVar(&cpuProfile, "perf", false, "sample the system-under-test core with perf during a separate burst of each packet scenario (first repetition) and report where its time went, by part of the path (needs perf: apt-get install linux-perf)")
	return cmd
}

func gatewayCmd() *cobra.Command {
	var (
		path  string
		print bool
	)
	var printCA bool
	cmd := &cobra.Command{
		Use:   "gateway [--config FILE]",
		Short: "Run the gateway daemon: fast path, REST API, verifier for backend agents",
		Long: `gateway attaches the fast path to the configured interfaces, serves the REST API
over HTTPS and the attestation verifier for backend agents, keeps its state in bbolt, and
admits a backend only while its attestation holds. SIGTERM or Ctrl-C stops it gracefully;
the fast path keeps forwarding on its pins until the next start takes over.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if print {
				fmt.Fprint(cmd.OutOrStdout(), gateway.Example)
				return nil
			}
			cfg, err := gateway.LoadConfig(path)
			if err != nil {
				return fmt.Errorf("%w (moat gateway --print-config shows a commented example)", err)
			}
			if printCA {
				if cfg.TLS.Mode != certs.ModeInternal {
					return fmt.Errorf("tls.mode is %s: clients trust the ACME CA's roots; there is no internal CA to print", cfg.TLS.Mode)
				}
				ca, err := certs.ReadCA(cfg.StateDir)
				if err == nil {
					_, err = cmd.OutOrStdout().Write(ca)
				}
				return err
			}
			return gateway.Run(cmd.Context(), cfg, newLogger(cfg.Log.Level, cfg.Log.Format))
		},
	}
	cmd.Flags().StringVar(&path, "config", gateway.DefaultConfigPath, "configuration file (YAML)")
	cmd.Flags().BoolVar(&print, "print-config", false, "print a commented configuration with the defaults and exit")
	cmd.Flags().BoolVar(&printCA, "print-ca", false, "print the internal CA certificate (PEM) clients trust, from the configuration's state_dir, and exit")
	return cmd
}

func newLogger(level, format string) *slog.Logger {
	var l slog.Level
	_ = l.UnmarshalText([]byte(level))
	opts := &slog.HandlerOptions{Level: l}
	if format == "json" {
		return slog.New(slog.NewJSONHandler(os.Stderr, opts))
	}
	return slog.New(slog.NewTextHandler(os.Stderr, opts))
}
