package dataplane

import (
	"fmt"
	"strings"
	"sync"

	"github.com/cilium/ebpf/btf"
)

// Reason is why the fast path dropped or passed a packet: enum reason of
// bpf/lib/reason.h. Every reason has a counter; drops carry one in their flow event.
type Reason uint32

// The reasons, by their C names (values come from the generated bindings, never typed
// twice).
const (
	ReasonNone             = Reason(gatewayReasonREASON_NONE)
	DropTruncatedL2        = Reason(gatewayReasonDROP_TRUNCATED_L2)
	DropVLANStacked        = Reason(gatewayReasonDROP_VLAN_STACKED)
	DropNoTenant           = Reason(gatewayReasonDROP_NO_TENANT)
	DropIPv6Unsupported    = Reason(gatewayReasonDROP_IPV6UNSUPPORTED)
	DropUnsupportedL3      = Reason(gatewayReasonDROP_UNSUPPORTED_L3)
	DropTruncatedL3        = Reason(gatewayReasonDROP_TRUNCATED_L3)
	DropBadIPVersion       = Reason(gatewayReasonDROP_BAD_IP_VERSION)
	DropBadIHL             = Reason(gatewayReasonDROP_BAD_IHL)
	DropBadIPLen           = Reason(gatewayReasonDROP_BAD_IP_LEN)
	DropBadIPCsum          = Reason(gatewayReasonDROP_BAD_IP_CSUM)
	DropFragment           = Reason(gatewayReasonDROP_FRAGMENT)
	DropTTLExceeded        = Reason(gatewayReasonDROP_TTL_EXCEEDED)
	DropICMPUnsupported    = Reason(gatewayReasonDROP_ICMP_UNSUPPORTED)
	DropUnsupportedL4      = Reason(gatewayReasonDROP_UNSUPPORTED_L4)
	DropTruncatedL4        = Reason(gatewayReasonDROP_TRUNCATED_L4)
	DropBadTCPHdr          = Reason(gatewayReasonDROP_BAD_TCP_HDR)
	DropBadUDPLen          = Reason(gatewayReasonDROP_BAD_UDP_LEN)
	DropNoService          = Reason(gatewayReasonDROP_NO_SERVICE)
	DropPolicyDenied       = Reason(gatewayReasonDROP_POLICY_DENIED)
	DropBackendUnavailable = Reason(gatewayReasonDROP_BACKEND_UNAVAILABLE)
	DropBackendEvicted     = Reason(gatewayReasonDROP_BACKEND_EVICTED)
	DropTenantMismatch     = Reason(gatewayReasonDROP_TENANT_MISMATCH)
	DropReplyWrongIface    = Reason(gatewayReasonDROP_REPLY_WRONG_IFACE)
	DropFIBUnreachable     = Reason(gatewayReasonDROP_FIB_UNREACHABLE)
	DropFIBFragNeeded      = Reason(gatewayReasonDROP_FIB_FRAG_NEEDED)
	DropFIBFwdDisabled     = Reason(gatewayReasonDROP_FIB_FWD_DISABLED)
	DropNoNeighTagged      = Reason(gatewayReasonDROP_NO_NEIGH_TAGGED)
	DropEgressNotAttached  = Reason(gatewayReasonDROP_EGRESS_NOT_ATTACHED)
	DropNoTXPort           = Reason(gatewayReasonDROP_NO_TX_PORT)
	DropAdjustFailed       = Reason(gatewayReasonDROP_ADJUST_FAILED)
	PassARP                = Reason(gatewayReasonPASS_ARP)
	PassNoNeigh            = Reason(gatewayReasonPASS_NO_NEIGH)
	PassHostService        = Reason(gatewayReasonPASS_HOST_SERVICE)
)

// NumReasons is the number of reasons, the size of the reason counter array.
const NumReasons = int(gatewayReasonREASON_MAX)

// IsDrop reports whether packets with this reason were dropped.
func (r Reason) IsDrop() bool { return r != ReasonNone && r < PassARP }

// IsPass reports whether packets with this reason were handed to the kernel stack.
func (r Reason) IsPass() bool { return r >= PassARP && int(r) < NumReasons }

// String returns the C enumerator's name in lower case ("drop_no_tenant"), read from
// the object's BTF so that a reason added in C is named without touching Go.
func (r Reason) String() string {
	names, err := reasonNames()
	if err == nil {
		if n, ok := names[r]; ok {
			return n
		}
	}
	return fmt.Sprintf("reason(%d)", uint32(r))
}

var reasonNames = sync.OnceValues(func() (map[Reason]string, error) {
	spec, err := loadGateway()
	if err != nil {
		return nil, err
	}
	var enum *btf.Enum
	if err := spec.Types.TypeByName("reason", &enum); err != nil {
		return nil, fmt.Errorf("find enum reason in the object's BTF: %w", err)
	}
	names := make(map[Reason]string, len(enum.Values))
	for _, v := range enum.Values {
		if v.Name == "REASON_MAX" {
			continue
		}
		names[Reason(v.Value)] = strings.ToLower(v.Name)
	}
	return names, nil
})
