package overlay

import (
	"encoding/json"
	"net/netip"
	"strings"
	"testing"
)

const sampleDump = `private_key=e84b5a6d2717c1003a13b431570353dbaca9146cf150c5f8575680feba52027a
listen_port=12912
fwmark=0
public_key=b85996fecc9c7f1fc6d2572a76eda11d59bcd20be8e543b15ce4bd85a8e75a33
preshared_key=188515093e952f5f22e865cef3012e72f8b5f0b598ac0309d5dacce3b70fcf52
protocol_version=1
endpoint=[abcd:23::33%2]:51820
last_handshake_time_sec=1700000000
last_handshake_time_nsec=500
tx_bytes=38333
rx_bytes=2224
persistent_keepalive_interval=25
allowed_ip=192.168.4.4/32
public_key=58402e695ba1772b1cc9309755f043251ea77fdcf10fbe63989ceae6f6a4e90c
preshared_key=0000000000000000000000000000000000000000000000000000000000000000
endpoint=182.122.22.19:3233
last_handshake_time_sec=0
last_handshake_time_nsec=0
allowed_ip=192.168.4.6/32
allowed_ip=10.0.0.0/8
some_future_field=secret-looking-value
`

func TestParseStatusDropsSecrets(t *testing.T) {
	st, err := ParseStatus(sampleDump)
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := json.Marshal(st)
	for _, secret := range []string{"e84b5a6d2717c1003a13b431570353dbaca9146cf150c5f8575680feba52027a",
		"188515093e952f5f22e865cef3012e72f8b5f0b598ac0309d5dacce3b70fcf52", "secret-looking-value"} {
		if strings.Contains(string(raw), secret) {
			t.Fatalf("filtered status holds %q: %s", secret, raw)
		}
	}
	if st.ListenPort != 12912 || len(st.Peers) != 2 {
		t.Fatalf("status %+v", st)
	}
	p0, p1 := st.Peers[0], st.Peers[1]
	if !p0.HasPSK || p1.HasPSK || p0.TxBytes != 38333 || p0.LastHandshake.Unix() != 1700000000 || !p1.LastHandshake.IsZero() ||
		p1.Endpoint != netip.MustParseAddrPort("182.122.22.19:3233") || len(p1.AllowedIPs) != 2 || p0.Keepalive.Seconds() != 25 {
		t.Fatalf("peers %+v", st.Peers)
	}
	for _, bad := range []string{"listen_port", "public_key=zz", "public_key=00\n", "endpoint=1.2.3.4", "allowed_ip=1.2.3.4/33",
		"last_handshake_time_sec=700000000000", "last_handshake_time_sec=-1", "last_handshake_time_nsec=1000000000"} {
		if _, err := ParseStatus("public_key=" + strings.Repeat("ab", 32) + "\n" + bad + "\n"); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

// FuzzParseStatus: no input panics the parser, and nothing it keeps can carry the
// value of a private_key or preshared_key line: a dump whose secrets are replaced by
// others (a pre-shared key stays all zeros, "none", or not) parses to the same JSON.
// (Looking for the secret's text in the JSON instead mistook "00000000" inside a
// keepalive of 1000000000 ns for a leak.)
func FuzzParseStatus(f *testing.F) {
	f.Add(sampleDump)
	f.Add("public_key=" + strings.Repeat("0", 64) + "\nallowed_ip=1.2.3.4/32\n")
	f.Add("listen_port=1\nprivate_key=zz\n=\n")
	f.Fuzz(func(t *testing.T, dump string) {
		st, err := ParseStatus(dump)
		if err != nil {
			return
		}
		raw, err := json.Marshal(st)
		if err != nil {
			t.Fatalf("marshal: %v", err)
		}
		lines := strings.Split(dump, "\n")
		for i, line := range lines {
			k, v, _ := strings.Cut(line, "=")
			if (k == "private_key" || k == "preshared_key") && strings.Trim(v, "0") != "" {
				other := strings.Repeat("1", len(v))
				if other == v {
					other = strings.Repeat("2", len(v))
				}
				lines[i] = k + "=" + other
			}
		}
		other, err := ParseStatus(strings.Join(lines, "\n"))
		if err != nil {
			t.Fatalf("other secrets: %v", err)
		}
		if raw2, _ := json.Marshal(other); string(raw2) != string(raw) {
			t.Fatalf("the secrets of %q reach the status:\n%s\n%s", dump, raw, raw2)
		}
	})
}

func TestRulesetPinsVNIsToPeers(t *testing.T) {
	cfg := Config{Address: netip.MustParsePrefix("100.64.0.1/24"), Peers: []PeerConfig{
		{Subject: "host-r", Address: netip.MustParseAddr("100.64.0.3")},
		{Subject: "gw-b", Address: netip.MustParseAddr("100.64.0.2")}}}
	rs := Ruleset(cfg, []Segment{{Tenant: "a", VNI: 11, Peers: []string{"host-r", "gw-b"}}, {Tenant: "b", VNI: 12, Peers: []string{"gw-b"}}}, "moat-wg", 1420)
	for _, want := range []string{
		`udp dport 4789 iifname != "moat-wg" counter drop`,
		"udp dport 4789 ip saddr 100.64.0.3 @th,96,24 11 accept",
		"udp dport 4789 ip saddr 100.64.0.2 @th,96,24 11 accept",
		"udp dport 4789 ip saddr 100.64.0.2 @th,96,24 12 accept",
		"tcp option maxseg size set 1330",
	} {
		if !strings.Contains(rs, want) {
			t.Errorf("ruleset lacks %q:\n%s", want, rs)
		}
	}
	if strings.Contains(rs, "100.64.0.3 @th,96,24 12") {
		t.Errorf("host-r may send into tenant b:\n%s", rs)
	}
}
