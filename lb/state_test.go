package lb

import (
	"encoding/json"
	"errors"
	"testing"
)

var validStates = []State{StateEvicted, StateAdmitted, StateDraining}

func TestStateZeroValueIsFailClosed(t *testing.T) {
	var backend struct{ State State }
	if backend.State != StateEvicted {
		t.Fatalf("zero State is %v, want evicted", backend.State)
	}
	if backend.State.AcceptsNewFlows() || backend.State.AcceptsExistingFlows() {
		t.Fatal("zero State accepts flows")
	}
	// A document that omits the state decodes to evicted, not to admitted.
	if err := json.Unmarshal([]byte(`{}`), &backend); err != nil || backend.State != StateEvicted {
		t.Fatalf("decoding {}: state %v, error %v; want evicted", backend.State, err)
	}
}

func TestStateFlows(t *testing.T) {
	for _, tc := range []struct {
		s             State
		name          string
		new, existing bool
	}{
		{StateEvicted, "evicted", false, false},
		{StateAdmitted, "admitted", true, true},
		{StateDraining, "draining", false, true},
		{State(3), "State(3)", false, false},
		{State(255), "State(255)", false, false},
	} {
		if got := tc.s.String(); got != tc.name {
			t.Errorf("State(%d).String() = %q, want %q", uint8(tc.s), got, tc.name)
		}
		if got := tc.s.AcceptsNewFlows(); got != tc.new {
			t.Errorf("%v.AcceptsNewFlows() = %v, want %v", tc.s, got, tc.new)
		}
		if got := tc.s.AcceptsExistingFlows(); got != tc.existing {
			t.Errorf("%v.AcceptsExistingFlows() = %v, want %v", tc.s, got, tc.existing)
		}
	}
}

func TestStateRoundTrip(t *testing.T) {
	for _, s := range validStates {
		if got, err := ParseState(s.String()); err != nil || got != s {
			t.Errorf("ParseState(%q) = %v, %v; want %v", s.String(), got, err, s)
		}
		doc, err := json.Marshal(map[string]State{"state": s})
		if err != nil {
			t.Fatalf("marshal %v: %v", s, err)
		}
		if want := `{"state":"` + s.String() + `"}`; string(doc) != want {
			t.Errorf("marshal %v: %s, want %s", s, doc, want)
		}
		var back map[string]State
		if err := json.Unmarshal(doc, &back); err != nil || back["state"] != s {
			t.Errorf("unmarshal %s: %v, %v; want %v", doc, back["state"], err, s)
		}
	}
}

func TestStateInvalid(t *testing.T) {
	for _, text := range []string{"", "Admitted", " admitted", "admitted\n", "State(1)", "1", "evict"} {
		if s, err := ParseState(text); !errors.Is(err, ErrInvalidState) || s != StateEvicted {
			t.Errorf("ParseState(%q) = %v, %v; want evicted and ErrInvalidState", text, s, err)
		}
		s := StateDraining
		if err := s.UnmarshalText([]byte(text)); !errors.Is(err, ErrInvalidState) || s != StateDraining {
			t.Errorf("UnmarshalText(%q): state %v, error %v; want it unchanged and ErrInvalidState", text, s, err)
		}
	}
	if _, err := State(3).MarshalText(); !errors.Is(err, ErrInvalidState) {
		t.Errorf("State(3).MarshalText() error %v, want ErrInvalidState", err)
	}
}
