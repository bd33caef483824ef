// Package state is the gateway's desired state: tenants, services, backends, allow
// rules and attestation policies, as the REST API reads and writes them. Every object
// carries a version (the API's ETag); every write is checked against the whole
// configuration it would produce (tenant.Validate) inside the same transaction, so the
// store never holds a configuration the fast path would refuse. It also keeps what the
// gateway learns: attestation results, backend state transitions, compiled ids.
package state

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/seed4c/moat/attest"
	"github.com/seed4c/moat/tenant"
)

// Meta is what the store maintains on every object.
type Meta struct {
	// Version increases on every write; the API sends it as the ETag and requires it
	// back in If-Match, so that two writers cannot silently overwrite each other.
	Version uint64    `json:"version"`
	Created time.Time `json:"created"`
	Updated time.Time `json:"updated"`
}

// Tenant is one isolated customer and where it is attached.
type Tenant struct {
	Name        string              `json:"name"`
	FIBTable    uint32              `json:"fib_table,omitempty"`
	Attachments []tenant.Attachment `json:"attachments"`
	// Overlay, when set, gives the tenant a segment across the WireGuard overlay: its
	// backends on remote hosts (and other sites) are reached there. The segment's
	// gateway end, SegmentInterface, is attached to the tenant like its other
	// interfaces, without being listed in Attachments.
	Overlay *TenantOverlay `json:"overlay,omitempty"`
	Meta
}

// TenantOverlay is a tenant's VXLAN segment inside the overlay.
type TenantOverlay struct {
	// VNI is the tenant's number on every node of the overlay (1..16777215): the
	// backend hosts and peer gateways that carry the tenant use the same.
	VNI uint32 `json:"vni"`
	// Address is the gateway's address on the segment, with the segment's prefix
	// (10.9.0.1/24); the tenant's remote backends have addresses in that prefix.
	Address netip.Prefix `json:"address"`
}

// SegmentInterface is the gateway interface of the tenant's segment: the fast-path
// end dataplane/overlay builds for VNI vni.
func SegmentInterface(vni uint32) string { return fmt.Sprintf("ov%d", vni) }

// OverlayPeer is a machine the gateway links with over the WireGuard overlay: a backend
// host whose tenants' backends are reachable only there, or another gateway. It is a
// WireGuard peer only while its attestation admits it, with the keys its quotes vouch
// for; and it configures the gateway only while the gateway's attestation passes its
// own verifier (Verifier).
type OverlayPeer struct {
	Name string `json:"name"`
	// Subject is the attestation subject whose results admit the peer,
	// "<tenant>/<identity>": the identity its agent attests as to this gateway (a
	// backend host's, shared with its backends).
	Subject string `json:"subject"`
	// Policy is the attestation policy of the subject's tenant the peer is appraised
	// against; EKSHA256 optionally pins its TPM. A backend of the same subject must
	// name the same.
	Policy   string `json:"policy"`
	EKSHA256 string `json:"ek_sha256,omitempty"`
	// Address is the peer's overlay address: its only allowed IP.
	Address netip.Addr `json:"address"`
	// Endpoint is where to reach it first on the underlay; empty when it connects first
	// (behind NAT). WireGuard follows it when it roams.
	Endpoint netip.AddrPort `json:"endpoint,omitzero"`
	// Verifier is the https URL of the peer's verifier, to which the gateway attests
	// (its agent pins the TLS key the peer's own quotes bind).
	Verifier string `json:"verifier"`
	// Tenants are the tenants whose segments the peer carries: the only VNIs accepted
	// from it, and where those tenants' broadcasts go.
	Tenants []string `json:"tenants"`
	// Routes are tenant prefixes behind the peer (another gateway's VIPs), reached via
	// its address on the tenant's segment.
	Routes []OverlayRoute `json:"routes,omitempty"`
	// Gateway: the peer is another moat gateway; Verifier is its peer-facing verifier
	// (overlay.verifier_listen), served with the TLS key its quotes bind. Each of the two
	// pins the other's key once it has appraised the other; to start, the one with the
	// lower overlay address attests first, to the URL alone.
	Gateway bool `json:"gateway,omitempty"`
	Meta
}

// OverlayRoute is a tenant's prefix behind an overlay peer.
type OverlayRoute struct {
	Tenant string       `json:"tenant"`
	Dst    netip.Prefix `json:"dst"`
	Via    netip.Addr   `json:"via"`
}

// OverlayPeerStatus is an overlay peer's link as the gateway sees it now.
type OverlayPeerStatus struct {
	// Configured: its attestation admits it; it is a WireGuard peer now.
	Configured bool      `json:"configured"`
	Since      time.Time `json:"since,omitzero"`
	// AttestationExpires is when its latest admitting result expires.
	AttestationExpires time.Time `json:"attestation_expires,omitzero"`
	Endpoint           string    `json:"endpoint,omitempty"`
	LastHandshake      time.Time `json:"last_handshake,omitzero"`
	RxBytes            uint64    `json:"rx_bytes"`
	TxBytes            uint64    `json:"tx_bytes"`
	// Appraisal is the peer's latest verdict on the gateway, as its verifier answered
	// the gateway's agent: the peer configures the gateway only while it affirms.
	Appraisal      attest.Status `json:"appraisal,omitempty"`
	AppraisalError string        `json:"appraisal_error,omitempty"`
	// LinkUp: configured here, affirmed by the peer and a handshake completed since:
	// the backends behind the peer may be admitted. Link says why not, when not.
	LinkUp bool   `json:"link_up"`
	Link   string `json:"link,omitempty"`
}

