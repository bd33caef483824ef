package api

import (
	"encoding/json"
	"errors"
	"net/http"

	"github.com/seed4c/moat/controlapi/auth"
	"github.com/seed4c/moat/controlapi/state"
)

// Problem is an RFC 9457 problem detail.
type Problem struct {
	Type     string `json:"type"`
	Title    string `json:"title"`
	Status   int    `json:"status"`
	Detail   string `json:"detail,omitempty"`
	Instance string `json:"instance,omitempty"`
}

// Problem types: "urn:moat:api:" + code.
const problemPrefix = "urn:moat:api:"

var problemTitles = map[int]struct{ code, title string }{
	http.StatusBadRequest:            {"invalid-request", "The request is malformed"},
	http.StatusUnauthorized:          {"unauthenticated", "A valid bearer token is required"},
	http.StatusForbidden:             {"forbidden", "The token's role does not allow this"},
	http.StatusNotFound:              {"not-found", "No such resource"},
	http.StatusMethodNotAllowed:      {"method-not-allowed", "Method not allowed on this resource"},
	http.StatusConflict:              {"conflict", "The request conflicts with the current state"},
	http.StatusPreconditionFailed:    {"version-mismatch", "The resource changed since the version given in If-Match"},
	http.StatusRequestEntityTooLarge: {"payload-too-large", "The request body is too large"},
	http.StatusUnsupportedMediaType:  {"unsupported-media-type", "The request body must be application/json"},
	http.StatusUnprocessableEntity:   {"invalid-configuration", "The change would make the configuration invalid"},
	http.StatusPreconditionRequired:  {"precondition-required", "Updates need an If-Match header with the resource's ETag"},
	http.StatusInternalServerError:   {"internal", "Internal error"},
}

func writeProblem(w http.ResponseWriter, r *http.Request, status int, detail string) {
	t := problemTitles[status]
	if t.code == "" {
		t = problemTitles[http.StatusInternalServerError]
	}
	if status == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `Bearer realm="moat"`)
	}
	w.Header().Set("Content-Type", "application/problem+json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(Problem{Type: problemPrefix + t.code, Title: t.title, Status: status, Detail: detail, Instance: r.URL.Path})
}

// statusOf maps an error of the store layers to an HTTP status.
func statusOf(err error) int {
	var inv *state.InvalidError
	switch {
	case errors.As(err, &inv):
		return http.StatusUnprocessableEntity
	case errors.Is(err, state.ErrNotFound), errors.Is(err, auth.ErrNotFound):
		return http.StatusNotFound
	case errors.Is(err, state.ErrExists), errors.Is(err, state.ErrInUse):
		return http.StatusConflict
	case errors.Is(err, state.ErrVersion):
		return http.StatusPreconditionFailed
	}
	return http.StatusInternalServerError
}
