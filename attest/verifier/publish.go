package verifier

import (
	"sync"

	"github.com/seed4c/moat/attest"
)

// maxQueuedRefused: past this queue length, refused results are dropped rather than
// queued (a flood of garbage must not grow memory; affirming, contraindicated and
// expired results are always queued).
const maxQueuedRefused = 4096

// publisher delivers results to the subscriber in order from one goroutine, so that a
// slow subscriber delays deliveries but never the appraisals.
type publisher struct {
	sub   Subscriber
	stats *stats

	mu     sync.Mutex
	queue  []attest.Result
	wake   chan struct{}
	closed bool
	done   chan struct{}
}

func newPublisher(sub Subscriber, st *stats) *publisher {
	p := &publisher{sub: sub, stats: st, wake: make(chan struct{}, 1), done: make(chan struct{})}
	go p.run()
	return p
}

func (p *publisher) publish(r attest.Result) {
	p.stats.count(r)
	if p.sub == nil {
		return
	}
	p.mu.Lock()
	switch {
	case p.closed:
	case r.Status == attest.StatusRefused && len(p.queue) >= maxQueuedRefused:
		p.stats.mu.Lock()
		p.stats.s.DroppedRefused++
		p.stats.mu.Unlock()
	default:
		p.queue = append(p.queue, r)
	}
	p.mu.Unlock()
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

func (p *publisher) run() {
	defer close(p.done)
	for {
		p.mu.Lock()
		batch := p.queue
		p.queue = nil
		closed := p.closed
		p.mu.Unlock()
		for _, r := range batch {
			p.sub.Notify(r)
		}
		if closed && len(batch) == 0 {
			return
		}
		if len(batch) == 0 {
			<-p.wake
		}
	}
}

// close delivers what is queued and stops the goroutine.
func (p *publisher) close() {
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	select {
	case p.wake <- struct{}{}:
	default:
	}
	<-p.done
}
