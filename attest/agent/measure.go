package agent

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"

	"github.com/seed4c/moat/attest"
	"github.com/seed4c/moat/attest/mlog"
)

// Measurer measures files into a PCR and keeps the log that replays to it. A file is
// extended when first measured and again whenever its content changes (or it
// disappears, or comes back), like IMA: the log grows with changes, not with time, and
// a change, once measured, stays in the PCR until the next reboot.
type Measurer struct {
	se    attest.SE
	pcr   int
	files []string
	// stateFile keeps the log across agent restarts within one boot: the PCR keeps its
	// extensions when the agent restarts, so the log must too. "" keeps it in memory.
	stateFile string

	mu   sync.Mutex
	log  mlog.Log
	last map[string]mlog.Entry
}

// NewMeasurer prepares a Measurer and reconciles it with the PCR: a PCR at zero starts a
// new log; a PCR that the saved log replays to continues it; anything else is an error
// (another program extends this PCR, or the saved log was lost), since no log could
// ever replay to it before the next reboot.
func NewMeasurer(se attest.SE, pcr int, files []string, stateFile string) (*Measurer, error) {
	m := &Measurer{se: se, pcr: pcr, files: files, stateFile: stateFile, log: mlog.Log{PCR: pcr}, last: map[string]mlog.Entry{}}
	vals, err := se.ReadPCRs([]int{pcr})
	if err != nil {
		return nil, fmt.Errorf("measurer: %w", err)
	}
	current := vals[0].Digest
	if bytes.Equal(current, make([]byte, 32)) {
		return m, m.save()
	}
	if stateFile != "" {
		b, err := os.ReadFile(stateFile)
		if err == nil {
			saved, err := mlog.Decode(b)
			if err == nil && saved.PCR == pcr {
				if replay := saved.Replay(); bytes.Equal(replay[:], current) {
					m.log = *saved
					for _, e := range saved.Entries {
						m.last[e.Path] = e
					}
					return m, nil
				}
			}
		}
	}
	return nil, fmt.Errorf("measurer: PCR %d holds %x, which no saved log (%q) replays to: another program extends it, or the log was lost; reboot, or configure another PCR", pcr, current, stateFile)
}

// Measure hashes every file and extends those that changed since their last
// measurement. It returns how many entries it added.
func (m *Measurer) Measure() (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	added := 0
	for _, path := range m.files {
		e := mlog.MeasureFile(path)
		if prev, ok := m.last[path]; ok && prev == e {
			continue
		}
		// Extend before logging: if the extend fails the log must not claim it.
		if err := m.se.ExtendPCR(m.pcr, e.EventDigest()); err != nil {
			return added, fmt.Errorf("measure %s: %w", path, err)
		}
		m.log.Entries = append(m.log.Entries, e)
		m.last[path] = e
		added++
	}
	if added > 0 {
		if err := m.save(); err != nil {
			return added, err
		}
	}
	return added, nil
}

// Log returns a copy of the measurement log.
func (m *Measurer) Log() *mlog.Log {
	m.mu.Lock()
	defer m.mu.Unlock()
	return &mlog.Log{PCR: m.log.PCR, Entries: append([]mlog.Entry(nil), m.log.Entries...)}
}

// save writes the log atomically (temporary file, then rename), so a crash leaves the
// old log or the new one, never half of one.
func (m *Measurer) save() error {
	if m.stateFile == "" {
		return nil
	}
	b, err := m.log.MarshalBinary()
	if err != nil {
		return fmt.Errorf("save measurement log: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(m.stateFile), 0o700); err != nil {
		return fmt.Errorf("save measurement log: %w", err)
	}
	tmp := m.stateFile + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("save measurement log: %w", err)
	}
	if err := os.Rename(tmp, m.stateFile); err != nil {
		return errors.Join(fmt.Errorf("save measurement log: %w", err), os.Remove(tmp))
	}
	return nil
}
