package tpm

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// A sealed blob is what Seal returns and Unseal takes: the TPM's public and private
// areas of the sealed data object (the private area is encrypted under the SRK, so the
// blob is useless on another TPM) and the PCRs its policy covers.
//
//	blob = "MOATSEAL" version:u8=1 npcr:u8 pcr:u8*npcr publicLen:u16 public privateLen:u16 private
const sealedMagic = "MOATSEAL"

type sealedBlob struct {
	PCRs    []int
	Public  []byte // TPM2B_PUBLIC
	Private []byte // TPM2B_PRIVATE
}

// errSealedMalformed marks a blob that does not decode.
var errSealedMalformed = errors.New("malformed sealed blob")

func encodeSealed(b sealedBlob) []byte {
	out := append([]byte(sealedMagic), 1, byte(len(b.PCRs)))
	for _, p := range b.PCRs {
		out = append(out, byte(p))
	}
	out = binary.BigEndian.AppendUint16(out, uint16(len(b.Public)))
	out = append(out, b.Public...)
	out = binary.BigEndian.AppendUint16(out, uint16(len(b.Private)))
	return append(out, b.Private...)
}

func decodeSealed(in []byte) (sealedBlob, error) {
	var b sealedBlob
	if len(in) < len(sealedMagic)+2 || string(in[:len(sealedMagic)]) != sealedMagic {
		return b, fmt.Errorf("%w: bad magic", errSealedMalformed)
	}
	if in[len(sealedMagic)] != 1 {
		return b, fmt.Errorf("%w: version %d", errSealedMalformed, in[len(sealedMagic)])
	}
	n := int(in[len(sealedMagic)+1])
	rest := in[len(sealedMagic)+2:]
	if n == 0 || n > 24 || len(rest) < n {
		return b, fmt.Errorf("%w: %d PCRs", errSealedMalformed, n)
	}
	for _, p := range rest[:n] {
		if p > 23 {
			return b, fmt.Errorf("%w: PCR %d", errSealedMalformed, p)
		}
		b.PCRs = append(b.PCRs, int(p))
	}
	rest = rest[n:]
	for _, field := range []*[]byte{&b.Public, &b.Private} {
		if len(rest) < 2 {
			return b, fmt.Errorf("%w: truncated", errSealedMalformed)
		}
		l := int(binary.BigEndian.Uint16(rest))
		if len(rest) < 2+l || l == 0 {
			return b, fmt.Errorf("%w: area of %d bytes truncated or empty", errSealedMalformed, l)
		}
		*field = rest[2 : 2+l]
		rest = rest[2+l:]
	}
	if len(rest) != 0 {
		return b, fmt.Errorf("%w: %d trailing bytes", errSealedMalformed, len(rest))
	}
	return b, nil
}