// Service is a tenant's VIP:port.
type Service struct {
	Tenant     string          `json:"tenant"`
	Name       string          `json:"name"`
	VIP        netip.Addr      `json:"vip"`
	Port       uint16          `json:"port"`
	Protocol   tenant.Protocol `json:"protocol"`
	MaglevSize uint32          `json:"maglev_size,omitempty"`
	// MinTrust is the least attestation trust level a backend must reach to be
	// admitted ("allow-listed" or "certified").
	MinTrust attest.TrustLevel `json:"min_trust"`
	Meta
}

// Backend is one host:port of a service, admitted only while its attestation holds.
type Backend struct {
	Tenant  string `json:"tenant"`
	Service string `json:"service"`
	Name    string `json:"name"`
	// Identity is the backend host's attestation identity within the tenant; its agent
	// attests as Subject() ("<tenant>/<identity>"). Several backends (of several
	// services) may share one host and so one identity.
	Identity string     `json:"identity"`
	Addr     netip.Addr `json:"addr"`
	Port     uint16     `json:"port,omitempty"`
	Weight   uint32     `json:"weight"`
	// Policy names the tenant's attestation policy the host is appraised against.
	Policy string `json:"policy"`
	// EKSHA256, when set, pins the host's TPM: only this endorsement key (SHA-256 of
	// its SubjectPublicKeyInfo, hex) may enroll as this identity.
	EKSHA256 string `json:"ek_sha256,omitempty"`
	// Drain stops new flows to the backend; existing ones continue.
	Drain bool `json:"drain,omitempty"`
	// OverlayPeer, when set, makes the backend another site: the same tenant's VIP at
	// the gateway that overlay peer is, reached through it (one of the peer's routes of
	// the tenant covers Addr). The other gateway balances over its own attested
	// backends; this gateway admits the site while the peer's attestation admits it
	// (at the service's minimum trust) and the link with it is up. Identity, Policy and
	// EKSHA256 are the peer's: they stay empty.
	OverlayPeer string `json:"overlay_peer,omitempty"`
	Meta
}

// Subject is the verifier's name for the backend's host; empty for another site's
// VIP (OverlayPeer), whose subject is the peer's (Store.SubjectOf).
func (b *Backend) Subject() string {
	if b.OverlayPeer != "" {
		return ""
	}
	return b.Tenant + "/" + b.Identity
}

// Rule allows sources to reach services of the tenant.
type Rule struct {
	Tenant   string         `json:"tenant"`
	Name     string         `json:"name"`
	Sources  []netip.Prefix `json:"sources"`
	Services []string       `json:"services"`
	Meta
}

// Policy is an attestation policy of a tenant: what its backend hosts must run.
type Policy struct {
	Tenant string `json:"tenant"`
	Name   string `json:"name"`
	// MeasurementPCR is the PCR the agent's measurement log extends (8..23; default
	// attest.DefaultMeasurementPCR).
	MeasurementPCR int `json:"measurement_pcr,omitempty"`
	// PCRs is the exact PCR set quoted; default {MeasurementPCR}.
	PCRs []int `json:"pcrs,omitempty"`
	// References maps each measured file to the hex SHA-256 digests it may have.
	References map[string][]string `json:"references"`
	// GoldenPCRs maps other quoted PCRs to the hex values they may hold.
	GoldenPCRs map[int][]string `json:"golden_pcrs,omitempty"`
	// AllowedEKs lists hex SHA-256 digests of EKs accepted without a manufacturer
	// certificate (swtpm, the simulator, TPMs without EK certificates).
	AllowedEKs []string `json:"allowed_eks,omitempty"`
	Meta
}

// BackendState is a backend's place in admission, as the API reports it.
type BackendState string

// Backend states. registered → attesting → admitted | rejected; admitted → evicted
// (failed or expired attestation, or its overlay link down) → admitted (a new
// success); draining by request. A backend reached through an overlay peer waits
// (attested, its link not up yet) before its first admission.
const (
	StateRegistered BackendState = "registered" // no attestation seen yet
	StateAttesting  BackendState = "attesting"  // enrolled, no verdict yet
	StateWaiting    BackendState = "waiting"    // attested, never admitted yet: its overlay link is not up
	StateAdmitted   BackendState = "admitted"   // in its service's Maglev table
	StateRejected   BackendState = "rejected"   // never admitted: its first verdict failed
	StateEvicted    BackendState = "evicted"    // was admitted; attestation failed or expired
	StateDraining   BackendState = "draining"   // attested, drain requested: existing flows only
)

// Transition is one change of a backend's state, with why.
type Transition struct {
	Seq     uint64       `json:"seq"`
	Time    time.Time    `json:"time"`
	Tenant  string       `json:"tenant"`
	Service string       `json:"service"`
	Backend string       `json:"backend"`
	From    BackendState `json:"from"`
	To      BackendState `json:"to"`
	Reason  string       `json:"reason"`
}

// ResultRecord is one attestation result kept in a subject's history.
type ResultRecord struct {
	Seq    uint64        `json:"seq"`
	Result attest.Result `json:"result"`
}

// BackendStatus is a backend's admission state as the gateway sees it now.
type BackendStatus struct {
	State      BackendState   `json:"state"`
	Reason     string         `json:"reason,omitempty"`
	Since      time.Time      `json:"since"`
	LastResult *attest.Result `json:"last_result,omitempty"`
}
