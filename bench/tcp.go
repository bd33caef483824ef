package bench

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/seed4c/moat/internal/netns"
)

// tcpServer runs on every backend: a connection whose first byte is 'S' is a bulk
// stream (read to the end, then answer the byte count); any other is echoed back.
type tcpServer struct {
	ln net.Listener
	wg sync.WaitGroup
	mu sync.Mutex
	cs map[net.Conn]bool
}

func startTCPServer(h *netns.Host, addr string) (*tcpServer, error) {
	ln, err := h.Listen("tcp4", addr)
	if err != nil {
		return nil, fmt.Errorf("bench server in %s: %w", h.Name, err)
	}
	s := &tcpServer{ln: ln, cs: map[net.Conn]bool{}}
	s.wg.Add(1)
	go s.serve()
	return s, nil
}

func (s *tcpServer) serve() {
	defer s.wg.Done()
	for {
		c, err := s.ln.Accept()
		if err != nil {
			return
		}
		s.mu.Lock()
		s.cs[c] = true
		s.mu.Unlock()
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer func() {
				s.mu.Lock()
				delete(s.cs, c)
				s.mu.Unlock()
				c.Close()
			}()
			var first [1]byte
			if _, err := io.ReadFull(c, first[:]); err != nil {
				return
			}
			if first[0] == 'S' {
				n, _ := io.Copy(io.Discard, c)
				var b [8]byte
				binary.BigEndian.PutUint64(b[:], uint64(n))
				_, _ = c.Write(b[:])
				return
			}
			if _, err := c.Write(first[:]); err != nil {
				return
			}
			_, _ = io.Copy(c, c)
		}()
	}
}

