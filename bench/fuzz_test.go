package bench

import (
	"encoding/binary"
	"fmt"
	"math"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// The harness parses three kinds of text it does not write: perf's report, nft's JSON
// and the kernel's NAPI dump. Each parser gets arbitrary input here, and input built
// so that the answer is known.

func FuzzParsePerfReport(f *testing.F) {
	f.Add(moatPerfReport, 5773)
	f.Add("", 1)
	f.Add("  1.00%  99999999999999999999  7:x  [k] sym\n", 7)
	f.Add("  1.00%  2147483647  7:x  [k] a\n  1.00%  2147483647  7:x  [k] b\n", 7)
	f.Fuzz(func(t *testing.T, report string, tid int) {
		p, err := parsePerfReport(report, []int{tid})
		if err != nil {
			return
		}
		checkProfileShares(t, p)

		// Another thread's samples change nothing.
		other := fmt.Sprintf("\n  5.00%%  40  %d:other  [k] bpf_prog_x\n", tid+1)
		if tid == math.MaxInt {
			other = ""
		}
		q, err := parsePerfReport(report+other, []int{tid})
		if err != nil || !reflect.DeepEqual(p, q) {
			t.Fatalf("another thread's line changed the profile: %+v, %v; was %+v", q, err, p)
		}
		// The same report twice: twice the samples, the same shares.
		d, err := parsePerfReport(report+"\n"+report, []int{tid})
		if err != nil {
			t.Fatalf("the report twice: %v", err)
		}
		if d.Samples != 2*p.Samples || !reflect.DeepEqual(d.Parts, p.Parts) || !reflect.DeepEqual(d.Top, p.Top) {
			t.Fatalf("the report twice: %+v; once: %+v", d, p)
		}
	})
}

// checkProfileShares checks what any parsed profile must be: samples, parts known and
// ordered, shares that are shares.
func checkProfileShares(t *testing.T, p CPUProfile) {
	t.Helper()
	if p.Samples <= 0 {
		t.Fatalf("a profile of %d samples", p.Samples)
	}
	var sum float64
	for i, pp := range p.Parts {
		if !slices.Contains(ProfileParts, pp.Name) {
			t.Fatalf("unknown part %q", pp.Name)
		}
		if pp.Share <= 0 || pp.Share > 1 || (i > 0 && pp.Share > p.Parts[i-1].Share) {
			t.Fatalf("parts %+v: shares not in (0,1] and decreasing", p.Parts)
		}
		sum += pp.Share
	}
	if math.Abs(sum-1) > 1e-9 {
		t.Fatalf("parts' shares sum to %v", sum)
	}
	if len(p.Top) == 0 || len(p.Top) > profileTop {
		t.Fatalf("%d top symbols", len(p.Top))
	}
	for i, s := range p.Top {
		if s.Share <= 0 || s.Share > 1 || (i > 0 && s.Share > p.Top[i-1].Share) {
			t.Fatalf("top %+v: shares not in (0,1] and decreasing", p.Top)
		}
	}
}

func FuzzSumNftCounters(f *testing.F) {
	f.Add([]byte(`{"nftables": [{"rule": {"expr": [{"counter": {"packets": 7}}]}}]}`))
	f.Add([]byte(`{"nftables": [{"rule": {"expr": [{"counter": {"packets": -1}}]}}]}`))
	f.Add([]byte(`{"nftables": [{"rule": null}, {"rule": {"expr": [null, {"counter": null}]}}]}`))
	f.Add([]byte{0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, data []byte) {
		// Anything: an error or a sum, never a panic.
		_, _ = sumNftCounters(data)

		// A table whose counters are the input's 32-bit words, among rules and objects
		// without counters: the sum is theirs.
		var doc strings.Builder
		doc.WriteString(`{"nftables": [{"metainfo": {"version": "1.0.6"}}, {"table": {"name": "moatbench"}}`)
		var want uint64
		for i := 0; i+4 <= len(data); i += 4 {
			n := binary.BigEndian.Uint32(data[i:])
			want += uint64(n)
			fmt.Fprintf(&doc, `, {"rule": {"chain": "c%d", "expr": [{"match": {}}, {"counter": {"packets": %d, "bytes": %d}}, {"drop": null}]}}`, i, n, 60*uint64(n))
			doc.WriteString(`, {"rule": {"chain": "lb", "expr": [{"dnat": {}}]}}`)
		}
		doc.WriteString(`]}`)
		got, err := sumNftCounters([]byte(doc.String()))
		if err != nil || got != want {
			t.Fatalf("sum of %s = %d, %v; want %d", doc.String(), got, err, want)
		}
	})
}

func FuzzParseNAPIDump(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte{0, 0, 0, 7, 0, 0, 0, 1, 0, 0, 0x16, 0x2d})
	f.Add([]byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24})
	f.Fuzz(func(t *testing.T, data []byte) {
		// The raw bytes as one message, and cut into messages: an error or
		// instances, never a panic.
		_, _ = parseNAPIDump([][]byte{data})
		var cut [][]byte
		for rest := data; len(rest) > 0; {
			n := min(int(rest[0])+1, len(rest))
			cut, rest = append(cut, rest[:n]), rest[n:]
		}
		_, _ = parseNAPIDump(cut)

		// Instances from the input's 32-bit words, encoded as the kernel does, with an
		// attribute the parser does not know and one too short for a value: the same
		// instances come back.
		var want []napiInstance
		var msgs [][]byte
		for i := 0; i+12 <= len(data); i += 12 {
			n := napiInstance{
				ifindex: binary.BigEndian.Uint32(data[i:]),
				id:      binary.BigEndian.Uint32(data[i+4:]),
				pid:     binary.BigEndian.Uint32(data[i+8:]),
			}
			want = append(want, n)
			m := (&nl.Genlmsg{Command: netdevCmdNAPIGet, Version: 1}).Serialize()
			for _, a := range []*nl.RtAttr{
				nl.NewRtAttr(netdevANAPIIfidx, nl.Uint32Attr(n.ifindex)),
				nl.NewRtAttr(99, []byte("unknown")),
				nl.NewRtAttr(netdevANAPIID, nl.Uint32Attr(n.id)),
				nl.NewRtAttr(netdevANAPIPID, []byte{1}),
				nl.NewRtAttr(netdevANAPIPID, nl.Uint32Attr(n.pid)),
			} {
				m = append(m, a.Serialize()...)
			}
			msgs = append(msgs, m)
		}
		msgs = append(msgs, []byte{1, 2}) // shorter than a genetlink header: skipped
		got, err := parseNAPIDump(msgs)
		if err != nil || !reflect.DeepEqual(got, want) {
			t.Fatalf("parsed %+v, %v; want %+v", got, err, want)
		}
	})
}

