package api

import (
	"fmt"
	"net/http"

	"github.com/seed4c/moat/controlapi/auth"
	"github.com/seed4c/moat/controlapi/state"
)

// resource is one kind of object with the five usual endpoints.
type resource[T any] struct {
	kind       string // singular, for messages and the OpenAPI document
	collection string // path of the collection; the item path adds /{item}
	item       string // path variable naming the object
	read       access
	write      access
	// readOnly are fields the view adds that a client may send back and are ignored.
	readOnly []string
	// bind copies the path's names into v, refusing a body that names another object.
	bind   func(r *http.Request, v *T, item bool) error
	meta   func(v *T) *state.Meta
	name   func(v *T) string
	get    func(r *http.Request) (T, error)
	list   func(r *http.Request, p auth.Principal, after string, limit int) ([]T, string, error)
	create func(v T) (T, error)
	update func(v T, ifMatch uint64) (T, error)
	del    func(r *http.Request, ifMatch uint64) error
	// view is what is sent for an object (default: the object).
	view func(r *http.Request, v T) any
}

// same fills *dst from a path value, refusing a body value that differs.
func same(dst *string, field, path string) error {
	if *dst != "" && *dst != path {
		return fmt.Errorf("body says %s %q but the path says %q", field, *dst, path)
	}
	*dst = path
	return nil
}

func (res resource[T]) show(r *http.Request, v T) any {
	if res.view != nil {
		return res.view(r, v)
	}
	return v
}

func (res resource[T]) routes(s *Server) []route {
	var example T
	itemPath := res.collection + "/{" + res.item + "}"
	return []route{
		{method: "GET", path: res.collection, access: res.read, summary: "List " + res.kind + "s", response: res.show(nil, example), list: true, status: 200,
			handle: func(w http.ResponseWriter, r *http.Request, p auth.Principal) {
				after, limit, err := page(r)
				if err != nil {
					writeProblem(w, r, http.StatusBadRequest, err.Error())
					return
				}
				items, next, err := res.list(r, p, after, limit)
				if err != nil {
					s.fail(w, r, err)
					return
				}
				views := make([]any, len(items))
				for i, v := range items {
					views[i] = res.show(r, v)
				}
				writeList(w, views, next)
			}},
		{method: "POST", path: res.collection, access: res.write, summary: "Create a " + res.kind, request: example, response: res.show(nil, example), status: 201,
			handle: func(w http.ResponseWriter, r *http.Request, _ auth.Principal) {
				var v T
				if !s.decode(w, r, &v, res.readOnly...) {
					return
				}
				if err := res.bind(r, &v, false); err != nil {
					writeProblem(w, r, http.StatusBadRequest, err.Error())
					return
				}
				out, err := res.create(v)
				if err != nil {
					s.fail(w, r, err)
					return
				}
				w.Header().Set("Location", r.URL.Path+"/"+res.name(&out))
				writeJSON(w, http.StatusCreated, res.meta(&out).Version, res.show(r, out))
			}},
		{method: "GET", path: itemPath, access: res.read, summary: "Get a " + res.kind, response: res.show(nil, example), status: 200,
			handle: func(w http.ResponseWriter, r *http.Request, _ auth.Principal) {
				v, err := res.get(r)
				if err != nil {
					s.fail(w, r, err)
					return
				}
				writeJSON(w, http.StatusOK, res.meta(&v).Version, res.show(r, v))
			}},
		{method: "PUT", path: itemPath, access: res.write, summary: "Replace a " + res.kind + " (If-Match required)", request: example, response: res.show(nil, example), status: 200,
			handle: func(w http.ResponseWriter, r *http.Request, _ auth.Principal) {
				version, present, err := ifMatch(r)
				switch {
				case err != nil:
					writeProblem(w, r, http.StatusBadRequest, err.Error())
					return
				case !present:
					writeProblem(w, r, http.StatusPreconditionRequired, "GET the resource and send its ETag in If-Match")
					return
				}
				var v T
				if !s.decode(w, r, &v, res.readOnly...) {
					return
				}
				if err := res.bind(r, &v, true); err != nil {
					writeProblem(w, r, http.StatusBadRequest, err.Error())
					return
				}
				if version == 0 { // If-Match: * — whatever version exists
					cur, err := res.get(r)
					if err != nil {
						s.fail(w, r, err)
						return
					}
					version = res.meta(&cur).Version
				}
				out, err := res.update(v, version)
				if err != nil {
					s.fail(w, r, err)
					return
				}
				writeJSON(w, http.StatusOK, res.meta(&out).Version, res.show(r, out))
			}},
		{method: "DELETE", path: itemPath, access: res.write, summary: "Delete a " + res.kind + " (If-Match optional)", status: 204,
			handle: func(w http.ResponseWriter, r *http.Request, _ auth.Principal) {
				version, _, err := ifMatch(r)
				if err != nil {
					writeProblem(w, r, http.StatusBadRequest, err.Error())
					return
				}
				if err := res.del(r, version); err != nil {
					s.fail(w, r, err)
					return
				}
				w.WriteHeader(http.StatusNoContent)
			}},
	}
}
