package netns

import "net"

// FloodLoopback sends UDP datagrams carrying payload over h's loopback, as fast as it
// can, until the returned stop is called (stop waits for the sender to end). Tests use
// it as traffic on another interface than the one they watch.
func (h *Host) FloodLoopback(payload []byte) (stop func(), err error) {
	sink, err := h.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	c, err := h.Dial(&net.Dialer{}, "udp4", sink.LocalAddr().String())
	if err != nil {
		sink.Close()
		return nil, err
	}
	quit, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		defer sink.Close()
		defer c.Close()
		for {
			select {
			case <-quit:
				return
			default:
				_, _ = c.Write(payload)
			}
		}
	}()
	return func() { close(quit); <-done }, nil
}
