package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"

	"github.com/seed4c/moat/attest"
	"github.com/seed4c/moat/controlapi/client/clienttest"
	"github.com/seed4c/moat/controlapi/state"
)

// ctlEnv runs `moat ctl` in-process against a real API.
type ctlEnv struct {
	*clienttest.Env
	t *testing.T
}

func newCtlEnv(t *testing.T) *ctlEnv {
	for _, v := range []string{"MOAT_SERVER", "MOAT_TOKEN", "MOAT_CA_FILE", "MOAT_TENANT"} {
		t.Setenv(v, "")
	}
	// Whatever this machine has in /var/lib/moat is not the test's.
	for p, v := range map[*string]string{&ctlDefaultTokenFile: filepath.Join(t.TempDir(), "none.token"), &ctlDefaultCAFile: filepath.Join(t.TempDir(), "none.crt")} {
		old := *p
		*p = v
		t.Cleanup(func() { *p = old })
	}
	return &ctlEnv{Env: clienttest.New(t), t: t}
}

// run runs `moat ctl ARGS` as caller ("" for no connection flags at all) and returns
// its standard output and error streams and its error.
func (e *ctlEnv) run(caller string, args ...string) (string, string, error) {
	e.t.Helper()
	root := &cobra.Command{Use: "moat", SilenceUsage: true, SilenceErrors: true}
	root.AddCommand(ctlCmd())
	full := []string{"ctl"}
	if caller != "" {
		full = append(full, "--server", e.URL, "--ca-file", e.CAFile, "--token", e.Tokens[caller])
	}
	root.SetArgs(append(full, args...))
	var out, errs bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&errs)
	err := root.ExecuteContext(e.t.Context())
	e.t.Logf("$ moat ctl %s  # as %s\n%s%s", strings.Join(args, " "), caller, out.String(), errs.String())
	if err != nil {
		e.t.Logf("moat: %v", err)
	}
	return out.String(), errs.String(), err
}

// ok runs a command that must succeed and returns its output.
func (e *ctlEnv) ok(caller string, args ...string) string {
	e.t.Helper()
	out, _, err := e.run(caller, args...)
	if err != nil {
		e.t.Fatalf("moat ctl %s: %v", strings.Join(args, " "), err)
	}
	return out
}

// fails runs a command that must fail and returns its error message.
func (e *ctlEnv) fails(caller string, args ...string) string {
	e.t.Helper()
	_, _, err := e.run(caller, args...)
	if err == nil {
		e.t.Fatalf("moat ctl %s succeeded", strings.Join(args, " "))
	}
	return err.Error()
}

// lines splits a table into its rows of fields.
func lines(out string) [][]string {
	var rows [][]string
	for l := range strings.SplitSeq(strings.TrimRight(out, "\n"), "\n") {
		rows = append(rows, regexp.MustCompile(`\s{2,}`).Split(strings.TrimSpace(l), -1))
	}
	return rows
}

func wantRows(t *testing.T, out string, want ...string) {
	t.Helper()
	got := strings.Split(strings.TrimRight(out, "\n"), "\n")
	for i := range got {
		got[i] = strings.Join(strings.Fields(got[i]), " ")
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("table:\n%s\nwant (spacing aside):\n%s", out, strings.Join(want, "\n"))
	}
}

