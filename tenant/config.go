package tenant

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"strings"

	"github.com/seed4c/moat/lb"
)

// Config is the desired state of one gateway: every tenant with its attachments,
// services and allow rules. It is what operators and tenant admins write; Compile
// checks it as a whole and turns it into map entries.
type Config struct {
	Tenants []Tenant `json:"tenants"`
}

// Tenant is one isolated customer. Its address space may overlap any other tenant's.
type Tenant struct {
	Name string `json:"name"`
	// FIBTable is the routing table the fast path looks routes up in for this
	// tenant's packets (bpf_fib_lookup with BPF_FIB_LOOKUP_TBID). 0 means the
	// kernel's policy rules decide, by ingress interface.
	FIBTable    uint32       `json:"fib_table,omitempty"`
	Attachments []Attachment `json:"attachments"`
	Services    []Service    `json:"services"`
	Rules       []Rule       `json:"rules"`
}

// Attachment puts a tenant on a gateway interface: untagged (VLAN 0) or on one 802.1Q
// VLAN. Frames arriving there belong to the tenant; the tenant's frames may leave only
// through its attachments, tagged with the attachment's VLAN.
type Attachment struct {
	Interface string `json:"interface"`
	VLAN      uint16 `json:"vlan,omitempty"`
}

// Protocol is a service's transport protocol.
type Protocol uint8

// Protocols the fast path balances; the values are IANA protocol numbers.
const (
	TCP Protocol = 6
	UDP Protocol = 17
)

func (p Protocol) String() string {
	switch p {
	case TCP:
		return "tcp"
	case UDP:
		return "udp"
	}
	return fmt.Sprintf("proto(%d)", uint8(p))
}

// ParseProtocol reads "tcp" or "udp".
func ParseProtocol(s string) (Protocol, error) {
	switch strings.ToLower(s) {
	case "tcp":
		return TCP, nil
	case "udp":
		return UDP, nil
	}
	return 0, fmt.Errorf("unknown protocol %q (want tcp or udp)", s)
}

func (p Protocol) MarshalText() ([]byte, error) {
	if p != TCP && p != UDP {
		return nil, fmt.Errorf("unknown protocol %d", uint8(p))
	}
	return []byte(p.String()), nil
}

func (p *Protocol) UnmarshalText(b []byte) error {
	v, err := ParseProtocol(string(b))
	if err != nil {
		return err
	}
	*p = v
	return nil
}

// Service is a virtual IP:port of one tenant, balanced over its backends.
type Service struct {
	Name     string     `json:"name"`
	VIP      netip.Addr `json:"vip"`
	Port     uint16     `json:"port"`
	Protocol Protocol   `json:"protocol"`
	// MaglevSize is the service's Maglev table size, a prime; 0 means
	// lb.DefaultTableSize.
	MaglevSize uint32    `json:"maglev_size,omitempty"`
	Backends   []Backend `json:"backends"`
}

// Backend is one host:port serving a service.
type Backend struct {
	Name string     `json:"name"`
	Addr netip.Addr `json:"addr"`
	// Port is where the backend listens; 0 means the service's port.
	Port   uint16 `json:"port,omitempty"`
	Weight uint32 `json:"weight"`
	// State is the backend's admission state: only admitted backends get new flows.
	State lb.State `json:"state"`
}

// Rule allows sources to reach services of the same tenant. Everything not allowed
// by some rule is denied.
type Rule struct {
	Name    string         `json:"name"`
	Sources []netip.Prefix `json:"sources"`
	// Services names the services the rule opens; the single entry "*" means all of
	// the tenant's services, present and future.
	Services []string `json:"services"`
}

// AllServices is the Rule.Services entry that stands for every service of the tenant.
const AllServices = "*"

// ParseConfig decodes a JSON configuration strictly. Refused, rather than silently
// ignored or guessed at:
//   - anything but one JSON object (null, an array, a second value after the object);
//   - an unknown field, or a known one spelt in another case ("Name" for "name"):
//     encoding/json would match it regardless of case;
//   - a field given twice in one object: encoding/json keeps the last, another reader
//     of the same document may keep the first, and the two would disagree about what
//     was configured;
//   - a value of the wrong type, a protocol or a backend state given as a number, an
//     address or prefix that does not parse.
//
// A configuration that parses may still be invalid: Compile checks the rest.
func ParseConfig(data []byte) (Config, error) {
	if err := checkKeys(data); err != nil {
		return Config{}, fmt.Errorf("decode tenant configuration: %w", err)
	}
	var c Config
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return Config{}, fmt.Errorf("decode tenant configuration: %w", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return Config{}, fmt.Errorf("decode tenant configuration: trailing data after the object (at byte %d)", dec.InputOffset())
	}
	return c, nil
}

// checkKeys walks the document's tokens and refuses a top level other than an object,
// object keys that are not exactly lower-case field names, and keys repeated within
// one object. Every field of Config and what it holds is spelt in a-z, 0-9 and _, so a
// key with anything else can only be a case variant that encoding/json would accept.
func checkKeys(data []byte) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	// One frame per open object or array: the keys seen so far (nil for an array) and
	// whether the next string token of an object is a key.
	type frame struct {
		keys      map[string]bool
		expectKey bool
	}
	var stack []frame
	for {
		tok, err := dec.Token()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if len(stack) == 0 && tok != json.Delim('{') {
			return fmt.Errorf("want a JSON object, found %v", describeToken(tok))
		}
		if len(stack) > 0 {
			top := &stack[len(stack)-1]
			if top.keys != nil && top.expectKey {
				if key, ok := tok.(string); ok {
					if !isFieldName(key) {
						return fmt.Errorf("unknown field %q (fields are spelt in lower case: a-z, 0-9 and _)", key)
					}
					if top.keys[key] {
						return fmt.Errorf("field %q given twice in one object", key)
					}
					top.keys[key] = true
					top.expectKey = false
					continue
				}
			}
			if top.keys != nil {
				top.expectKey = true // this token is (or opens) a value: a key comes next
			}
		}
		switch tok {
		case json.Delim('{'):
			stack = append(stack, frame{keys: map[string]bool{}, expectKey: true})
		case json.Delim('['):
			stack = append(stack, frame{})
		case json.Delim('}'), json.Delim(']'):
			stack = stack[:len(stack)-1]
			if len(stack) == 0 {
				return nil // Decode reports what follows the object
			}
		}
	}
}

func isFieldName(s string) bool {
	for _, r := range s {
		if (r < 'a' || r > 'z') && (r < '0' || r > '9') && r != '_' {
			return false
		}
	}
	return s != ""
}

func describeToken(tok json.Token) string {
	switch tok.(type) {
	case nil:
		return "null"
	case json.Delim:
		return fmt.Sprintf("%q", tok)
	case string:
		return "a string"
	case json.Number:
		return "a number"
	case bool:
		return "a boolean"
	}
	return fmt.Sprintf("%T", tok)
}
