package bench

import (
	"fmt"
	"io"
	"strings"
	"sync"
	"time"
)

// progress draws a bar with the current step, elapsed time and an estimate of what is
// left, redrawn in place on a terminal.
type progress struct {
	mu    sync.Mutex
	w     io.Writer
	total int
	done  int
	label string
	start time.Time
	stop  chan struct{}
	wg    sync.WaitGroup
}

func newProgress(w io.Writer, total int) *progress {
	p := &progress{w: w, total: total, start: time.Now(), stop: make(chan struct{})}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		t := time.NewTicker(250 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-p.stop:
				return
			case <-t.C:
				p.draw()
			}
		}
	}()
	return p
}

// bar renders done/total as a bar of width cells.
func bar(done, total, width int) string {
	if total <= 0 {
		total = 1
	}
	if done > total {
		done = total
	}
	n := done * width / total
	return "[" + strings.Repeat("#", n) + strings.Repeat(".", width-n) + "]"
}

func (p *progress) line() string {
	el := time.Since(p.start).Round(time.Second)
	eta := ""
	if p.done > 1 {
		left := time.Duration(float64(time.Since(p.start)) / float64(p.done-1) * float64(p.total-p.done+1))
		eta = fmt.Sprintf(" ~%s left", left.Round(time.Second))
	}
	return fmt.Sprintf("\r%s %3d/%d %s%s  %s\x1b[K", bar(p.done, p.total, 30), p.done, p.total, el, eta, p.label)
}

func (p *progress) draw() {
	p.mu.Lock()
	defer p.mu.Unlock()
	fmt.Fprint(p.w, p.line())
}

func (p *progress) step(label string) {
	p.mu.Lock()
	p.done++
	p.label = label
	p.mu.Unlock()
	p.draw()
}

// note prints a line above the bar.
func (p *progress) note(s string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	fmt.Fprintf(p.w, "\r%s\x1b[K\n", s)
}

func (p *progress) finish() {
	close(p.stop)
	p.wg.Wait()
	p.mu.Lock()
	defer p.mu.Unlock()
	fmt.Fprint(p.w, "\n")
}
