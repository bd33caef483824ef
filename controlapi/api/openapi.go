package api

import (
	"net/http"
	"net/netip"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// OpenAPI returns the API's OpenAPI 3.0 document, built from the route table and the
// Go types the routes take and return.
func (s *Server) OpenAPI() map[string]any {
	schemas := map[string]any{}
	paths := map[string]map[string]any{}
	for _, rt := range s.routes() {
		op := map[string]any{
			"summary":     rt.summary,
			"operationId": operationID(rt),
			"responses":   map[string]any{},
		}
		if rt.access != public {
			op["security"] = []any{map[string]any{"bearer": []string{}}}
		}
		var params []any
		for _, m := range pathVar.FindAllStringSubmatch(rt.path, -1) {
			params = append(params, map[string]any{"name": m[1], "in": "path", "required": true, "schema": map[string]any{"type": "string"}})
		}
		if rt.list {
			params = append(params,
				map[string]any{"name": "limit", "in": "query", "schema": map[string]any{"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}},
				map[string]any{"name": "page_token", "in": "query", "schema": map[string]any{"type": "string"}})
		}
		if rt.method == "PUT" {
			params = append(params, map[string]any{"name": "If-Match", "in": "header", "required": true, "schema": map[string]any{"type": "string"},
				"description": "the ETag of the version this change is based on, or *"})
		}
		if len(params) > 0 {
			op["parameters"] = params
		}
		if rt.request != nil {
			op["requestBody"] = map[string]any{"required": true, "content": map[string]any{
				"application/json": map[string]any{"schema": schemaOf(reflect.TypeOf(rt.request), schemas)}}}
		}
		resp := map[string]any{"description": http.StatusText(rt.status)}
		if rt.response != nil {
			var sch any = schemaOf(reflect.TypeOf(rt.response), schemas)
			if rt.list {
				sch = map[string]any{"type": "object", "properties": map[string]any{
					"items": map[string]any{"type": "array", "items": sch}, "next_page_token": map[string]any{"type": "string"}}}
			}
			resp["content"] = map[string]any{"application/json": map[string]any{"schema": sch}}
		}
		responses := op["responses"].(map[string]any)
		responses[strconv.Itoa(rt.status)] = resp
		responses["default"] = map[string]any{"description": "An RFC 9457 problem",
			"content": map[string]any{"application/problem+json": map[string]any{"schema": schemaOf(reflect.TypeOf(Problem{}), schemas)}}}
		if paths[rt.path] == nil {
			paths[rt.path] = map[string]any{}
		}
		paths[rt.path][strings.ToLower(rt.method)] = op
	}
	return map[string]any{
		"openapi": "3.0.3",
		"info": map[string]any{"title": "moat control API", "version": "1",
			"description": "Tenants, services, attestation-gated backends, allow rules and attestation policies of a moat gateway."},
		"paths": paths,
		"components": map[string]any{
			"schemas":         schemas,
			"securitySchemes": map[string]any{"bearer": map[string]any{"type": "http", "scheme": "bearer"}},
		},
	}
}

var pathVar = regexp.MustCompile(`\{([a-z]+)\}`)

func operationID(rt route) string {
	var b strings.Builder
	b.WriteString(strings.ToLower(rt.method))
	for _, part := range strings.Split(rt.path, "/")[2:] {
		if strings.HasPrefix(part, "{") {
			continue
		}
		part = strings.ReplaceAll(part, ".", "_")
		b.WriteString(strings.ToUpper(part[:1]) + part[1:])
	}
	if strings.HasSuffix(rt.path, "}") {
		b.WriteString("Item")
	}
	return b.String()
}

var (
	addrType     = reflect.TypeOf(netip.Addr{})
	addrPortType = reflect.TypeOf(netip.AddrPort{})
	prefixType   = reflect.TypeOf(netip.Prefix{})
	timeType     = reflect.TypeOf(time.Time{})
	textType     = reflect.TypeOf((*interface{ MarshalText() ([]byte, error) })(nil)).Elem()
)

// schemaOf describes t in JSON Schema (the OpenAPI 3.0 dialect); named structs go to
// components and are referenced.
func schemaOf(t reflect.Type, defs map[string]any) map[string]any {
	switch {
	case t == addrType:
		return map[string]any{"type": "string", "format": "ipv4"}
	case t == prefixType:
		return map[string]any{"type": "string", "description": "an IPv4 prefix, such as 10.0.0.0/24"}
	case t == addrPortType:
		return map[string]any{"type": "string", "description": "an IPv4 address and port, such as 192.0.2.1:51820"}
	case t == timeType:
		return map[string]any{"type": "string", "format": "date-time"}
	case t.Kind() != reflect.Struct && t.Implements(textType):
		return map[string]any{"type": "string"}
	}
	switch t.Kind() {
	case reflect.Pointer:
		return schemaOf(t.Elem(), defs)
	case reflect.String:
		return map[string]any{"type": "string"}
	case reflect.Bool:
		return map[string]any{"type": "boolean"}
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return map[string]any{"type": "integer"}
	case reflect.Slice, reflect.Array:
		if t.Elem().Kind() == reflect.Uint8 {
			return map[string]any{"type": "string", "format": "byte"}
		}
		return map[string]any{"type": "array", "items": schemaOf(t.Elem(), defs)}
	case reflect.Map:
		return map[string]any{"type": "object", "additionalProperties": schemaOf(t.Elem(), defs)}
	case reflect.Interface:
		return map[string]any{}
	case reflect.Struct:
		name := t.Name()
		if name == "" || strings.Contains(name, "[") {
			return structSchema(t, defs)
		}
		if _, done := defs[name]; !done {
			defs[name] = map[string]any{} // breaks cycles
			defs[name] = structSchema(t, defs)
		}
		return map[string]any{"$ref": "#/components/schemas/" + name}
	}
	return map[string]any{}
}

func structSchema(t reflect.Type, defs map[string]any) map[string]any {
	props := map[string]any{}
	var addFields func(t reflect.Type)
	addFields = func(t reflect.Type) {
		for i := range t.NumField() {
			f := t.Field(i)
			if !f.IsExported() {
				continue
			}
			tag := f.Tag.Get("json")
			name, _, _ := strings.Cut(tag, ",")
			if name == "-" {
				continue
			}
			if f.Anonymous && name == "" {
				ft := f.Type
				if ft.Kind() == reflect.Pointer {
					ft = ft.Elem()
				}
				addFields(ft)
				continue
			}
			if name == "" {
				name = f.Name
			}
			props[name] = schemaOf(f.Type, defs)
		}
	}
	addFields(t)
	return map[string]any{"type": "object", "properties": props}
}
