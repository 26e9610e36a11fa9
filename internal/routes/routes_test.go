package routes

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestMatch(t *testing.T) {
	m, err := New(Options{Patterns: []string{
		"/users/{id}",
		"/users/me",
		"/users/{id}/orders/:order",
		"/",
		"/static/{file}",
	}})
	require.NoError(t, err)
	tests := []struct {
		path, route string
		matched     bool
	}{
		{"/users/42", "/users/{id}", true},
		{"/users/42/", "/users/{id}", true},
		{"/users/alice", "/users/{id}", true},
		{"/users/me", "/users/me", true}, // the literal wins over {id}
		{"/users/42/orders/7", "/users/{id}/orders/:order", true},
		{"/", "/", true},
		{"/users", "/users", false},
		{"/users/", "/users/", false},
		{"/users//orders/7", "/users//orders/*", false}, // a parameter needs a segment
		// Not matched: the heuristic.
		{"/items/123", "/items/*", false},
		{"/items/123/reviews/550e8400-e29b-41d4-a716-446655440000", "/items/*/reviews/*", false},
		{"/blobs/9f86d081884c7d65", "/blobs/*", false},
		{"/blobs/deadbeef/cafe", "/blobs/deadbeef/cafe", false},
		{"/v1/a1b2c3d4", "/v1/*", false},
		{"/hello", "/hello", false},
	}
	for _, tt := range tests {
		r := m.Match(tt.path)
		assert.Equal(t, tt.route, r.Route, tt.path)
		assert.Equal(t, tt.matched, r.Matched, tt.path)
		assert.Same(t, r, m.Match(tt.path), "cached")
	}
	r := m.Match("/users/42")
	assert.Equal(t, "GET /users/{id}", r.Name(0))
	assert.Equal(t, "HTTP /users/{id}", r.Name(len(Methods)-1))
}

func TestUnmatchedModes(t *testing.T) {
	const p = "/orders/123"
	for _, tt := range []struct {
		opts Options
		want string
		name string
	}{
		{Options{}, "/orders/*", "GET /orders/*"},
		{Options{WildcardChar: "_"}, "/orders/_", "GET /orders/_"},
		{Options{Unmatched: Path}, "/orders/123", "GET /orders/123"},
		{Options{Unmatched: Wildcard}, "/**", "GET /**"},
		{Options{Unmatched: Unset}, "", "GET"},
	} {
		m, err := New(tt.opts)
		require.NoError(t, err)
		r := m.Match(p)
		assert.Equal(t, tt.want, r.Route, "%+v", tt.opts)
		assert.False(t, r.Matched)
		assert.Equal(t, tt.name, r.Name(0))
	}
}

func TestIsID(t *testing.T) {
	for _, s := range []string{"0", "123", "550e8400-E29B-41d4-a716-446655440000", "9f86d081884c7d65", "a1b2c3d4", "DEADBEEFDEADBEEF"} {
		assert.True(t, IsID(s), s)
	}
	for _, s := range []string{"", "users", "v1", "deadbeef", "cafe", "a1b2c3", "550e8400e29b-41d4-a716-446655440000x", "12ab-"} {
		assert.False(t, IsID(s), s)
	}
}

func TestCheck(t *testing.T) {
	assert.NoError(t, Check(Options{Patterns: []string{"/a/{b}", "/:c"}, Unmatched: Path, WildcardChar: "#"}))
	err := Check(Options{Patterns: []string{"users", "/a/{b", "/a/{}", "/a/:", "/a?x=1"}, Unmatched: "sometimes", WildcardChar: "ab"})
	require.Error(t, err)
	for _, want := range []string{
		`patterns[0]: "users" does not start with /`,
		`patterns[1]: "/a/{b": segment "{b": want {name}`,
		`patterns[2]`, `patterns[3]`, `patterns[4]`,
		`unmatched: unknown value "sometimes"; want heuristic, path, wildcard or unset`,
		`wildcard_char: "ab"`,
	} {
		assert.Contains(t, err.Error(), want)
	}
}

func TestIgnored(t *testing.T) {
	m, err := New(Options{Patterns: []string{"/users/{id}"}, Ignored: []string{"/health", "/debug/**", "/api/*/ping", "/v/{ver}/ready"}})
	require.NoError(t, err)
	assert.True(t, m.Ignoring())
	for path, want := range map[string]bool{
		"/health": true, "/health/": true, "/healthz": false, "/health/x": false,
		"/debug": true, "/debug/pprof/heap": true, "/debugger": false,
		"/api/v1/ping": true, "/api/ping": false, "/api/v1/v2/ping": false,
		"/v/3/ready": true, "/users/7": false, "/": false,
	} {
		assert.Equal(t, want, m.Match(path).Ignored, path)
	}
	assert.Equal(t, "/users/{id}", m.Match("/users/7").Route)

	none, err := New(Options{})
	require.NoError(t, err)
	assert.False(t, none.Ignoring())

	err = Check(Options{Patterns: []string{"/a/*"}, Ignored: []string{"/a/**/b", "/x*", "/y/{id"}})
	require.Error(t, err)
	for _, want := range []string{
		`patterns[0]: "/a/*": segment "*": * stands alone as a segment, in ignored patterns only`,
		`ignored_patterns[0]: "/a/**/b": ** must be the last segment`,
		`ignored_patterns[1]: "/x*": segment "x*"`,
		`ignored_patterns[2]`,
	} {
		assert.Contains(t, err.Error(), want)
	}
}

func TestCacheBounded(t *testing.T) {
	m, err := New(Options{Unmatched: Path})
	require.NoError(t, err)
	for i := range cacheMax + 10 {
		m.Match("/p/" + string(rune('a'+i%26)) + string(rune(i)))
	}
	assert.LessOrEqual(t, len(m.cache), cacheMax)
}

func TestMatchCachedNoAlloc(t *testing.T) {
	m, err := New(Options{Patterns: []string{"/users/{id}"}})
	require.NoError(t, err)
	m.Match("/users/1").Name(0)
	m.Match("/items/2").Name(2)
	n := testing.AllocsPerRun(100, func() {
		_ = m.Match("/users/1").Name(0)
		_ = m.Match("/items/2").Name(2)
	})
	assert.Zero(t, n)
}

func BenchmarkMatchCached(b *testing.B) {
	m, _ := New(Options{Patterns: []string{"/users/{id}", "/users/{id}/orders/{order}", "/health"}})
	paths := []string{"/users/1", "/users/2/orders/3", "/health", "/items/550e8400-e29b-41d4-a716-446655440000"}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		_ = m.Match(paths[i%len(paths)]).Name(0)
		i++
	}
}
