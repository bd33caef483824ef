package tenant

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"

	"github.com/seed4c/moat/lb"
)

const sampleJSON = `{
  "tenants": [
    {
      "name": "a",
      "fib_table": 100,
      "attachments": [{"interface": "eth0"}, {"interface": "eth1", "vlan": 100}],
      "services": [
        {
          "name": "web", "vip": "10.100.0.1", "port": 80, "protocol": "tcp", "maglev_size": 521,
          "backends": [
            {"name": "w1", "addr": "10.1.0.1", "weight": 1, "state": "admitted"},
            {"name": "w2", "addr": "10.1.0.2", "port": 8080, "weight": 2, "state": "draining"},
            {"name": "w3", "addr": "10.1.0.3", "weight": 1, "state": "evicted"}
          ]
        },
        {"name": "dns", "vip": "10.100.0.1", "port": 53, "protocol": "UDP", "backends": []}
      ],
      "rules": [{"name": "lan", "sources": ["10.0.0.0/24"], "services": ["*"]}]
    }
  ]
}`

// TestParseConfig: names of states and protocols, addresses and prefixes as text, the
// optional fields' zero values.
func TestParseConfig(t *testing.T) {
	got, err := ParseConfig([]byte(sampleJSON))
	if err != nil {
		t.Fatalf("ParseConfig: %v", err)
	}
	want := Config{Tenants: []Tenant{{
		Name:        "a",
		FIBTable:    100,
		Attachments: []Attachment{{Interface: "eth0"}, {Interface: "eth1", VLAN: 100}},
		Services: []Service{
			{Name: "web", VIP: addr("10.100.0.1"), Port: 80, Protocol: TCP, MaglevSize: 521, Backends: []Backend{
				backend("w1", "10.1.0.1", 0, 1, lb.StateAdmitted),
				backend("w2", "10.1.0.2", 8080, 2, lb.StateDraining),
				backend("w3", "10.1.0.3", 0, 1, lb.StateEvicted),
			}},
			{Name: "dns", VIP: addr("10.100.0.1"), Port: 53, Protocol: UDP, Backends: []Backend{}},
		},
		Rules: []Rule{{Name: "lan", Sources: pfxs("10.0.0.0/24"), Services: []string{"*"}}},
	}}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("ParseConfig\n got %+v\nwant %+v", got, want)
	}
	if _, err := Compile(got, testIfaces, IDs{}, DefaultLimits()); err != nil {
		t.Errorf("the sample does not compile: %v", err)
	}
}

// TestParseConfigRoundTrip: what json.Marshal writes of a configuration, ParseConfig
// reads back as the same configuration, and marshals to the same bytes.
func TestParseConfigRoundTrip(t *testing.T) {
	for _, cfg := range []Config{baseConfig(), {}, {Tenants: []Tenant{{Name: "empty"}}}} {
		data, err := json.Marshal(cfg)
		if err != nil {
			t.Fatalf("Marshal: %v", err)
		}
		back, err := ParseConfig(data)
		if err != nil {
			t.Fatalf("ParseConfig of Marshal's output %s: %v", data, err)
		}
		if !reflect.DeepEqual(back, cfg) {
			t.Errorf("round trip changed the configuration:\n got %+v\nwant %+v", back, cfg)
		}
		again, err := json.Marshal(back)
		if err != nil || string(again) != string(data) {
			t.Errorf("second Marshal differs (%v):\n%s\n%s", err, again, data)
		}
	}
	// Protocols and states are written by name.
	data, _ := json.Marshal(baseConfig())
	for _, w := range []string{`"protocol":"tcp"`, `"protocol":"udp"`, `"state":"admitted"`, `"state":"draining"`, `"state":"evicted"`} {
		if !strings.Contains(string(data), w) {
			t.Errorf("marshalled configuration lacks %s", w)
		}
	}
}

