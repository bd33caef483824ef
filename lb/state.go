package lb

import (
	"errors"
	"fmt"
	"strconv"
)

// State is a backend's admission state, as decided by attestation and by the operator.
//
// The zero value is StateEvicted so that anything uninitialised (a zeroed map value, a
// missing field in a decoded document, a new struct) is fail-closed: it receives no
// packet. Values other than the three constants are invalid and accept no flow at all.
type State uint8

const (
	// StateEvicted: attestation failed or expired, or the backend was removed. It gets
	// no packet, and its existing flows are cut (their conntrack entries stop matching).
	StateEvicted State = 0
	// StateAdmitted: the backend receives new and existing flows.
	StateAdmitted State = 1
	// StateDraining: the backend keeps its existing flows only. It is never in a Maglev
	// table, so no new flow can land on it.
	StateDraining State = 2
)

// ErrInvalidState is returned (wrapped) when text or a number does not name a State.
var ErrInvalidState = errors.New("invalid backend state")

var stateNames = [...]string{
	StateEvicted:  "evicted",
	StateAdmitted: "admitted",
	StateDraining: "draining",
}

func (s State) valid() bool { return int(s) < len(stateNames) }

// String returns "evicted", "admitted" or "draining", and "State(n)" for an invalid
// value so that logs show what was actually there.
func (s State) String() string {
	if !s.valid() {
		return "State(" + strconv.Itoa(int(s)) + ")"
	}
	return stateNames[s]
}

// ParseState is the inverse of String for the three valid states. It is exact (no case
// folding, no trimming): these names travel in API documents and audit logs, where two
// spellings of one state would only make records harder to compare.
func ParseState(s string) (State, error) {
	for st, name := range stateNames {
		if s == name {
			return State(st), nil
		}
	}
	return StateEvicted, fmt.Errorf("lb: parse state %q: %w (want evicted, admitted or draining)", s, ErrInvalidState)
}

// AcceptsNewFlows reports whether a new flow may be assigned to the backend: only an
// admitted backend, which is also the only kind that belongs in a Maglev table.
func (s State) AcceptsNewFlows() bool { return s == StateAdmitted }

// AcceptsExistingFlows reports whether packets of a flow already pinned to the backend
// by conntrack may still reach it: admitted or draining. An evicted backend's flows are
// cut at once, since its host is no longer known to be in a good state.
func (s State) AcceptsExistingFlows() bool { return s == StateAdmitted || s == StateDraining }

// MarshalText encodes the state by name, so that JSON and YAML documents carry
// "draining" rather than 2. An invalid state is an error rather than a number nobody
// can read back.
func (s State) MarshalText() ([]byte, error) {
	if !s.valid() {
		return nil, fmt.Errorf("lb: marshal state %d: %w", uint8(s), ErrInvalidState)
	}
	return []byte(stateNames[s]), nil
}

// UnmarshalText decodes a name written by MarshalText. On error the state is left
// unchanged.
func (s *State) UnmarshalText(text []byte) error {
	st, err := ParseState(string(text))
	if err != nil {
		return err
	}
	*s = st
	return nil
}