func TestCtlTenantLifecycle(t *testing.T) {
	e := newCtlEnv(t)
	out := e.ok("operator", "tenant", "create", "c", "--attach", "eth2", "--attach", "eth3/7")
	rows := lines(out)
	if strings.Join(rows[0], "|") != "NAME|ATTACHMENTS|FIB TABLE|VERSION|UPDATED" ||
		strings.Join(rows[1][:4], "|") != "c|eth2,eth3/7|-|1" {
		t.Fatalf("create:\n%s", out)
	}
	var tn state.Tenant
	if err := json.Unmarshal([]byte(e.ok("operator", "-o", "json", "tenant", "get", "c")), &tn); err != nil || tn.Version != 1 || tn.Attachments[1].VLAN != 7 {
		t.Fatalf("get -o json: %+v %v", tn, err)
	}
	if y := e.ok("operator", "-o", "yaml", "tenant", "get", "c"); !strings.HasPrefix(y, "name: c\nattachments:\n  - interface: eth2\n  - interface: eth3\n    vlan: 7\nversion: 1\n") {
		t.Fatalf("get -o yaml:\n%s", y)
	}
	// a and b were created by the set-up, maybe in an earlier second than c.
	updated := map[string]string{"c": ts(tn.Updated)}
	for _, name := range []string{"a", "b"} {
		var other state.Tenant
		if err := json.Unmarshal([]byte(e.ok("operator", "-o", "json", "tenant", "get", name)), &other); err != nil {
			t.Fatalf("get -o json %s: %v", name, err)
		}
		updated[name] = ts(other.Updated)
	}
	wantRows(t, e.ok("operator", "tenant", "list"), "NAME ATTACHMENTS FIB TABLE VERSION UPDATED",
		"a eth0 - 1 "+updated["a"], "b eth1 - 1 "+updated["b"], "c eth2,eth3/7 - 1 "+updated["c"])

	// An update reads, changes what the flags say, and writes with the version read.
	out = e.ok("operator", "tenant", "update", "c", "--fib-table", "5")
	if r := lines(out)[1]; strings.Join(r[:4], "|") != "c|eth2,eth3/7|5|2" {
		t.Fatalf("update:\n%s", out)
	}
	// Based on a version someone else has since changed: refused, nothing written.
	msg := e.fails("operator", "tenant", "update", "c", "--fib-table", "6", "--version", "1")
	if !strings.HasPrefix(msg, "412 Precondition Failed: tenant c is at version 2, not 1: version mismatch\n") ||
		!strings.Contains(msg, "tenant c changed since version 1 was read: nothing was written") {
		t.Fatalf("conflict: %s", msg)
	}
	if r := lines(e.ok("operator", "tenant", "get", "c"))[1]; r[2] != "5" || r[3] != "2" {
		t.Fatalf("after the conflict: %v", r)
	}
	if msg := e.fails("operator", "tenant", "update", "c"); !strings.Contains(msg, "nothing to change") {
		t.Fatalf("empty update: %s", msg)
	}
	if msg := e.fails("admin-a", "tenant", "update", "a", "--fib-table", "3"); msg != "403 Forbidden: role tenant-admin may not change this" {
		t.Fatalf("tenant admin updating its tenant: %s", msg)
	}
	if msg := e.fails("operator", "tenant", "delete", "a"); msg != "409 Conflict: tenant a has 1 services: delete them first: in use" {
		t.Fatalf("delete a tenant in use: %s", msg)
	}
	if msg := e.fails("operator", "tenant", "delete", "c", "--version", "1"); !strings.HasPrefix(msg, "412 Precondition Failed") {
		t.Fatalf("stale delete: %s", msg)
	}
	if out := e.ok("operator", "tenant", "delete", "c"); out != "tenant c deleted\n" {
		t.Fatalf("delete: %q", out)
	}
	if msg := e.fails("operator", "tenant", "get", "c"); msg != "404 Not Found: tenant c: not found" {
		t.Fatalf("get deleted: %s", msg)
	}
}

