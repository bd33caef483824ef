package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/seed4c/moat/internal/netns"
)

// TestPrivilegedAdmissionPhase measures admission and eviction on moat and on the
// nftables baseline with the smoke profile: every round is measured (no error), each
// latency is a real one (above zero: a round in which the sender was starved while the
// decision took effect is measured again; below the harness's timeout), and the report
// says how each system was driven. It asserts no speed.
func TestPrivilegedAdmissionPhase(t *testing.T) {
	netns.RequireRoot(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	p := Profiles["smoke"]
	rep, err := Run(ctx, Options{Profile: p, Systems: []string{SysMoat, SysNft}, Scenarios: []string{ScAdmission, ScEviction},
		Instance: netns.UniqueName("badm"), Command: t.Name()})
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range rep.Errors {
		t.Errorf("run error: %s", e)
	}
	for _, sys := range []string{SysMoat, SysNft} {
		for _, sc := range []string{ScAdmission, ScEviction} {
			r := rep.Find(sc, sys, 0)
			if r == nil {
				t.Errorf("no %s record for %s", sc, sys)
				continue
			}
			if r.Kind != KindLatency || r.Latency == nil {
				t.Errorf("%s %s: kind %s, latency %v", sys, sc, r.Kind, r.Latency)
				continue
			}
			if r.Latency.P99 >= float64(decisionTimeout.Microseconds()) || r.Latency.P50 <= 0 {
				t.Errorf("%s %s: latency %+v µs", sys, sc, *r.Latency)
			}
			if len(r.Notes) == 0 || !strings.Contains(r.Notes[0], "rounds") {
				t.Errorf("%s %s: notes %q do not say what was measured", sys, sc, r.Notes)
			}
		}
	}
	if _, ok := rep.Ratios[SysNft][ScEviction]; !ok {
		t.Errorf("no eviction ratio against nftables: %v", rep.Ratios)
	}
}

// TestPrivilegedEvictionMeasuredFromTheBackend shows that the eviction measurement
// watches the backend, not the system's word: nftables without the conntrack delete
// (only the map element removed, as a script that forgets conntrack would do) keeps
// forwarding the backend's established flows, and the harness reports it as not
// evicted instead of timing anything.
func TestPrivilegedEvictionMeasuredFromTheBackend(t *testing.T) {
	netns.RequireRoot(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	b := &bencher{profile: Profiles["smoke"], opts: Options{Profile: Profiles["smoke"]}, gens: map[*netns.Host]*Generator{},
		sinks: map[*netns.Host]*Sink{}, rep: &Report{}, prog: newProgress(io.Discard, 1)}
	scene, err := NewScene(netns.UniqueName("bevict"), nil)
	if err != nil {
		t.Fatal(err)
	}
	b.scene = scene
	defer func() {
		if err := b.close(); err != nil {
			t.Error(err)
		}
	}()
	if err := b.attachSinks(scene.Topo.PeerHosts()); err != nil {
		t.Fatal(err)
	}
	ta := scene.Topo.Tenants[0]
	sink := b.sinks[ta.Backends[0].Host]
	err = b.withSystem(SysNft, KindPackets, func(*sut) error {
		adm, err := b.nftAdmitter()
		if err != nil {
			return err
		}
		// The complete eviction works: a latency, no error (measured again, as the
		// phase does, when the sender was starved while it took effect).
		for try := 0; ; try++ {
			_, err := b.timeEviction(ctx, sink, adm)
			if err == nil {
				break
			}
			if !errors.Is(err, errStarvedSender) || try == 2 {
				return fmt.Errorf("eviction with the conntrack delete: %w", err)
			}
			if err := adm.admit(); err != nil {
				return err
			}
		}
		if err := adm.admit(); err != nil {
			return err
		}
		adm.evict = func() error {
			return scene.Topo.GW.Do(func() error {
				out, err := exec.Command("nft", "delete", "element", "ip", nftTable, nftBackendMap(ta.Name), "{ 0 }").CombinedOutput()
				if err != nil {
					return fmt.Errorf("%v: %s", err, out)
				}
				return nil
			})
		}
		_, err = b.timeEviction(ctx, sink, adm)
		if err == nil || !strings.Contains(err.Error(), "still received frames") {
			return fmt.Errorf("eviction without the conntrack delete: got %v, want the backend still receiving", err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range b.rep.Errors {
		t.Errorf("run error: %s", e)
	}
}
