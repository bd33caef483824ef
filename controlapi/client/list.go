package client

import (
	"context"
	"fmt"
	"iter"
	"net/url"
	"strconv"

	"github.com/seed4c/moat/controlapi/api"
)

// Page is one page of a list: its items and the token of the next page ("" on the
// last).
type Page[T any] = api.List[T]

// List is one of the API's paginated collections. Get one from Client.Tenants,
// Client.Services and the like.
type List[T any] struct {
	c    *Client
	path string
}

func newList[T any](c *Client, path string) *List[T] { return &List[T]{c: c, path: path} }

// Page fetches one page: up to limit items (0: the server's default) from the page
// token (empty: the first page).
func (l *List[T]) Page(ctx context.Context, limit int, pageToken string) (Page[T], error) {
	q := url.Values{}
	if limit > 0 {
		q.Set("limit", strconv.Itoa(limit))
	}
	if pageToken != "" {
		q.Set("page_token", pageToken)
	}
	p := l.path
	if len(q) > 0 {
		p += "?" + q.Encode()
	}
	var out Page[T]
	_, err := l.c.do(ctx, "GET", p, 0, nil, &out)
	return out, err
}

// All yields every item of the collection, page after page, and stops at the first
// error, which it yields with a zero item.
func (l *List[T]) All(ctx context.Context) iter.Seq2[T, error] {
	return func(yield func(T, error) bool) {
		token := ""
		seen := map[string]bool{}
		for {
			p, err := l.Page(ctx, l.c.PageSize, token)
			if err != nil {
				var zero T
				yield(zero, err)
				return
			}
			for _, v := range p.Items {
				if !yield(v, nil) {
					return
				}
			}
			if p.NextPageToken == "" {
				return
			}
			if seen[p.NextPageToken] {
				var zero T
				yield(zero, fmt.Errorf("GET %s: the server sent page token %q twice", l.path, p.NextPageToken))
				return
			}
			seen[p.NextPageToken] = true
			token = p.NextPageToken
		}
	}
}

// Collect returns every item of the collection.
func (l *List[T]) Collect(ctx context.Context) ([]T, error) {
	out := []T{}
	for v, err := range l.All(ctx) {
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, nil
}