func (s *tcpServer) close() {
	s.ln.Close()
	s.mu.Lock()
	for c := range s.cs {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

// latencies turns durations into percentiles (microseconds).
func latencies(d []time.Duration) *Latency {
	if len(d) == 0 {
		return nil
	}
	slices.Sort(d)
	at := func(q float64) float64 { return float64(quantile(d, q).Nanoseconds()) / 1e3 }
	return &Latency{P50: at(0.50), P90: at(0.90), P99: at(0.99), P999: at(0.999)}
}

// quantile returns the q-quantile (0 <= q <= 1) of sorted, non-empty durations: the
// value at rank floor(q·(n-1)), no interpolation.
func quantile(sorted []time.Duration, q float64) time.Duration {
	return sorted[int(q*float64(len(sorted)-1))]
}

// tcpTarget is where a system's clients connect: the VIP, or for plain forwarding
// (which balances nothing) the first backend.
func (b *bencher) tcpTarget(system string) string {
	topo := b.scene.Topo
	if system == SysPlain {
		be := topo.Tenants[0].Backends[0]
		return netip.AddrPortFrom(be.Addr, topo.Opts.BackendPort).String()
	}
	return netip.AddrPortFrom(topo.Opts.VIP, topo.Opts.Port).String()
}

// connectionsPerSecond runs workers that connect, exchange one byte and close, for d.
func (b *bencher) connectionsPerSecond(ctx context.Context, system string, d time.Duration) (Sample, error) {
	tn := b.scene.Topo.Tenants[0]
	target := b.tcpTarget(system)
	var (
		done, failed atomic.Int64
		mu           sync.Mutex
		lat          []time.Duration
		wg           sync.WaitGroup
		firstErr     error // under mu: the first failure, for the message
	)
	end := time.Now().Add(d)
	t0 := time.Now()
	for w := 0; w < b.profile.Conns; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			src := tn.ClientAddrs[w%len(tn.ClientAddrs)]
			dialer := &net.Dialer{Timeout: time.Second, LocalAddr: &net.TCPAddr{IP: src.AsSlice()}}
			var mine []time.Duration
			buf := []byte{'x'}
			for ctx.Err() == nil && time.Now().Before(end) {
				st := time.Now()
				err := func() error {
					c, err := tn.Client.Dial(dialer, "tcp4", target)
					if err != nil {
						return err
					}
					defer c.Close()
					_ = c.SetDeadline(time.Now().Add(time.Second))
					if _, err := c.Write(buf); err != nil {
						return err
					}
					_, err = io.ReadFull(c, buf)
					return err
				}()
				if err != nil {
					failed.Add(1)
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
					continue
				}
				mine = append(mine, time.Since(st))
				done.Add(1)
			}
			mu.Lock()
			lat = append(lat, mine...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	el := time.Since(t0).Seconds()
	smp := Sample{Seconds: el, ConnsPerSec: float64(done.Load()) / el, Latency: latencies(lat)}
	if done.Load() == 0 {
		return smp, fmt.Errorf("%s: no connection to %s completed: %v", system, target, firstErr)
	}
	if f := failed.Load(); f > done.Load()/100 {
		return smp, fmt.Errorf("%s: %d of %d connections to %s failed: %v", system, f, f+done.Load(), target, firstErr)
	}
	return smp, nil
}

// throughput sends one bulk stream for d and returns what the backend received.
func (b *bencher) throughput(ctx context.Context, system string, d time.Duration) (Sample, error) {
	tn := b.scene.Topo.Tenants[0]
	c, err := tn.Client.Dial(&net.Dialer{Timeout: 2 * time.Second}, "tcp4", b.tcpTarget(system))
	if err != nil {
		return Sample{}, fmt.Errorf("%s: bulk stream: %w", system, err)
	}
	defer c.Close()
	t0 := time.Now()
	buf := make([]byte, 64<<10)
	buf[0] = 'S'
	end := t0.Add(d)
	_ = c.SetDeadline(end.Add(5 * time.Second))
	for ctx.Err() == nil && time.Now().Before(end) {
		if _, err := c.Write(buf); err != nil {
			return Sample{}, fmt.Errorf("%s: bulk stream: %w", system, err)
		}
	}
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		return Sample{}, err
	}
	var n [8]byte
	if _, err := io.ReadFull(c, n[:]); err != nil {
		return Sample{}, fmt.Errorf("%s: bulk stream count: %w", system, err)
	}
	el := time.Since(t0).Seconds()
	bytes := binary.BigEndian.Uint64(n[:]) + 1
	return Sample{Seconds: el, Gbps: float64(bytes) * 8 / el / 1e9}, nil
}

// requestResponse exchanges one byte at a time on one connection for d.
func (b *bencher) requestResponse(ctx context.Context, system string, d time.Duration) (Sample, error) {
	tn := b.scene.Topo.Tenants[0]
	c, err := tn.Client.Dial(&net.Dialer{Timeout: 2 * time.Second}, "tcp4", b.tcpTarget(system))
	if err != nil {
		return Sample{}, fmt.Errorf("%s: request/response: %w", system, err)
	}
	defer c.Close()
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetNoDelay(true)
	}
	var lat []time.Duration
	buf := []byte{'r'}
	t0 := time.Now()
	end := t0.Add(d)
	_ = c.SetDeadline(end.Add(2 * time.Second))
	for ctx.Err() == nil && time.Now().Before(end) {
		st := time.Now()
		if _, err := c.Write(buf); err != nil {
			return Sample{}, err
		}
		if _, err := io.ReadFull(c, buf); err != nil {
			return Sample{}, err
		}
		lat = append(lat, time.Since(st))
	}
	el := time.Since(t0).Seconds()
	if len(lat) == 0 {
		return Sample{}, errors.New("request/response: no exchange")
	}
	return Sample{Seconds: el, TPS: float64(len(lat)) / el, Latency: latencies(lat)}, nil
}

// measureTCP runs one TCP scenario on one system with CPU accounting.
func (b *bencher) measureTCP(ctx context.Context, sys *sut, scenario string) (Sample, error) {
	c0, err := sys.cpuTime()
	if err != nil {
		return Sample{}, err
	}
	t0 := time.Now()
	var smp Sample
	switch scenario {
	case ScTCPConnections:
		smp, err = b.connectionsPerSecond(ctx, sys.name, b.profile.TCPDuration)
	case ScTCPThroughput:
		smp, err = b.throughput(ctx, sys.name, b.profile.TCPDuration)
	case ScTCPRR:
		smp, err = b.requestResponse(ctx, sys.name, b.profile.TCPDuration)
	default:
		err = fmt.Errorf("unknown TCP scenario %q", scenario)
	}
	if err != nil {
		return smp, err
	}
	el := time.Since(t0).Seconds()
	c1, err := sys.cpuTime()
	if err != nil {
		return smp, err
	}
	cpu := float64(c1-c0) / 1e9
	smp.CPU = cpu / el
	if cpu > 0 {
		smp.ConnsPerCore = smp.ConnsPerSec * smp.Seconds / cpu
		smp.TPSPerCore = smp.TPS * smp.Seconds / cpu
		smp.GbpsPerCore = smp.Gbps * smp.Seconds / cpu
	}
	return smp, nil
}