func TestCtlServiceAndRule(t *testing.T) {
	e := newCtlEnv(t)
	// A tenant admin needs no --tenant: its token sees one tenant.
	out := e.ok("admin-a", "service", "create", "api", "--vip", "10.100.0.2", "--port", "443", "--min-trust", "allow-listed")
	wantRows(t, out, "NAME VIP PORT PROTOCOL MIN TRUST MAGLEV VERSION", "api 10.100.0.2 443 tcp allow-listed - 1")
	if msg := e.fails("operator", "service", "list"); msg != "--tenant is required (the token sees several tenants)" {
		t.Fatalf("operator without --tenant: %s", msg)
	}
	out = e.ok("operator", "service", "list", "-t", "a")
	wantRows(t, out, "NAME VIP PORT PROTOCOL MIN TRUST MAGLEV VERSION", "api 10.100.0.2 443 tcp allow-listed - 1", "web 10.100.0.1 80 tcp none - 1")
	if msg := e.fails("admin-a", "service", "create", "dup", "--vip", "10.100.0.1", "--port", "80"); !strings.HasPrefix(msg, "422 Unprocessable Entity: invalid configuration: ") {
		t.Fatalf("invalid: %s", msg)
	}
	if msg := e.fails("admin-a", "service", "create", "x", "--vip", "10.100.0.300"); !strings.HasPrefix(msg, "--vip: ") {
		t.Fatalf("bad flag value: %s", msg)
	}

	out = e.ok("admin-a", "rule", "create", "ops", "--source", "192.168.1.0/24", "--source", "192.168.2.0/24", "--service", "api")
	wantRows(t, out, "NAME SOURCES SERVICES VERSION", "ops 192.168.1.0/24,192.168.2.0/24 api 1")
	out = e.ok("admin-a", "rule", "update", "ops", "--service", "*")
	wantRows(t, out, "NAME SOURCES SERVICES VERSION", "ops 192.168.1.0/24,192.168.2.0/24 * 2")
	if y := e.ok("admin-a", "rule", "get", "ops", "-o", "yaml"); !strings.Contains(y, "services:\n  - '*'\n") {
		t.Fatalf("yaml quoting:\n%s", y)
	}
	e.ok("admin-a", "rule", "delete", "ops")
	if msg := e.fails("admin-a", "rule", "get", "ops"); msg != "404 Not Found: rule a/ops: not found" {
		t.Fatalf("deleted rule: %s", msg)
	}
}