// TestParseConfigRefuses: anything but one strict JSON object of known fields is an
// error that says what is wrong, and no configuration is returned.
func TestParseConfigRefuses(t *testing.T) {
	svc := func(fields string) string {
		return `{"tenants":[{"name":"a","services":[{"name":"s",` + fields + `}]}]}`
	}
	bk := func(fields string) string {
		return svc(`"backends":[{"name":"b",` + fields + `}]`)
	}
	cases := []struct{ name, in, want string }{
		{"empty input", ``, "EOF"},
		{"null", `null`, "want a JSON object, found null"},
		{"array", `[]`, `want a JSON object, found "["`},
		{"string", `"tenants"`, "want a JSON object, found a string"},
		{"unknown top-level field", `{"tenants":[],"extra":1}`, `unknown field "extra"`},
		{"unknown nested field", svc(`"weight":1`), `unknown field "weight"`},
		{"field in another case", `{"Tenants":[]}`, `unknown field "Tenants"`},
		{"field folded by Unicode", `{"tenants":[{"name":"a","fib_tab\u017fe":1}]}`, `unknown field "fib_tabſe"`},
		{"field given twice", `{"tenants":[{"name":"a","name":"b"}]}`, `field "name" given twice in one object`},
		{"field given twice, deep", bk(`"state":"admitted","state":"evicted"`), `field "state" given twice`},
		{"trailing object", `{"tenants":[]} {}`, "trailing data after the object"},
		{"trailing brace", `{"tenants":[]}}`, "trailing data after the object"},
		{"trailing bracket", `{"tenants":[]}]`, "trailing data after the object"},
		{"trailing garbage", `{"tenants":[]}x`, ""},
		{"truncated", `{"tenants":[{"name":"a"`, "unexpected EOF"},
		{"tenants not an array", `{"tenants":{}}`, "cannot unmarshal object"},
		{"name not a string", `{"tenants":[{"name":7}]}`, "cannot unmarshal number"},
		{"negative port", svc(`"port":-1`), "cannot unmarshal number -1"},
		{"port above 65535", svc(`"port":65536`), "cannot unmarshal number 65536"},
		{"port as a string", svc(`"port":"80"`), "cannot unmarshal string"},
		{"VLAN above 16 bits", `{"tenants":[{"name":"a","attachments":[{"interface":"eth0","vlan":70000}]}]}`, "cannot unmarshal number 70000"},
		{"fractional weight", bk(`"weight":1.5`), "cannot unmarshal number 1.5"},
		{"protocol as a number", svc(`"protocol":6`), "cannot unmarshal number"},
		{"unknown protocol", svc(`"protocol":"icmp"`), `unknown protocol "icmp"`},
		{"state as a number", bk(`"state":1`), "cannot unmarshal number"},
		{"unknown state", bk(`"state":"up"`), `parse state "up"`},
		{"state in capitals", bk(`"state":"Admitted"`), `parse state "Admitted"`},
		{"bad VIP", svc(`"vip":"10.0.0.256"`), "10.0.0.256"},
		{"VIP with a prefix length", svc(`"vip":"10.0.0.1/32"`), "10.0.0.1/32"},
		{"bad prefix", `{"tenants":[{"name":"a","rules":[{"sources":["10.0.0.0/33"]}]}]}`, "10.0.0.0/33"},
		{"services not a list", `{"tenants":[{"name":"a","rules":[{"services":"*"}]}]}`, "cannot unmarshal string"},
		{"comment", `{"tenants":[]} // no`, "trailing data"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := ParseConfig([]byte(tc.in))
			if err == nil {
				t.Fatalf("ParseConfig accepted %s as %+v", tc.in, cfg)
			}
			if !strings.HasPrefix(err.Error(), "decode tenant configuration: ") || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q: want it to start with the context and say %q", err, tc.want)
			}
			if !reflect.DeepEqual(cfg, Config{}) {
				t.Errorf("ParseConfig returned %+v with its error; want the zero Config", cfg)
			}
		})
	}
}

// TestParseConfigAccepts: what strictness must not refuse.
func TestParseConfigAccepts(t *testing.T) {
	for _, in := range []string{
		`{}`,
		`{"tenants":null}`,
		"\n\t {\"tenants\": []}\n\n",
		`{"tenants":[{"name":"a","attachments":[{"interface":"eth0","vlan":0}]}]}`,
		`{"tenants":[{"name":"a"},{"name":"b"}]}`,                                      // one key per object, not per document
		`{"tenants":[{"name":"a","services":[{"name":"s","protocol":"Tcp"}]}]}`,        // protocols fold case
		`{"tenants":[{"name":"a","services":[{"name":"s","vip":"::ffff:10.0.0.1"}]}]}`, // Compile unmaps it
	} {
		if _, err := ParseConfig([]byte(in)); err != nil {
			t.Errorf("ParseConfig(%s): %v", in, err)
		}
	}
}
