package overlay

import (
	"github.com/seed4c/moat/internal/netns"
	"github.com/seed4c/moat/internal/underlay"
)

// The underlay capture and its verdict live in internal/underlay, shared with the
// gateway's end-to-end test.

type capture struct{ *underlay.Capture }

// startCapture records every frame between the nodes in the underlay's namespace.
func startCapture(h *netns.Host) (*capture, error) {
	c, err := underlay.Start(h, "")
	return &capture{c}, err
}

func (c *capture) stop() [][]byte { return c.Stop() }

// underlayVerdict: only WireGuard (and ARP), and no plaintext marker.
func underlayVerdict(frames [][]byte, port uint16, marker []byte) (map[string]int, error) {
	return underlay.Verdict(frames, port, marker)
}
