// Package routes gives SERVER spans their http.route: the first of the
// user's patterns that matches the path, else, as configured, a heuristic
// that replaces the id-like segments of the path, the path itself, a
// wildcard, or nothing. The spelling follows Beyla's routes section
// (patterns, unmatched, wildcard_char).
//
// A Matcher is not safe for concurrent use; it caches the route and the
// span names of each path it has seen (bounded), so a path costs one map
// lookup once seen, and no allocation.
package routes

import (
	"errors"
	"fmt"
	"strings"
)

// Unmatched says what a path that matches no pattern gets.
type Unmatched string

// Values of Unmatched.
const (
	// Heuristic replaces id-like segments (see IsID) with the wildcard.
	Heuristic Unmatched = "heuristic"
	// Path uses the path itself (high cardinality).
	Path Unmatched = "path"
	// Wildcard uses "/**".
	Wildcard Unmatched = "wildcard"
	// Unset leaves http.route unset.
	Unset Unmatched = "unset"
)

// cacheMax bounds the cache of a Matcher; it is cleared when full.
const cacheMax = 4096

// Methods is the order of the span name slots of a route: the methods the
// HTTP conventions know, then "HTTP" for the others.
var Methods = [...]string{"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH", "HTTP"}

// Route is the result of a match.
type Route struct {
	// Route is http.route; empty for none.
	Route string
	// Matched: a pattern matched.
	Matched bool
	// Ignored: the path matches one of Options.Ignored; its spans are
	// dropped.
	Ignored bool
	// names are "METHOD route", by Methods index, made on first use.
	names [len(Methods)]string
}

// Name returns the span name for method index m (an index into Methods):
// "METHOD route", or the method alone when there is no route.
func (r *Route) Name(m int) string {
	if r.Route == "" {
		return Methods[m]
	}
	if r.names[m] == "" {
		r.names[m] = Methods[m] + " " + r.Route
	}
	return r.names[m]
}

// Matcher matches paths against patterns.
type Matcher struct {
	patterns  []pattern
	ignored   []pattern
	unmatched Unmatched
	wildcard  string
	cache     map[string]*Route
}

type pattern struct {
	text string
	segs []string // "" is a parameter; "*" one segment, in ignored patterns
	// tail: an ignored pattern ending in "/**", which matches any number of
	// further segments, none included.
	tail bool
}

// Options configure a Matcher.
type Options struct {
	// Patterns are paths whose segments are literal, or a parameter written
	// {name} or :name that matches any one non-empty segment. A pattern
	// starts with "/".
	Patterns []string
	// Unmatched is what a path matching no pattern gets; Heuristic when
	// empty.
	Unmatched Unmatched
	// WildcardChar replaces id segments in Heuristic mode; "*" when empty.
	WildcardChar string
	// Ignored are paths whose spans are dropped (health checks, metrics
	// scrapes), written as Patterns are, where a segment "*" also matches
	// any one segment and a last segment "**" any number of segments:
	// /health, /debug/**, /api/*/ping.
	Ignored []string
}

// Check validates opts; the messages name the field (patterns[i],
// unmatched, wildcard_char) for the caller to prefix.
func Check(opts Options) error {
	var errs []error
	for i, p := range opts.Patterns {
		if _, err := parse(p, false); err != nil {
			errs = append(errs, fmt.Errorf("patterns[%d]: %w", i, err))
		}
	}
	for i, p := range opts.Ignored {
		if _, err := parse(p, true); err != nil {
			errs = append(errs, fmt.Errorf("ignored_patterns[%d]: %w", i, err))
		}
	}
	switch opts.Unmatched {
	case "", Heuristic, Path, Wildcard, Unset:
	default:
		errs = append(errs, fmt.Errorf("unmatched: unknown value %q; want heuristic, path, wildcard or unset", opts.Unmatched))
	}
	if w := opts.WildcardChar; w != "" && (len(w) != 1 || w == "/" || w == "?" || w[0] <= ' ' || w[0] > '~') {
		errs = append(errs, fmt.Errorf("wildcard_char: %q is not one printable ASCII character other than / and ?", w))
	}
	return errors.Join(errs...)
}

// New returns a Matcher for opts, or the error of Check.
func New(opts Options) (*Matcher, error) {
	if err := Check(opts); err != nil {
		return nil, err
	}
	m := &Matcher{unmatched: opts.Unmatched, wildcard: opts.WildcardChar, cache: make(map[string]*Route)}
	if m.unmatched == "" {
		m.unmatched = Heuristic
	}
	if m.wildcard == "" {
		m.wildcard = "*"
	}
	for _, p := range opts.Patterns {
		pt, _ := parse(p, false)
		m.patterns = append(m.patterns, pt)
	}
	for _, p := range opts.Ignored {
		pt, _ := parse(p, true)
		m.ignored = append(m.ignored, pt)
	}
	return m, nil
}

