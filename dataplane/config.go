package dataplane

import (
	"fmt"
	"time"
)

// Config holds the fast path's load-time options: the volatile const globals of
// bpf/lib/config.h, rewritten before the program is verified.
type Config struct {
	CTTCPTimeout        time.Duration // idle lifetime of a TCP flow
	CTTCPClosingTimeout time.Duration // idle lifetime after FIN or RST
	CTUDPTimeout        time.Duration // idle lifetime of a UDP flow
	CTRefresh           time.Duration // least interval between two last-seen writes
	// RouteTTL is how long an established flow reuses its route (and the egress and
	// policy checks made with it) before looking it up again; configuration changes
	// invalidate it at once, routes and neighbours changed behind moat's back after
	// at most this long.
	RouteTTL time.Duration
	HashSeed uint32 // seed of the flow hash that indexes Maglev tables
	// Flow events: which kinds (EventsNew|EventsEnd|EventsDrop), and a per-CPU token
	// bucket of EventRate events per second with EventBurst of them at once.
	EventMask  uint32
	EventRate  uint32
	EventBurst uint32
}

// Kinds of flow events, for Config.EventMask.
const (
	EventsNew  = 1 << 0
	EventsEnd  = 1 << 1
	EventsDrop = 1 << 2
)

// DefaultConfig returns the values compiled into the object (TestDefaultConfigMatchesObject
// keeps the two equal).
func DefaultConfig() Config {
	return Config{
		CTTCPTimeout:        time.Hour,
		CTTCPClosingTimeout: 10 * time.Second,
		CTUDPTimeout:        time.Minute,
		CTRefresh:           time.Second,
		RouteTTL:            time.Second,
		HashSeed:            0x6d6f6174,
		EventMask:           EventsNew | EventsEnd | EventsDrop,
		EventRate:           10000,
		EventBurst:          1000,
	}
}

// Validate refuses options the program cannot honour.
func (c Config) Validate() error {
	for _, d := range []struct {
		name string
		v    time.Duration
	}{
		{"tcp timeout", c.CTTCPTimeout}, {"tcp closing timeout", c.CTTCPClosingTimeout},
		{"udp timeout", c.CTUDPTimeout}, {"refresh interval", c.CTRefresh}, {"route reuse time", c.RouteTTL},
	} {
		if d.v <= 0 {
			return fmt.Errorf("%s %v: must be positive", d.name, d.v)
		}
	}
	if c.CTRefresh >= min(c.CTTCPClosingTimeout, c.CTUDPTimeout, c.CTTCPTimeout) {
		return fmt.Errorf("conntrack refresh interval %v must be shorter than every timeout", c.CTRefresh)
	}
	if c.EventMask&^(EventsNew|EventsEnd|EventsDrop) != 0 {
		return fmt.Errorf("event mask %#x has unknown bits", c.EventMask)
	}
	// The token bucket refills whole after one idle second only if burst <= rate
	// (bpf/lib/events.h relies on it to bound its arithmetic).
	if c.EventBurst > c.EventRate {
		return fmt.Errorf("event burst %d above event rate %d per second", c.EventBurst, c.EventRate)
	}
	return nil
}