func TestWalkNetlinkAttrs(t *testing.T) {
	attr := func(l, typ uint16, val ...byte) []byte {
		b := binary.NativeEndian.AppendUint16(nil, l)
		return append(binary.NativeEndian.AppendUint16(b, typ), val...)
	}
	type seen struct {
		typ uint16
		val string
	}
	for _, c := range []struct {
		name string
		b    []byte
		want []seen
		err  bool
	}{
		{"padded", append(attr(5, 1, 'a', 0, 0, 0), attr(8, 2, 'b', 'c', 'd', 'e')...), []seen{{1, "a"}, {2, "bcde"}}, false},
		{"last unpadded", append(attr(8, 1, 'w', 'x', 'y', 'z'), attr(5, 2, 'q')...), []seen{{1, "wxyz"}, {2, "q"}}, false},
		{"flags masked", attr(4, 3|unix.NLA_F_NESTED), []seen{{3, ""}}, false},
		{"length past the end", attr(9, 1, 'a'), nil, true},
		{"length below the header", attr(3, 1), nil, true},
		{"a partial header", append(attr(4, 1), 0, 0), []seen{{1, ""}}, true},
	} {
		var got []seen
		err := walkNetlinkAttrs(c.b, func(typ uint16, val []byte) { got = append(got, seen{typ, string(val)}) })
		if (err != nil) != c.err || !reflect.DeepEqual(got, c.want) {
			t.Errorf("%s: %v, %v; want %v, error %v", c.name, got, err, c.want, c.err)
		}
	}
}
