// Package mlog is moat's measurement log: the ordered list of what the agent extended
// into its measurement PCR, in a small versioned binary format that replays to the PCR.
//
// Each entry names a file and the SHA-256 of its content. What the agent extends is not
// the content digest alone but the entry's event digest,
//
//	SHA-256("moat mlog v1 event" ‖ kind ‖ len(path) ‖ path ‖ content digest)
//
// so an entry cannot be moved to another path, or a kind swapped, without the replay
// failing. The verifier never trusts a digest carried in the log: it recomputes every
// event digest from the entry's fields (unlike TCG event logs, where the extended digest
// and the event data are separate fields that must be checked against each other).
//
// Encoding (big-endian):
//
//	log   = "MOATMLOG" version:u8=1 pcr:u8 count:u32 entry*count
//	entry = kind:u8 digest:[32]u8 pathLen:u16 path:[pathLen]u8
package mlog

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"unicode/utf8"
)

// Version is the encoding version this package writes and reads.
const Version = 1

const (
	magic     = "MOATMLOG"
	headerLen = len(magic) + 1 + 1 + 4
	// minEntryLen is an entry with an empty path; decoding refuses empty paths, but the
	// bound keeps a forged count from making the decoder allocate.
	minEntryLen = 1 + sha256.Size + 2
	eventLabel  = "moat mlog v1 event"
)

// Limits that bound what a decoder accepts (and so what a hostile log can cost).
const (
	MaxEntries = 1 << 16
	MaxPathLen = 4096
)

// Kind says what an entry records.
type Kind uint8

const (
	// KindFile: Digest is the SHA-256 of the file's content.
	KindFile Kind = 1
	// KindFileMissing: the file could not be read (absent, not a regular file,
	// unreadable); Digest is zero. A required file that is missing fails appraisal.
	KindFileMissing Kind = 2
)