// parse reads a pattern; glob allows the "*" and "**" segments of ignored
// patterns.
func parse(p string, glob bool) (pattern, error) {
	if !strings.HasPrefix(p, "/") {
		return pattern{}, fmt.Errorf("%q does not start with /", p)
	}
	pt := pattern{text: p}
	segs := splitPath(p)
	for i, s := range segs {
		switch {
		case glob && s == "**":
			if i != len(segs)-1 {
				return pattern{}, fmt.Errorf("%q: ** must be the last segment", p)
			}
			pt.tail = true
			return pt, nil
		case strings.Contains(s, "*") && (!glob || s != "*"):
			return pattern{}, fmt.Errorf("%q: segment %q: * stands alone as a segment, in ignored patterns only", p, s)
		case strings.HasPrefix(s, "{") || strings.HasSuffix(s, "}"):
			if len(s) < 3 || s[0] != '{' || s[len(s)-1] != '}' || strings.ContainsAny(s[1:len(s)-1], "{}") {
				return pattern{}, fmt.Errorf("%q: segment %q: want {name}", p, s)
			}
			s = ""
		case strings.HasPrefix(s, ":"):
			if len(s) < 2 {
				return pattern{}, fmt.Errorf("%q: segment %q: want :name", p, s)
			}
			s = ""
		case strings.ContainsAny(s, "?#"):
			return pattern{}, fmt.Errorf("%q: a pattern is a path, without query or fragment", p)
		}
		pt.segs = append(pt.segs, s)
	}
	return pt, nil
}

// splitPath returns the segments of p without its leading slash and one
// trailing slash: "/a/b/" gives [a b], "/" none.
func splitPath(p string) []string {
	p = strings.TrimPrefix(p, "/")
	p = strings.TrimSuffix(p, "/")
	if p == "" {
		return nil
	}
	return strings.Split(p, "/")
}

// Match returns the route of path (a URL path without query). The result
// is shared and cached: the caller must not change it.
func (m *Matcher) Match(path string) *Route {
	if r, ok := m.cache[path]; ok {
		return r
	}
	if len(m.cache) >= cacheMax {
		clear(m.cache)
	}
	r := m.match(path)
	m.cache[strings.Clone(path)] = r
	return r
}

// Ignoring reports whether m has ignored patterns.
func (m *Matcher) Ignoring() bool { return len(m.ignored) > 0 }

func (m *Matcher) match(path string) *Route {
	for i := range m.ignored {
		if m.ignored[i].matches(path) {
			return &Route{Ignored: true}
		}
	}
	var best *pattern
	for i := range m.patterns {
		p := &m.patterns[i]
		if p.matches(path) && (best == nil || p.beats(best)) {
			best = p
		}
	}
	if best != nil {
		return &Route{Route: best.text, Matched: true}
	}
	switch m.unmatched {
	case Path:
		return &Route{Route: strings.Clone(path)}
	case Wildcard:
		return &Route{Route: "/**"}
	case Unset:
		return &Route{}
	}
	return &Route{Route: heuristic(path, m.wildcard)}
}

// matches reports whether path has p's segments; a trailing slash does not
// count.
func (p *pattern) matches(path string) bool {
	if !strings.HasPrefix(path, "/") {
		return false
	}
	rest := strings.TrimSuffix(path[1:], "/")
	for _, s := range p.segs {
		seg := rest
		if j := strings.IndexByte(rest, '/'); j >= 0 {
			seg, rest = rest[:j], rest[j+1:]
		} else {
			rest = ""
		}
		if s == "" || s == "*" {
			if seg == "" {
				return false
			}
		} else if s != seg {
			return false
		}
	}
	return rest == "" || p.tail
}

// beats reports whether p is more specific than q, which matches the same
// path: at the first segment where one is literal and the other a
// parameter, the literal wins; otherwise the one listed first.
func (p *pattern) beats(q *pattern) bool {
	for i := range p.segs {
		pl, ql := p.segs[i] != "", q.segs[i] != ""
		if pl != ql {
			return pl
		}
	}
	return false
}

// heuristic returns path with every id-like segment (IsID) replaced by
// wildcard. It runs once per path (the Matcher caches it).
func heuristic(path, wildcard string) string {
	segs := strings.Split(path, "/")
	changed := false
	for i, s := range segs {
		if IsID(s) {
			segs[i], changed = wildcard, true
		}
	}
	if !changed {
		return strings.Clone(path)
	}
	return strings.Join(segs, "/")
}

// IsID reports whether a path segment looks like an identifier rather than
// a name: all decimal digits; a UUID (8-4-4-4-12 hex digits, any case); or
// hex digits only, at least 16 of them, or at least 8 with a decimal digit
// among them (so words such as "deadbeef" and "cafe" stay).
func IsID(seg string) bool {
	if seg == "" {
		return false
	}
	digits, hex := 0, 0
	for i := 0; i < len(seg); i++ {
		c := seg[i]
		switch {
		case c >= '0' && c <= '9':
			digits++
			hex++
		case (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'):
			hex++
		}
	}
	switch {
	case digits == len(seg):
		return true
	case hex == len(seg):
		return len(seg) >= 16 || (len(seg) >= 8 && digits > 0)
	}
	return isUUID(seg)
}

func isUUID(s string) bool {
	if len(s) != 36 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch i {
		case 8, 13, 18, 23:
			if c != '-' {
				return false
			}
		default:
			if !((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F')) {
				return false
			}
		}
	}
	return true
}
