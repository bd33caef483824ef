package verifier

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"net/http"

	"github.com/seed4c/moat/attest"
)

// Handler serves the agent-facing endpoints (attest.Path…) for the gateway to mount
// under a prefix with http.StripPrefix. It must be served over TLS that requests a
// client certificate (ServerTLSConfig does); the certificate's key is the channel key
// bound into quotes, so no CA is needed for it: the quote, signed by an enrolled AK,
// is what authenticates the agent. Requests without a client certificate are refused.
func (v *Verifier) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST "+attest.PathEnroll, func(w http.ResponseWriter, r *http.Request) {
		serve(w, r, new(attest.EnrollRequest), func(ctx context.Context, m *attest.EnrollRequest, key []byte) (any, error) {
			return v.Enroll(ctx, m, key)
		})
	})
	mux.HandleFunc("POST "+attest.PathActivate, func(w http.ResponseWriter, r *http.Request) {
		serve(w, r, new(attest.ActivationProof), func(ctx context.Context, m *attest.ActivationProof, key []byte) (any, error) {
			return v.Activate(ctx, m, key)
		})
	})
	mux.HandleFunc("POST "+attest.PathChallenge, func(w http.ResponseWriter, r *http.Request) {
		serve(w, r, new(attest.ChallengeRequest), func(ctx context.Context, m *attest.ChallengeRequest, key []byte) (any, error) {
			return v.Challenge(ctx, m, key)
		})
	})
	mux.HandleFunc("POST "+attest.PathEvidence, func(w http.ResponseWriter, r *http.Request) {
		serve(w, r, new(attest.Evidence), func(ctx context.Context, m *attest.Evidence, key []byte) (any, error) {
			res, err := v.Appraise(ctx, m, key)
			if err != nil {
				return nil, err
			}
			return res, nil
		})
	})
	return mux
}

// serve decodes one message, runs f with the TLS client key, and writes its answer as
// JSON or a problem document.
func serve[M attest.Message](w http.ResponseWriter, r *http.Request, m M, f func(context.Context, M, []byte) (any, error)) {
	if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
		writeProblem(w, refuse(attest.ReasonChannel, "mutual TLS required: no client certificate"))
		return
	}
	tlsKey := r.TLS.PeerCertificates[0].RawSubjectPublicKeyInfo
	if err := attest.Decode(http.MaxBytesReader(w, r.Body, attest.MaxMessageSize), m); err != nil {
		writeProblem(w, refuse(attest.ReasonMalformed, "%v", err))
		return
	}
	out, err := f(r.Context(), m, tlsKey)
	if err != nil {
		writeProblem(w, err)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(out)
}

// statusOf maps a reason code to the HTTP status of its refusal.
func statusOf(code string) int {
	switch code {
	case attest.ReasonMalformed:
		return http.StatusBadRequest
	case attest.ReasonChannel:
		return http.StatusUnauthorized
	case attest.ReasonNotEnrolled:
		return http.StatusNotFound
	case attest.ReasonEKChanged:
		return http.StatusConflict
	case attest.ReasonOverload:
		return http.StatusTooManyRequests
	case "":
		return http.StatusInternalServerError
	}
	return http.StatusForbidden
}

func writeProblem(w http.ResponseWriter, err error) {
	code := attest.ReasonCode(err)
	status := statusOf(code)
	p := attest.Problem{Type: attest.ProblemTypePrefix + code, Title: http.StatusText(status), Status: status, Detail: errorDetail(err)}
	if code == "" {
		p.Type, p.Detail = "about:blank", "internal error" // never leak internals
	} else {
		p.Reasons = []string{code}
	}
	w.Header().Set("Content-Type", "application/problem+json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(p)
}

// ServerTLSConfig is the TLS configuration the verifier's endpoints need: TLS 1.3 and
// a client certificate requested and required but not chain-verified (see Handler).
func ServerTLSConfig(cert tls.Certificate) *tls.Config {
	return &tls.Config{
		Certificates: []tls.Certificate{cert},
		ClientAuth:   tls.RequireAnyClientCert,
		MinVersion:   tls.VersionTLS13,
	}
}

// LocalClient calls a Verifier in process, as if over a TLS channel whose client key is
// TLSKey (DER SubjectPublicKeyInfo). It has the method set of the agent's
// VerifierClient, for tests and for a gateway that attests itself.
type LocalClient struct {
	Verifier *Verifier
	Key      []byte
}

// TLSKey returns the channel key.
func (c LocalClient) TLSKey() []byte { return c.Key }

// Enroll calls Verifier.Enroll.
func (c LocalClient) Enroll(ctx context.Context, m *attest.EnrollRequest) (*attest.EnrollChallenge, error) {
	return c.Verifier.Enroll(ctx, m, c.Key)
}

// Activate calls Verifier.Activate.
func (c LocalClient) Activate(ctx context.Context, m *attest.ActivationProof) (*attest.Enrollment, error) {
	return c.Verifier.Activate(ctx, m, c.Key)
}

// Challenge calls Verifier.Challenge.
func (c LocalClient) Challenge(ctx context.Context, m *attest.ChallengeRequest) (*attest.Challenge, error) {
	return c.Verifier.Challenge(ctx, m, c.Key)
}

// Submit calls Verifier.Appraise.
func (c LocalClient) Submit(ctx context.Context, m *attest.Evidence) (*attest.Result, error) {
	r, err := c.Verifier.Appraise(ctx, m, c.Key)
	if err != nil {
		return nil, err
	}
	return &r, nil
}
