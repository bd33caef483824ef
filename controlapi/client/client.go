// Package client is a typed Go client for moat's REST control API v1 (controlapi/api):
// one method per route, objects carrying the version the server sent as their ETag,
// updates sending it back in If-Match, lists that follow pagination, and errors that
// are the server's RFC 9457 problem documents as *Error.
package client

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"

	"github.com/seed4c/moat/controlapi/api"
)

// Client calls one gateway's API. Its fields may be changed before the first call;
// it is then safe for concurrent use.
type Client struct {
	base  string
	token string
	hc    *http.Client

	// UserAgent is sent with every request.
	UserAgent string
	// PageSize is the limit asked for on each page when a list is followed to its end
	// (0: the server's default).
	PageSize int
}

// New returns a client of the API at baseURL (such as https://127.0.0.1:9443)
// authenticating with the bearer token (empty: anonymous, which only the OpenAPI
// document allows). httpClient nil means http.DefaultClient; NewHTTPClient makes one
// that trusts the gateway's CA.
func New(baseURL string, token string, httpClient *http.Client) *Client {
	if httpClient == nil {
		httpClient = http.DefaultClient
	}
	return &Client{base: strings.TrimRight(baseURL, "/"), token: token, hc: httpClient, UserAgent: "moat-client"}
}

// BaseURL is the API's base URL as given to New (without a trailing slash).
func (c *Client) BaseURL() string { return c.base }

// AnyVersion, passed as the version of an update, sends If-Match: * (overwrite
// whatever version exists). Use it knowingly: it is the lost update If-Match prevents.
const AnyVersion = ^uint64(0)

// Error is an error answer of the API: its RFC 9457 problem document, or, when the
// answer was not one (a proxy's error page), the status and the start of the body.
type Error struct {
	Status   int    // HTTP status
	Type     string // problem type URI, such as urn:moat:api:not-found
	Title    string
	Detail   string
	Instance string
}

// Error is "<status> <status text>: <detail>" (the title when there is no detail).
func (e *Error) Error() string {
	msg := e.Detail
	if msg == "" {
		msg = e.Title
	}
	s := strconv.Itoa(e.Status) + " " + http.StatusText(e.Status)
	if msg == "" {
		return s
	}
	return s + ": " + msg
}

// Problem types the API sends (urn:moat:api:<code>).
const (
	TypeNotFound        = "urn:moat:api:not-found"
	TypeConflict        = "urn:moat:api:conflict"
	TypeVersionMismatch = "urn:moat:api:version-mismatch"
	TypeForbidden       = "urn:moat:api:forbidden"
	TypeUnauthenticated = "urn:moat:api:unauthenticated"
	TypeInvalid         = "urn:moat:api:invalid-configuration"
)

// StatusOf is the HTTP status of an *Error in err's chain, or 0.
func StatusOf(err error) int {
	var e *Error
	if errors.As(err, &e) {
		return e.Status
	}
	return 0
}

// IsNotFound reports a 404: no such object, or one the token may not see (a tenant
// admin gets the same answer for another tenant's objects as for missing ones).
func IsNotFound(err error) bool { return StatusOf(err) == http.StatusNotFound }

// IsConflict reports a 409: the object exists already, or still has dependents.
func IsConflict(err error) bool { return StatusOf(err) == http.StatusConflict }

// IsVersionMismatch reports a 412: the object changed since the version sent in
// If-Match, and nothing was written.
func IsVersionMismatch(err error) bool { return StatusOf(err) == http.StatusPreconditionFailed }

// IsForbidden reports a 403: the token's role does not allow the call.
func IsForbidden(err error) bool { return StatusOf(err) == http.StatusForbidden }

// IsUnauthenticated reports a 401: no token, or one the server does not know.
func IsUnauthenticated(err error) bool { return StatusOf(err) == http.StatusUnauthorized }