func TestCtlBackendRegisterAndDrain(t *testing.T) {
	e := newCtlEnv(t)
	out := e.ok("admin-a", "backend", "register", "w2", "-s", "web", "--identity", "h2", "--addr", "10.1.0.2", "--port", "8080", "--policy", "app")
	wantRows(t, out, "NAME IDENTITY ADDRESS WEIGHT POLICY DRAIN STATE REASON SINCE",
		"w2 h2 10.1.0.2:8080 1 app - registered no attestation yet 2025-01-02T03:04:05Z")
	if msg := e.fails("admin-a", "backend", "list"); msg != "--service is required" {
		t.Fatalf("no service: %s", msg)
	}
	since := time.Date(2025, 2, 3, 4, 5, 6, 0, time.UTC)
	e.Live.Set("a", "web", "w2", state.BackendStatus{State: state.StateAdmitted, Reason: "attestation affirming", Since: since})
	out = e.ok("admin-a", "backend", "drain", "w2", "-s", "web")
	wantRows(t, out, "NAME IDENTITY ADDRESS WEIGHT POLICY DRAIN STATE REASON SINCE",
		"w2 h2 10.1.0.2:8080 1 app yes admitted attestation affirming 2025-02-03T04:05:06Z")
	out = e.ok("operator", "backend", "list", "-t", "a", "-s", "web")
	wantRows(t, out, "NAME IDENTITY ADDRESS WEIGHT POLICY DRAIN STATE REASON SINCE",
		"w1 h1 10.1.0.1 1 app - registered no attestation yet 2025-01-02T03:04:05Z",
		"w2 h2 10.1.0.2:8080 1 app yes admitted attestation affirming 2025-02-03T04:05:06Z")
	var views []struct {
		Name    string `json:"name"`
		Drain   bool   `json:"drain"`
		Version uint64 `json:"version"`
		Subject string `json:"subject"`
		Status  struct {
			State string `json:"state"`
		} `json:"status"`
	}
	if err := json.Unmarshal([]byte(e.ok("admin-a", "-o", "json", "backend", "list", "-s", "web")), &views); err != nil ||
		len(views) != 2 || !views[1].Drain || views[1].Version != 2 || views[1].Subject != "a/h2" || views[1].Status.State != "admitted" {
		t.Fatalf("list -o json: %+v %v", views, err)
	}
	out = e.ok("admin-a", "backend", "undrain", "w2", "-s", "web")
	if r := lines(out)[1]; r[5] != "-" {
		t.Fatalf("undrain:\n%s", out)
	}
	out = e.ok("admin-a", "backend", "update", "w2", "-s", "web", "--weight", "5")
	if r := lines(out)[1]; r[3] != "5" {
		t.Fatalf("update:\n%s", out)
	}

	issued := time.Date(2025, 2, 3, 4, 5, 0, 0, time.UTC)
	if err := e.State.AppendResult(attest.Result{Subject: "a/h2", Status: attest.StatusAffirming, TrustLevel: attest.TrustAllowListed,
		Issued: issued, Expires: issued.Add(time.Minute), Policy: "a/app"}); err != nil {
		t.Fatal(err)
	}
	if err := e.State.AppendResult(attest.Result{Subject: "a/h2", Status: attest.StatusContraindicated, Issued: issued.Add(time.Minute),
		Expires: issued.Add(time.Minute), Policy: "a/app", Reasons: []string{"reference-mismatch: /srv/app"}}); err != nil {
		t.Fatal(err)
	}
	out = e.ok("admin-a", "backend", "attestations", "w2", "-s", "web")
	wantRows(t, out, "SEQ ISSUED STATUS TRUST EXPIRES POLICY REASONS",
		"1 2025-02-03T04:05:00Z affirming allow-listed 2025-02-03T04:06:00Z a/app -",
		"2 2025-02-03T04:06:00Z contraindicated none 2025-02-03T04:06:00Z a/app reference-mismatch: /srv/app")

	if _, err := e.State.AppendTransition(state.Transition{Seq: 0, Time: since, Tenant: "a", Service: "web", Backend: "w2",
		From: state.StateAdmitted, To: state.StateEvicted, Reason: "contraindicated"}); err != nil {
		t.Fatal(err)
	}
	wantRows(t, e.ok("admin-a", "transitions", "-t", "a"), "SEQ TIME TENANT SERVICE BACKEND FROM TO REASON",
		"1 2025-02-03T04:05:06Z a web w2 admitted evicted contraindicated")
	if msg := e.fails("admin-a", "transitions"); !strings.HasPrefix(msg, "403 Forbidden: operators and auditors only (a tenant admin") {
		t.Fatalf("global transitions as tenant admin: %s", msg)
	}
	if n := len(lines(e.ok("auditor", "transitions"))); n != 2 {
		t.Fatalf("auditor's transitions: %d rows", n)
	}
	if msg := e.fails("auditor", "backend", "drain", "w2", "-t", "a", "-s", "web"); msg != "403 Forbidden: role auditor may not change this" {
		t.Fatalf("auditor draining: %s", msg)
	}

	// What get shows can be edited and written back; a change made meanwhile is not
	// overwritten.
	saved := filepath.Join(t.TempDir(), "w2.yaml")
	if err := os.WriteFile(saved, []byte(e.ok("admin-a", "-o", "yaml", "backend", "get", "w2", "-s", "web")), 0o600); err != nil {
		t.Fatal(err)
	}
	e.ok("operator", "backend", "drain", "w2", "-t", "a", "-s", "web")
	if msg := e.fails("admin-a", "backend", "update", "w2", "-s", "web", "-f", saved, "--weight", "7"); !strings.HasPrefix(msg, "412 Precondition Failed: backend a/web/w2 is at version 5, not 4") {
		t.Fatalf("update from a stale file: %s", msg)
	}
	if err := os.WriteFile(saved, []byte(e.ok("admin-a", "-o", "yaml", "backend", "get", "w2", "-s", "web")), 0o600); err != nil {
		t.Fatal(err)
	}
	if r := lines(e.ok("admin-a", "backend", "update", "w2", "-s", "web", "-f", saved, "--weight", "7"))[1]; r[3] != "7" || r[5] != "yes" {
		t.Fatalf("update from a file: %v", r)
	}

	out = e.ok("admin-a", "backend", "delete", "w2", "-s", "web")
	if out != "backend w2 deleted\n" {
		t.Fatalf("delete: %q", out)
	}
}

