package attest

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

func TestDecodeStrict(t *testing.T) {
	good := `{"version":1,"identity":"web-1"}`
	var m ChallengeRequest
	if err := DecodeBytes([]byte(good), &m); err != nil || m.Identity != "web-1" {
		t.Fatalf("good message: %v %+v", err, m)
	}
	for name, body := range map[string]string{
		"unknown field":  `{"version":1,"identity":"web-1","admin":true}`,
		"trailing data":  good + `{}`,
		"wrong version":  `{"version":2,"identity":"web-1"}`,
		"no version":     `{"identity":"web-1"}`,
		"not JSON":       `garbage`,
		"truncated":      good[:10],
		"too large":      `{"version":1,"identity":"` + strings.Repeat("a", MaxMessageSize) + `"}`,
		"wrong type":     `{"version":"1","identity":"web-1"}`,
		"array":          `[1,2]`,
		"empty":          ``,
		"duplicate JSON": `{"version":1,"identity":"web-1"} {"version":1,"identity":"web-2"}`,
	} {
		var m ChallengeRequest
		if err := DecodeBytes([]byte(body), &m); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: err = %v, want ErrMalformed", name, err)
		}
	}
}

// The length prefixes make every field boundary part of the digest: moving bytes from
// one field to its neighbour changes the qualifying data.
func TestQualifyingDataFieldsCannotShift(t *testing.T) {
	base := QualifyingData([]byte("nonce"), "ab", []byte("c"), []byte("tls"))
	for name, qd := range map[string][]byte{
		"identity into WireGuard key": QualifyingData([]byte("nonce"), "a", []byte("bc"), []byte("tls")),
		"nonce into identity":         QualifyingData([]byte("nonc"), "eab", []byte("c"), []byte("tls")),
		"WireGuard key into TLS key":  QualifyingData([]byte("nonce"), "ab", nil, []byte("ctls")),
		"TLS key into overlay key":    QualifyingDataOverlay([]byte("nonce"), "ab", []byte("c"), []byte("tl"), []byte("s")),
	} {
		if bytes.Equal(qd, base) {
			t.Errorf("%s: same qualifying data", name)
		}
	}
	// No overlay key is an empty overlay field, not a missing one.
	if !bytes.Equal(base, QualifyingDataOverlay([]byte("nonce"), "ab", []byte("c"), []byte("tls"), nil)) {
		t.Error("QualifyingData is not QualifyingDataOverlay with an empty overlay key")
	}
	if len(base) != 32 {
		t.Fatalf("qualifying data is %d bytes; a TPM takes at most 64 and moat sends SHA-256", len(base))
	}
}

func TestResultJSONRoundTrip(t *testing.T) {
	r := Result{Subject: "web-1", Status: StatusContraindicated, TrustLevel: TrustCertified, Reasons: []string{ReasonClock + ": back"}}
	b, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), `"trust_level":"certified"`) {
		t.Fatalf("trust level not encoded by name: %s", b)
	}
	var back Result
	if err := json.Unmarshal(b, &back); err != nil || back.TrustLevel != TrustCertified || !back.HasReason(ReasonClock) {
		t.Fatalf("round trip: %v %+v", err, back)
	}
	if err := json.Unmarshal([]byte(`{"trust_level":"root"}`), &back); err == nil {
		t.Fatal("unknown trust level decoded")
	}
}

func TestRemoteErrorCarriesReasonCode(t *testing.T) {
	err := error(&RemoteError{Problem: Problem{Type: ProblemTypePrefix + ReasonNotEnrolled, Status: 404}})
	if ReasonCode(err) != ReasonNotEnrolled {
		t.Fatalf("ReasonCode = %q", ReasonCode(err))
	}
	if ReasonCode(errors.New("connection refused")) != "" {
		t.Fatal("a transport error carries a reason code")
	}
}

// fuzzDecode checks one message decoder: no panic, errors wrap ErrMalformed, and an
// accepted message re-encodes and decodes to the same value.
func fuzzDecode[M Message](t *testing.T, b []byte, m, again M) {
	if err := DecodeBytes(b, m); err != nil {
		if !errors.Is(err, ErrMalformed) {
			t.Fatalf("error does not wrap ErrMalformed: %v", err)
		}
		return
	}
	enc, err := json.Marshal(m)
	if err != nil {
		t.Fatalf("accepted message does not encode: %v", err)
	}
	if err := DecodeBytes(enc, again); err != nil {
		t.Fatalf("re-encoded message does not decode: %v", err)
	}
	enc2, _ := json.Marshal(again)
	if !bytes.Equal(enc, enc2) {
		t.Fatalf("decode is not stable:\n%s\n%s", enc, enc2)
	}
}

func FuzzDecodeEvidence(f *testing.F) {
	f.Add([]byte(`{"version":1,"identity":"web-1","nonce":"AAAA","wireguard_key":"AAAA","quote":"AAAA","signature":"AAAA","pcrs":[{"index":15,"sha256":"AAAA"}],"log":"AAAA"}`))
	f.Add([]byte(`{"version":1}`))
	f.Fuzz(func(t *testing.T, b []byte) { fuzzDecode(t, b, new(Evidence), new(Evidence)) })
}

func FuzzDecodeEnrollRequest(f *testing.F) {
	f.Add([]byte(`{"version":1,"identity":"web-1","ek_public":"AAAA","ak_public":"AAAA"}`))
	f.Fuzz(func(t *testing.T, b []byte) { fuzzDecode(t, b, new(EnrollRequest), new(EnrollRequest)) })
}

func FuzzDecodeActivationProof(f *testing.F) {
	f.Add([]byte(`{"version":1,"challenge_id":"00","mac":"AAAA"}`))
	f.Fuzz(func(t *testing.T, b []byte) { fuzzDecode(t, b, new(ActivationProof), new(ActivationProof)) })
}

func FuzzDecodeChallengeRequest(f *testing.F) {
	f.Add([]byte(`{"version":1,"identity":"web-1"}`))
	f.Fuzz(func(t *testing.T, b []byte) { fuzzDecode(t, b, new(ChallengeRequest), new(ChallengeRequest)) })
}

// The agent decodes the verifier's answers with the same strict decoder.
func FuzzDecodeChallenge(f *testing.F) {
	f.Add([]byte(`{"version":1,"nonce":"AAAA","expires":"2026-01-01T00:00:00Z","pcrs":[15]}`))
	f.Fuzz(func(t *testing.T, b []byte) { fuzzDecode(t, b, new(Challenge), new(Challenge)) })
}

func FuzzDecodeEnrollChallenge(f *testing.F) {
	f.Add([]byte(`{"version":1,"challenge_id":"00","credential":"AAAA","secret":"AAAA","expires":"2026-01-01T00:00:00Z"}`))
	f.Fuzz(func(t *testing.T, b []byte) { fuzzDecode(t, b, new(EnrollChallenge), new(EnrollChallenge)) })
}
