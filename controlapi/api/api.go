// Package api is moat's REST control API, v1: tenants, services, backends, allow rules,
// attestation policies, overlay peers, tokens, attestation history, state transitions and status,
// served as JSON with RFC 9457 problem details, ETag/If-Match on every update and
// cursor pagination on every list. One route table drives both the HTTP mux and the
// OpenAPI 3 document served at /v1/openapi.json, so they cannot drift apart.
package api

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/seed4c/moat/controlapi/auth"
	"github.com/seed4c/moat/controlapi/state"
)

// Live is what the API reads of the running gateway.
//
// Contract: safe for concurrent use, fast (called while serving requests).
type Live interface {
	// BackendStatus is a backend's admission state now.
	BackendStatus(tenant, service, backend string) state.BackendStatus
	// GatewayStatus is the gateway's status as p may see it (a tenant admin sees its
	// own tenant only).
	GatewayStatus(p auth.Principal) any
	// OverlayPeerStatus is an overlay peer's link now.
	OverlayPeerStatus(peer string) state.OverlayPeerStatus
}

// Server serves the API.
type Server struct {
	State  *state.Store
	Tokens *auth.Tokens
	Live   Live
	Log    *slog.Logger
	// MaxBody bounds request bodies; default 1 MiB.
	MaxBody int64
	// Metrics, when set, is told about every request.
	Metrics func(route string, status int, d time.Duration)
}

// access says who may call a route.
type access int

const (
	public         access = iota // no token
	authenticated                // any valid token
	seeAll                       // operator or auditor
	operatorOnly                 // operator
	tenantRead                   // may read the path's tenant (others get 404, as if it did not exist)
	tenantWrite                  // may write the path's tenant
	tenantOperator               // may read the path's tenant, and is an operator
)

// route is one endpoint: the mux pattern, who may call it, what it takes and returns
// (for the OpenAPI document), and its handler.
type route struct {
	method, path string
	access       access
	summary      string
	request      any // example value of the body, or nil
	response     any // example value of the 2xx body, or nil
	status       int // success status
	list         bool
	handle       func(w http.ResponseWriter, r *http.Request, p auth.Principal)
}

// Handler returns the API's HTTP handler.
func (s *Server) Handler() http.Handler {
	if s.Log == nil {
		s.Log = slog.New(slog.DiscardHandler)
	}
	if s.MaxBody == 0 {
		s.MaxBody = 1 << 20
	}
	mux := http.NewServeMux()
	for _, rt := range s.routes() {
		mux.HandleFunc(rt.method+" "+rt.path, s.wrap(rt))
	}
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeProblem(w, r, http.StatusNotFound, "no such endpoint; see /v1/openapi.json")
	})
	return mux
}

func (s *Server) wrap(rt route) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
		defer func() {
			if v := recover(); v != nil {
				s.Log.Error("API handler panicked", "route", rt.method+" "+rt.path, "panic", v)
				writeProblem(rec, r, http.StatusInternalServerError, "")
			}
			if s.Metrics != nil {
				s.Metrics(rt.method+" "+rt.path, rec.status, time.Since(start))
			}
		}()
		var p auth.Principal
		if rt.access != public {
			tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
			var err error
			if p, err = s.Tokens.Authenticate(strings.TrimSpace(tok)); !ok || err != nil {
				writeProblem(rec, r, http.StatusUnauthorized, "send Authorization: Bearer <token>")
				return
			}
		}
		t := r.PathValue("tenant")
		switch rt.access {
		case seeAll:
			if !p.SeesAll() {
				writeProblem(rec, r, http.StatusForbidden, "operators and auditors only")
				return
			}
		case operatorOnly:
			if !p.IsOperator() {
				writeProblem(rec, r, http.StatusForbidden, "operators only")
				return
			}
		case tenantRead, tenantWrite, tenantOperator:
			if !p.CanRead(t) {
				// Indistinguishable from a tenant that does not exist.
				writeProblem(rec, r, http.StatusNotFound, fmt.Sprintf("tenant %s: not found", t))
				return
			}
			if rt.access == tenantWrite && !p.CanWrite(t) || rt.access == tenantOperator && !p.IsOperator() {
				writeProblem(rec, r, http.StatusForbidden, fmt.Sprintf("role %s may not change this", p.Role))
				return
			}
		}
		rt.handle(rec, r, p)
	}
}

type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (s *statusRecorder) WriteHeader(code int) {
	s.status = code
	s.ResponseWriter.WriteHeader(code)
}