func TestCtlPolicy(t *testing.T) {
	e := newCtlEnv(t)
	dir := t.TempDir()
	app := filepath.Join(dir, "app.bin")
	if err := os.WriteFile(app, []byte("application v2"), 0o644); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256([]byte("application v2"))
	digest := hex.EncodeToString(sum[:])
	file := filepath.Join(dir, "policy.yaml")
	yaml := "name: p2\nreferences:\n  /etc/app.conf: [" + clienttest.Digest + "]\ngolden_pcrs:\n  8: [" + clienttest.Digest + "]\npcrs: [8, 15]\n"
	if err := os.WriteFile(file, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	out := e.ok("admin-b", "policy", "create", "-f", file, "--measure", "/srv/app="+app, "--allowed-ek", strings.ToUpper(clienttest.Digest))
	wantRows(t, out, "NAME PCR FILES GOLDEN PCRS ALLOWED EKS VERSION", "p2 15 /etc/app.conf,/srv/app 8 1 1")
	var p state.Policy
	if err := json.Unmarshal([]byte(e.ok("admin-b", "policy", "get", "p2", "-o", "json")), &p); err != nil ||
		p.References["/srv/app"][0] != digest || p.AllowedEKs[0] != clienttest.Digest || p.Tenant != "b" {
		t.Fatalf("policy: %+v %v", p, err)
	}
	// Two digests for one path on one command line; another path dropped.
	out = e.ok("admin-b", "policy", "update", "p2", "--reference", "/srv/app="+clienttest.Digest, "--measure", "/srv/app="+app, "--remove-reference", "/etc/app.conf")
	wantRows(t, out, "NAME PCR FILES GOLDEN PCRS ALLOWED EKS VERSION", "p2 15 /srv/app 8 1 2")
	p = state.Policy{}
	json.Unmarshal([]byte(e.ok("admin-b", "policy", "get", "p2", "-o", "json")), &p)
	if strings.Join(p.References["/srv/app"], ",") != clienttest.Digest+","+digest {
		t.Fatalf("references: %v", p.References)
	}
	if msg := e.fails("admin-b", "policy", "create", "p3", "-f", file); msg != `the file says name "p2" but the command says "p3"` {
		t.Fatalf("name mismatch: %s", msg)
	}
	if msg := e.fails("admin-b", "policy", "create", "p4", "--measure", filepath.Join(dir, "missing")); !strings.Contains(msg, "--measure: open ") {
		t.Fatalf("missing file: %s", msg)
	}
	if msg := e.fails("admin-b", "policy", "delete", "app"); msg != "409 Conflict: policy b/app is used by 1 backends: in use" {
		t.Fatalf("policy in use: %s", msg)
	}
}

func TestCtlTokenSecretShownOnce(t *testing.T) {
	e := newCtlEnv(t)
	out := e.ok("operator", "token", "create", "ci", "--role", "tenant-admin", "--tenant", "a")
	m := regexp.MustCompile(`(?m)^(moat_([0-9a-f]{12})_\S+)$`).FindStringSubmatch(out)
	if m == nil || strings.Count(out, m[1]) != 1 || !strings.Contains(out, "secret (shown this once; store it now):") {
		t.Fatalf("token create:\n%s", out)
	}
	secret, id := m[1], m[2]
	if r := lines(out)[1]; strings.Join(r[:4], "|") != id+"|ci|tenant-admin|a" {
		t.Fatalf("token row: %v", r)
	}
	list := e.ok("operator", "token", "list")
	if strings.Contains(list, secret[len(secret)-43:]) || !strings.Contains(list, id) || len(lines(list)) != 6 {
		t.Fatalf("token list:\n%s", list)
	}
	// The new token works, from a file, and sees only its tenant.
	tf := filepath.Join(t.TempDir(), "ci.token")
	if err := os.WriteFile(tf, []byte(secret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	out, _, err := e.run("", "--server", e.URL, "--ca-file", e.CAFile, "--token-file", tf, "tenant", "list")
	if err != nil || len(lines(out)) != 2 || lines(out)[1][0] != "a" {
		t.Fatalf("new token's tenants: %v\n%s", err, out)
	}
	var nt struct {
		Secret string `json:"secret"`
		Role   string `json:"role"`
	}
	if err := json.Unmarshal([]byte(e.ok("operator", "-o", "json", "token", "create", "audit", "--role", "auditor")), &nt); err != nil || nt.Role != "auditor" || !strings.HasPrefix(nt.Secret, "moat_") {
		t.Fatalf("token create -o json: %+v %v", nt, err)
	}
	if msg := e.fails("operator", "token", "create", "x", "--role", "root"); !strings.HasPrefix(msg, `--role: unknown role "root"`) {
		t.Fatalf("bad role: %s", msg)
	}
	if msg := e.fails("admin-a", "token", "list"); msg != "403 Forbidden: operators only" {
		t.Fatalf("tenant admin listing tokens: %s", msg)
	}
	if out := e.ok("operator", "token", "revoke", id); out != "token "+id+" revoked\n" {
		t.Fatalf("revoke: %q", out)
	}
	_, _, err = e.run("", "--server", e.URL, "--ca-file", e.CAFile, "--token-file", tf, "tenant", "list")
	if err == nil || err.Error() != "401 Unauthorized: send Authorization: Bearer <token>" {
		t.Fatalf("revoked token: %v", err)
	}
}

func TestCtlTenantAdminSeesNoOtherTenant(t *testing.T) {
	e := newCtlEnv(t)
	for _, args := range [][]string{
		{"tenant", "get", "%s"},
		{"service", "get", "web", "-t", "%s"},
		{"backend", "list", "-t", "%s", "-s", "web"},
		{"rule", "delete", "lan", "-t", "%s"},
		{"policy", "update", "app", "-t", "%s", "--allowed-ek", clienttest.Digest},
		{"transitions", "-t", "%s"},
	} {
		other, ghost := subst(args, "a"), subst(args, "ghost")
		msgA, msgGhost := e.fails("admin-b", other...), e.fails("admin-b", ghost...)
		if msgA != "404 Not Found: tenant a: not found" || msgGhost != "404 Not Found: tenant ghost: not found" {
			t.Errorf("%v: %q; for a missing tenant: %q", args, msgA, msgGhost)
		}
	}
	if out := e.ok("admin-b", "tenant", "list"); len(lines(out)) != 2 || lines(out)[1][0] != "b" {
		t.Fatalf("tenant admin's tenants:\n%s", out)
	}
	// Tenant a's rule is still there.
	e.ok("operator", "rule", "get", "lan", "-t", "a")
}

func subst(args []string, tn string) []string {
	out := make([]string, len(args))
	for i, a := range args {
		out[i] = strings.ReplaceAll(a, "%s", tn)
	}
	return out
}

func TestCtlConnectionSettings(t *testing.T) {
	e := newCtlEnv(t)
	// From the environment.
	t.Setenv("MOAT_SERVER", e.URL)
	t.Setenv("MOAT_TOKEN", e.Tokens["admin-a"])
	t.Setenv("MOAT_CA_FILE", e.CAFile)
	out, _, err := e.run("", "status")
	if err != nil {
		t.Fatal(err)
	}
	wantRows(t, out, "KEY VALUE", "backends.registered 1", "role tenant-admin", "tenant a")
	// From the default files.
	t.Setenv("MOAT_TOKEN", "")
	t.Setenv("MOAT_CA_FILE", "")
	if err := os.WriteFile(ctlDefaultTokenFile, []byte(e.Tokens["auditor"]+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	ca, _ := os.ReadFile(e.CAFile)
	if err := os.WriteFile(ctlDefaultCAFile, ca, 0o644); err != nil {
		t.Fatal(err)
	}
	if out, _, err := e.run("", "-o", "json", "status"); err != nil || !strings.Contains(out, `"role": "auditor"`) {
		t.Fatalf("default files: %v %s", err, out)
	}
	// A flag beats the environment.
	if out, _, err := e.run("", "--token", e.Tokens["operator"], "-o", "yaml", "status"); err != nil || !strings.Contains(out, "role: operator\n") {
		t.Fatalf("--token: %v %s", err, out)
	}
	// Without the CA, the certificate is refused; skipping the check says so loudly.
	os.Remove(ctlDefaultCAFile)
	if msg := e.fails("", "status"); !strings.Contains(msg, "certificate signed by unknown authority") {
		t.Fatalf("unknown CA: %s", msg)
	}
	_, errs, err := e.run("", "--insecure-skip-verify", "status")
	if err != nil || !strings.HasPrefix(errs, "warning: --insecure-skip-verify: the server's certificate is not checked") {
		t.Fatalf("insecure: %v %q", err, errs)
	}
	// No token at all: the API's answer, and where a token comes from.
	os.Remove(ctlDefaultTokenFile)
	if msg := e.fails("", "--ca-file", e.CAFile, "tenant", "list"); msg != "401 Unauthorized: send Authorization: Bearer <token> (no token given: use --token, --token-file or MOAT_TOKEN)" {
		t.Fatalf("no token: %s", msg)
	}
	// The document needs none.
	if out, _, err := e.run("", "--ca-file", e.CAFile, "openapi"); err != nil || !strings.Contains(out, `"openapi": "3.0.3"`) {
		t.Fatalf("openapi: %v", err)
	}
	if msg := e.fails("", "-o", "xml", "status"); msg != `-o "xml": want table, json or yaml` {
		t.Fatalf("bad -o: %s", msg)
	}
	if msg := e.fails("", "--server", "127.0.0.1:9443", "status"); !strings.HasPrefix(msg, `--server "127.0.0.1:9443": want a URL`) {
		t.Fatalf("bad --server: %s", msg)
	}
}

// TestCtlExitStatus runs the real main: an API error is printed after "moat:" with the
// HTTP status, and the exit code is 1.
func TestCtlExitStatus(t *testing.T) {
	e := newCtlEnv(t)
	for _, c := range []struct {
		args       []string
		code       int
		out, errs  string
		wantOutSub string
	}{
		{args: []string{"tenant", "get", "zz"}, code: 1, errs: "moat: 404 Not Found: tenant zz: not found\n"},
		{args: []string{"tenant", "get", "a"}, code: 0, wantOutSub: "a     eth0"},
	} {
		cmd := exec.Command(os.Args[0], "-test.run=^TestCtlMainProcess$")
		args, _ := json.Marshal(append([]string{"ctl", "--server", e.URL, "--ca-file", e.CAFile, "--token", e.Tokens["operator"]}, c.args...))
		cmd.Env = append(os.Environ(), "MOAT_CTL_TEST_MAIN="+string(args))
		var out, errs bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errs
		err := cmd.Run()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		if code != c.code || c.errs != "" && errs.String() != c.errs || !strings.Contains(out.String(), c.wantOutSub) {
			t.Errorf("moat %v: exit %d, stdout %q, stderr %q", c.args, code, out.String(), errs.String())
		}
	}
}

// TestCtlMainProcess is main() in a child process of TestCtlExitStatus.
func TestCtlMainProcess(t *testing.T) {
	raw := os.Getenv("MOAT_CTL_TEST_MAIN")
	if raw == "" {
		t.Skip("run by TestCtlExitStatus")
	}
	var args []string
	if err := json.Unmarshal([]byte(raw), &args); err != nil {
		t.Fatal(err)
	}
	os.Args = append([]string{"moat"}, args...)
	main()
	os.Exit(0) // not the test framework's PASS line
}