// TLSOptions say how the client checks the gateway's certificate.
type TLSOptions struct {
	// CAFile is a PEM bundle of the CAs to trust instead of the system's (the
	// gateway's internal CA). Empty: the system's roots (ACME certificates).
	CAFile string
	// InsecureSkipVerify accepts any certificate: anyone on the path can then read
	// the token. For tests and first contact only; callers should warn their user.
	InsecureSkipVerify bool
}

// NewHTTPClient returns an HTTP client checking the server's certificate as o says.
func NewHTTPClient(o TLSOptions) (*http.Client, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: o.InsecureSkipVerify}
	if o.CAFile != "" {
		pem, err := os.ReadFile(o.CAFile)
		if err != nil {
			return nil, fmt.Errorf("CA bundle: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("CA bundle %s: no PEM certificate in it", o.CAFile)
		}
		cfg.RootCAs = pool
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = cfg
	return &http.Client{Transport: tr}, nil
}

// maxErrorBody bounds how much of a non-problem error body is kept.
const maxErrorBody = 512

// do sends a request to path (already escaped, with its query) and decodes a 2xx
// JSON answer into out (when not nil). ifMatch 0 sends no If-Match. It returns the
// answer's ETag as a version (0 when absent).
func (c *Client) do(ctx context.Context, method, path string, ifMatch uint64, body, out any) (uint64, error) {
	var rd io.Reader
	if body != nil {
		raw, err := json.Marshal(body)
		if err != nil {
			return 0, fmt.Errorf("encode request: %w", err)
		}
		rd = bytes.NewReader(raw)
	}
	if strings.Contains(path, "//") || strings.HasSuffix(strings.SplitN(path, "?", 2)[0], "/") {
		return 0, fmt.Errorf("%s %s: an empty name", method, path)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, rd)
	if err != nil {
		return 0, err
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	switch ifMatch {
	case 0:
	case AnyVersion:
		req.Header.Set("If-Match", "*")
	default:
		req.Header.Set("If-Match", etag(ifMatch))
	}
	req.Header.Set("Accept", "application/json, application/problem+json")
	req.Header.Set("User-Agent", c.UserAgent)
	resp, err := c.hc.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return 0, decodeError(resp)
	}
	version := parseETag(resp.Header.Get("ETag"))
	if out == nil || resp.StatusCode == http.StatusNoContent {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
		return version, nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return 0, fmt.Errorf("%s %s: decode answer: %w", method, path, err)
	}
	return version, nil
}

func decodeError(resp *http.Response) error {
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	e := &Error{Status: resp.StatusCode}
	mt, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	var p api.Problem
	if (mt == "application/problem+json" || mt == "application/json") && json.Unmarshal(raw, &p) == nil && p.Title != "" {
		e.Type, e.Title, e.Detail, e.Instance = p.Type, p.Title, p.Detail, p.Instance
		if p.Status != 0 && p.Status != resp.StatusCode {
			e.Detail = strings.TrimSpace(e.Detail + fmt.Sprintf(" (the problem says status %d)", p.Status))
		}
		return e
	}
	e.Title = http.StatusText(resp.StatusCode)
	body := strings.TrimSpace(string(raw))
	if len(body) > maxErrorBody {
		body = body[:maxErrorBody] + "…"
	}
	e.Detail = body
	return e
}

func etag(v uint64) string { return `"` + strconv.FormatUint(v, 10) + `"` }

// parseETag reads "N" (or W/"N") as N; anything else is 0.
func parseETag(h string) uint64 {
	h = strings.TrimPrefix(strings.TrimSpace(h), "W/")
	if len(h) < 3 || h[0] != '"' || h[len(h)-1] != '"' {
		return 0
	}
	n, err := strconv.ParseUint(h[1:len(h)-1], 10, 64)
	if err != nil {
		return 0
	}
	return n
}

// path joins escaped segments after /v1.
func path(segments ...string) string {
	var b strings.Builder
	b.WriteString("/v1")
	for _, s := range segments {
		b.WriteByte('/')
		b.WriteString(url.PathEscape(s))
	}
	return b.String()
}