// writeJSON sends v with status (and an ETag when version > 0).
func writeJSON(w http.ResponseWriter, status int, version uint64, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	if version > 0 {
		w.Header().Set("ETag", etag(version))
	}
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func etag(v uint64) string { return `"` + strconv.FormatUint(v, 10) + `"` }

// ifMatch reads If-Match: a version, "*" (any: returned as 0 with any=true), or
// absent (present=false).
func ifMatch(r *http.Request) (version uint64, present bool, err error) {
	h := strings.TrimSpace(r.Header.Get("If-Match"))
	if h == "" {
		return 0, false, nil
	}
	if h == "*" {
		return 0, true, nil
	}
	if strings.HasPrefix(h, "W/") {
		// RFC 9110 compares If-Match strongly: a weak tag never matches.
		return ^uint64(0), true, nil
	}
	n, err := strconv.ParseUint(strings.Trim(h, `"`), 10, 64)
	if err != nil || n == 0 || !strings.HasPrefix(h, `"`) || !strings.HasSuffix(h, `"`) {
		return 0, true, fmt.Errorf("If-Match %q: want the ETag of the resource, such as \"3\"", r.Header.Get("If-Match"))
	}
	return n, true, nil
}

// decode reads a JSON body strictly into v, or writes the problem and returns false.
// Fields named in ignore (read-only fields of the resource's view) are dropped first.
func (s *Server) decode(w http.ResponseWriter, r *http.Request, v any, ignore ...string) bool {
	mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil || mt != "application/json" {
		writeProblem(w, r, http.StatusUnsupportedMediaType, "send Content-Type: application/json")
		return false
	}
	body := io.Reader(http.MaxBytesReader(w, r.Body, s.MaxBody))
	if len(ignore) > 0 {
		var fields map[string]json.RawMessage
		raw, err := io.ReadAll(body)
		if err == nil && json.Unmarshal(raw, &fields) == nil && fields != nil {
			for _, f := range ignore {
				delete(fields, f)
			}
			raw, _ = json.Marshal(fields)
		}
		if err != nil {
			return s.decodeFailed(w, r, err)
		}
		body = bytes.NewReader(raw)
	}
	dec := json.NewDecoder(body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return s.decodeFailed(w, r, err)
	}
	if dec.More() {
		writeProblem(w, r, http.StatusBadRequest, "body: more than one JSON value")
		return false
	}
	return true
}

// decodeFailed writes the problem of a body that did not decode; it returns false.
func (s *Server) decodeFailed(w http.ResponseWriter, r *http.Request, err error) bool {
	var tooBig *http.MaxBytesError
	if errors.As(err, &tooBig) {
		writeProblem(w, r, http.StatusRequestEntityTooLarge, fmt.Sprintf("body above %d bytes", s.MaxBody))
	} else {
		writeProblem(w, r, http.StatusBadRequest, "body: "+err.Error())
	}
	return false
}

// page reads ?limit= and ?page_token=.
func page(r *http.Request) (after string, limit int, err error) {
	limit = 100
	if l := r.URL.Query().Get("limit"); l != "" {
		limit, err = strconv.Atoi(l)
		if err != nil || limit < 1 || limit > 1000 {
			return "", 0, fmt.Errorf("limit %q: want 1 to 1000", l)
		}
	}
	if t := r.URL.Query().Get("page_token"); t != "" {
		raw, err := base64.RawURLEncoding.DecodeString(t)
		if err != nil || len(raw) == 0 {
			return "", 0, fmt.Errorf("page_token %q is not one this API issued", t)
		}
		after = string(raw)
	}
	return after, limit, nil
}

func pageToken(next string) string {
	if next == "" {
		return ""
	}
	return base64.RawURLEncoding.EncodeToString([]byte(next))
}

// List is the body of every list response.
type List[T any] struct {
	Items         []T    `json:"items"`
	NextPageToken string `json:"next_page_token,omitempty"`
}

func writeList[T any](w http.ResponseWriter, items []T, next string) {
	if items == nil {
		items = []T{}
	}
	writeJSON(w, http.StatusOK, 0, List[T]{Items: items, NextPageToken: pageToken(next)})
}

func (s *Server) fail(w http.ResponseWriter, r *http.Request, err error) {
	st := statusOf(err)
	detail := err.Error()
	if st == http.StatusInternalServerError {
		s.Log.Error("API request failed", "method", r.Method, "path", r.URL.Path, "error", err)
		detail = ""
	}
	writeProblem(w, r, st, detail)
}
