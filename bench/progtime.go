package bench

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// The busy-core figures of the XDP systems hold their program and the kernel's work
// around it (veth receive, the redirect, waking the far end). How much is the program
// is measured apart: the kernel's BPF run-time statistics count every run of a
// program and its time, but cost two clock reads per run, so they are switched on
// only for a separate burst of the scenario's traffic, never while rates are measured.

// programBurst is how long the traffic of a program-time measurement runs.
const programBurst = 300 * time.Millisecond

// ProgramTime is what an XDP system's program cost per frame in one scenario.
type ProgramTime struct {
	Scenario string  `json:"scenario"`
	System   string  `json:"system"`
	Flows    int     `json:"flows,omitempty"`
	NsPerRun float64 `json:"ns_per_run"` // median over the bursts of the mean run time per frame
	Runs     uint64  `json:"runs"`       // frames it was measured over, all bursts
	// Bursts holds each burst's mean run time per frame, one burst per repetition.
	Bursts []float64 `json:"bursts_ns_per_run"`
	// CoreShare is the share of the system's busy core that its program accounts for
	// in the rate measurement: NsPerRun × frames handled per busy core.
	CoreShare float64 `json:"core_share,omitempty"`
}

// measureProgramTime runs fresh traffic of sc through sys with BPF statistics on and
// returns its program's mean run time per frame.
func (b *bencher) measureProgramTime(ctx context.Context, sys *sut, sc packetScenario) (ProgramTime, error) {
	pt := ProgramTime{Scenario: sc.name, System: sys.name, Flows: sc.flows}
	ts, err := b.freshTraffic(ctx, sys, sc) // fresh flows: new flows must be new again
	if err != nil {
		return pt, err
	}
	stats, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		return pt, fmt.Errorf("enable BPF run-time statistics: %w", err)
	}
	defer stats.Close()
	t0, n0, err := programStats(sys.prog)
	if err != nil {
		return pt, err
	}
	if _, err := b.runTraffic(ctx, ts, programBurst); err != nil {
		return pt, err
	}
	time.Sleep(30 * time.Millisecond) // let the queues drain
	t1, n1, err := programStats(sys.prog)
	if err != nil {
		return pt, err
	}
	if n1 <= n0 {
		return pt, errors.New("program time: the program did not run")
	}
	pt.Runs = n1 - n0
	pt.NsPerRun = float64(t1-t0) / float64(pt.Runs)
	pt.Bursts = []float64{pt.NsPerRun}
	return pt, nil
}

// addProgramTime adds a burst to the report's program time of its scenario and system.
func (b *bencher) addProgramTime(pt ProgramTime) {
	for i := range b.rep.ProgramTimes {
		p := &b.rep.ProgramTimes[i]
		if p.Scenario == pt.Scenario && p.System == pt.System && p.Flows == pt.Flows {
			p.Runs += pt.Runs
			p.Bursts = append(p.Bursts, pt.Bursts...)
			p.NsPerRun = median(p.Bursts)
			return
		}
	}
	b.rep.ProgramTimes = append(b.rep.ProgramTimes, pt)
}

func programStats(p *ebpf.Program) (time.Duration, uint64, error) {
	st, err := p.Stats()
	if err != nil {
		return 0, 0, fmt.Errorf("program statistics: %w", err)
	}
	return st.Runtime, st.RunCount, nil
}
