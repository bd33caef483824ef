package tpm

import (
	"bytes"
	"errors"
	"testing"
)

func TestSealedBlobRoundTrip(t *testing.T) {
	b := sealedBlob{PCRs: []int{7, 15}, Public: []byte{0, 2, 1, 2}, Private: []byte{0, 1, 9}}
	got, err := decodeSealed(encodeSealed(b))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got.Public, b.Public) || !bytes.Equal(got.Private, b.Private) || len(got.PCRs) != 2 || got.PCRs[1] != 15 {
		t.Fatalf("round trip: %+v", got)
	}
	enc := encodeSealed(b)
	for n := 0; n < len(enc); n++ {
		if _, err := decodeSealed(enc[:n]); !errors.Is(err, errSealedMalformed) {
			t.Fatalf("truncated blob (%d bytes) accepted: %v", n, err)
		}
	}
	if _, err := decodeSealed(append(enc, 0)); !errors.Is(err, errSealedMalformed) {
		t.Fatal("trailing byte accepted")
	}
}

// FuzzDecodeSealed: sealed blobs come back from disk, where anyone with write access
// may have changed them. No input panics the decoder; what it accepts re-encodes to
// the same bytes.
func FuzzDecodeSealed(f *testing.F) {
	f.Add(encodeSealed(sealedBlob{PCRs: []int{15}, Public: []byte{1}, Private: []byte{2}}))
	f.Add([]byte(sealedMagic))
	f.Fuzz(func(t *testing.T, in []byte) {
		b, err := decodeSealed(in)
		if err != nil {
			return
		}
		if !bytes.Equal(encodeSealed(b), in) {
			t.Fatalf("non-canonical blob accepted: %x", in)
		}
	})
}