func (k Kind) String() string {
	switch k {
	case KindFile:
		return "file"
	case KindFileMissing:
		return "file-missing"
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// Entry is one measurement.
type Entry struct {
	Kind   Kind
	Path   string
	Digest [sha256.Size]byte
}

// EventDigest is the digest extended into the PCR for this entry.
func (e Entry) EventDigest() [sha256.Size]byte {
	h := sha256.New()
	h.Write([]byte(eventLabel))
	var head [minEntryLen]byte
	head[0] = byte(e.Kind)
	copy(head[1:], e.Digest[:])
	binary.BigEndian.PutUint16(head[1+sha256.Size:], uint16(len(e.Path)))
	h.Write(head[:])
	io.WriteString(h, e.Path)
	var out [sha256.Size]byte
	h.Sum(out[:0])
	return out
}

func (e Entry) appendTo(b []byte) []byte {
	b = append(b, byte(e.Kind))
	b = append(b, e.Digest[:]...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(e.Path)))
	return append(b, e.Path...)
}

func (e Entry) validate() error {
	if e.Kind != KindFile && e.Kind != KindFileMissing {
		return fmt.Errorf("unknown entry kind %d", uint8(e.Kind))
	}
	if e.Kind == KindFileMissing && e.Digest != ([sha256.Size]byte{}) {
		return fmt.Errorf("entry for missing file %q carries a digest", e.Path)
	}
	if e.Path == "" || len(e.Path) > MaxPathLen {
		return fmt.Errorf("path length %d outside 1..%d", len(e.Path), MaxPathLen)
	}
	if !utf8.ValidString(e.Path) || strings.ContainsRune(e.Path, 0) {
		return fmt.Errorf("path %q is not NUL-free UTF-8", e.Path)
	}
	return nil
}

func (e Entry) String() string {
	return fmt.Sprintf("%s sha256:%s %s", e.Kind, hex.EncodeToString(e.Digest[:]), e.Path)
}

// Log is the measurement log of one PCR since the TPM's last reset.
type Log struct {
	PCR     int
	Entries []Entry
}

// Replay returns the PCR value the log produces from a freshly reset (all-zero) PCR.
func (l *Log) Replay() [sha256.Size]byte {
	var pcr [sha256.Size]byte
	for _, e := range l.Entries {
		pcr = Extend(pcr, e.EventDigest())
	}
	return pcr
}

// Extend is the TPM's extend operation on the SHA-256 bank.
func Extend(pcr, digest [sha256.Size]byte) [sha256.Size]byte {
	var buf [2 * sha256.Size]byte
	copy(buf[:], pcr[:])
	copy(buf[sha256.Size:], digest[:])
	return sha256.Sum256(buf[:])
}

// MarshalBinary encodes the log.
func (l *Log) MarshalBinary() ([]byte, error) {
	if l.PCR < 0 || l.PCR > 255 {
		return nil, fmt.Errorf("encode measurement log: PCR %d out of range", l.PCR)
	}
	if len(l.Entries) > MaxEntries {
		return nil, fmt.Errorf("encode measurement log: %d entries, at most %d", len(l.Entries), MaxEntries)
	}
	b := make([]byte, 0, headerLen+len(l.Entries)*(minEntryLen+64))
	b = append(b, magic...)
	b = append(b, Version, byte(l.PCR))
	b = binary.BigEndian.AppendUint32(b, uint32(len(l.Entries)))
	for i, e := range l.Entries {
		if err := e.validate(); err != nil {
			return nil, fmt.Errorf("encode measurement log entry %d: %w", i, err)
		}
		b = e.appendTo(b)
	}
	return b, nil
}

// ErrMalformed marks a log that does not decode.
var ErrMalformed = errors.New("malformed measurement log")

// Decode parses an encoded log strictly: known version, every entry valid, count
// consistent with the length, no trailing bytes. Errors wrap ErrMalformed.
func Decode(b []byte) (*Log, error) {
	if len(b) < headerLen {
		return nil, fmt.Errorf("%w: %d bytes, shorter than the %d-byte header", ErrMalformed, len(b), headerLen)
	}
	if string(b[:len(magic)]) != magic {
		return nil, fmt.Errorf("%w: bad magic %q", ErrMalformed, b[:len(magic)])
	}
	if v := b[len(magic)]; v != Version {
		return nil, fmt.Errorf("%w: version %d, want %d", ErrMalformed, v, Version)
	}
	l := &Log{PCR: int(b[len(magic)+1])}
	count := binary.BigEndian.Uint32(b[len(magic)+2:])
	rest := b[headerLen:]
	if count > MaxEntries || uint64(count)*minEntryLen > uint64(len(rest)) {
		return nil, fmt.Errorf("%w: %d entries cannot fit in %d bytes (limit %d)", ErrMalformed, count, len(rest), MaxEntries)
	}
	l.Entries = make([]Entry, count)
	for i := range l.Entries {
		if len(rest) < minEntryLen {
			return nil, fmt.Errorf("%w: entry %d truncated", ErrMalformed, i)
		}
		e := &l.Entries[i]
		e.Kind = Kind(rest[0])
		copy(e.Digest[:], rest[1:1+sha256.Size])
		n := int(binary.BigEndian.Uint16(rest[1+sha256.Size:]))
		rest = rest[minEntryLen:]
		if len(rest) < n {
			return nil, fmt.Errorf("%w: entry %d path truncated (%d of %d bytes)", ErrMalformed, i, len(rest), n)
		}
		e.Path = string(rest[:n])
		rest = rest[n:]
		if err := e.validate(); err != nil {
			return nil, fmt.Errorf("%w: entry %d: %v", ErrMalformed, i, err)
		}
	}
	if len(rest) != 0 {
		return nil, fmt.Errorf("%w: %d trailing bytes", ErrMalformed, len(rest))
	}
	return l, nil
}

// String renders the log one entry a line, for operators.
func (l *Log) String() string {
	var sb strings.Builder
	fmt.Fprintf(&sb, "measurement log: PCR %d, %d entries\n", l.PCR, len(l.Entries))
	for i, e := range l.Entries {
		fmt.Fprintf(&sb, "%4d %s\n", i, e)
	}
	return sb.String()
}

// MeasureFile hashes a file's content into an entry. A file that cannot be opened or is
// not a regular file becomes a KindFileMissing entry, not an error: its absence is
// itself a measurement the verifier must see.
func MeasureFile(path string) Entry {
	f, err := os.Open(path)
	if err != nil {
		return Entry{Kind: KindFileMissing, Path: path}
	}
	defer f.Close()
	if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() {
		return Entry{Kind: KindFileMissing, Path: path}
	}
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return Entry{Kind: KindFileMissing, Path: path}
	}
	e := Entry{Kind: KindFile, Path: path}
	h.Sum(e.Digest[:0])
	return e
}

// Equal reports whether two logs are identical.
func Equal(a, b *Log) bool {
	if a.PCR != b.PCR || len(a.Entries) != len(b.Entries) {
		return false
	}
	for i := range a.Entries {
		if a.Entries[i] != b.Entries[i] {
			return false
		}
	}
	return true
}
