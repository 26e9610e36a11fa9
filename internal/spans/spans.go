// Package spans turns finished HTTP/1.x requests seen by the kernel tracer
// into OTLP spans (ptrace.Traces) that follow the stable OpenTelemetry HTTP
// semantic conventions (http.request.method, url.path, server.address, …).
//
// Attribute names come from the go.opentelemetry.io/otel/semconv/v1.43.0
// constants so that a typo is a compile error rather than a silent schema
// break; only the key strings are used, nothing else from the OTel SDK.
//
// A Builder collects spans into one batch: one ResourceSpans per process
// (keyed by Process.PID), each with a single ScopeSpans for this receiver.
// Flush hands the batch over and starts a new one. A Builder is not safe for
// concurrent use; the receiver owns one per reader goroutine.
package spans

import (
	"net/netip"
	"strconv"
	"strings"
	"time"

	"go.opentelemetry.io/collector/pdata/pcommon"
	"go.opentelemetry.io/collector/pdata/ptrace"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"

	"github.com/ebpftracing/ebpftracingreceiver/internal/procres"
	"github.com/ebpftracing/ebpftracingreceiver/internal/routes"
)

// ScopeName is the instrumentation scope name set on every ScopeSpans.
const ScopeName = "github.com/ebpftracing/ebpftracingreceiver"

// Kind says on which side of the connection the request was observed.
type Kind uint8

const (
	// KindServer is a request received by the traced process.
	KindServer Kind = 1
	// KindClient is a request sent by the traced process.
	KindClient Kind = 2
)

// Request is one finished HTTP/1.x request seen by the kernel tracer.
type Request struct {
	Kind       Kind
	Start, End time.Time
	PID, TID   uint32
	// Method as on the wire, e.g. "GET". Matched case-sensitively.
	Method string
	// Path is the request target as on the wire. It may include "?query";
	// it is split into url.path and url.query. Absolute-form targets
	// ("http://host/p") are understood too.
	Path string
	// Host is the Host header value if captured ("example.com:8080",
	// "[::1]:8080"); empty if not.
	Host string
	// Status is the response status code, 0 if unknown.
	Status      int
	Local, Peer netip.AddrPort
	// ProtoMinor is the HTTP/1.x minor version: 0 or 1.
	ProtoMinor uint8
	// HTTP2: an HTTP/2 request (Go library probes, bpf/gogrpc):
	// network.protocol.version "2", ProtoMinor unused.
	HTTP2        bool
	TraceID      pcommon.TraceID
	SpanID       pcommon.SpanID
	ParentSpanID pcommon.SpanID // zero if root
	TraceFlags   uint8          // W3C trace flags, 0x01 sampled
	// TraceState is the W3C tracestate of the span's context: for a SERVER
	// span the validated tracestate of the incoming request, for a CLIENT
	// span the one of the SERVER span it is a child of. Empty if none.
	TraceState string
	// TLS: seen as the plaintext of a TLS library call (url.scheme https
	// for an origin-form target).
	TLS bool
}

// Process describes the process a request belongs to; it becomes the
// resource of its spans. It is computed once per process (internal/procres,
// at discovery); empty fields are left out of the resource.
type Process struct {
	PID         int
	ServiceName string
	ExeName     string

	ExePath           string
	ServiceInstanceID string
	// CommandArgs is process.command_args.
	CommandArgs []string
	// RuntimeName, RuntimeVersion: process.runtime.*; Language:
	// telemetry.sdk.language.
	RuntimeName, RuntimeVersion, Language string
	ContainerID, PodUID                   string
	// Attributes are the process's other OTEL_RESOURCE_ATTRIBUTES, put
	// last: they win over the attributes above of the same key.
	Attributes []procres.Attribute
}

// ProcessOf is the Process of pid with the resource info.
func ProcessOf(pid int, info *procres.Info) Process {
	return Process{
		PID:               pid,
		ServiceName:       info.ServiceName,
		ExeName:           info.ExeName,
		ExePath:           info.ExePath,
		ServiceInstanceID: info.ServiceInstanceID,
		CommandArgs:       info.CommandArgs,
		RuntimeName:       info.Runtime.Name,
		RuntimeVersion:    info.Runtime.Version,
		Language:          info.Runtime.Language,
		ContainerID:       info.ContainerID,
		PodUID:            info.PodUID,
		Attributes:        info.Attributes,
	}
}

// OTLP SpanFlags bits 8 and 9: whether the parent span context is remote
// (opentelemetry-proto trace.proto, SPAN_FLAGS_CONTEXT_*_MASK).
const (
	flagsContextHasIsRemote uint32 = 0x100
	flagsContextIsRemote    uint32 = 0x200
)

// addrCacheMax bounds the address-string cache; when full it is cleared.
const addrCacheMax = 1024

// Attribute keys, as plain strings for pcommon.Map.
var (
	keyMethod         = string(semconv.HTTPRequestMethodKey)
	keyMethodOriginal = string(semconv.HTTPRequestMethodOriginalKey)
	keyStatusCode     = string(semconv.HTTPResponseStatusCodeKey)
	keyURLPath        = string(semconv.URLPathKey)
	keyURLQuery       = string(semconv.URLQueryKey)
	keyURLScheme      = string(semconv.URLSchemeKey)
	keyURLFull        = string(semconv.URLFullKey)
	keyProtoVersion   = string(semconv.NetworkProtocolVersionKey)
	keyPeerAddress    = string(semconv.NetworkPeerAddressKey)
	keyPeerPort       = string(semconv.NetworkPeerPortKey)
	keyServerAddress  = string(semconv.ServerAddressKey)
	keyServerPort     = string(semconv.ServerPortKey)
	keyClientAddress  = string(semconv.ClientAddressKey)
	keyErrorType      = string(semconv.ErrorTypeKey)
	keyRoute          = string(semconv.HTTPRouteKey)
	keyURLTemplate    = string(semconv.URLTemplateKey)

	keyServiceName = string(semconv.ServiceNameKey)
	keyProcessPID  = string(semconv.ProcessPIDKey)
	keyExeName     = string(semconv.ProcessExecutableNameKey)
	keyHostName    = string(semconv.HostNameKey)

	keyInstanceID     = string(semconv.ServiceInstanceIDKey)
	keyExePath        = string(semconv.ProcessExecutablePathKey)
	keyCommandArgs    = string(semconv.ProcessCommandArgsKey)
	keyRuntimeName    = string(semconv.ProcessRuntimeNameKey)
	keyRuntimeVersion = string(semconv.ProcessRuntimeVersionKey)
	keySDKLanguage    = string(semconv.TelemetrySDKLanguageKey)
	keyContainerID    = string(semconv.ContainerIDKey)
	keyPodUID         = string(semconv.K8SPodUIDKey)
)

// Builder accumulates spans into a ptrace.Traces batch.
type Builder struct {
	hostName     string
	scopeVersion string

	traces ptrace.Traces
	byPID  map[int]ptrace.SpanSlice
	n      int
	// lastLen is the number of spans of each process in the previous
	// batch: a new batch sizes its span slices from it once, instead of
	// growing them by doubling.
	lastLen map[int]int

	// addrs caches the text form of recently seen IP addresses so that a
	// span does not allocate one string per address.
	addrs map[netip.Addr]string
	// errTypes caches error.type values for status codes 400..599.
	errTypes [200]string

	// routes gives SERVER spans http.route and their name; nil for none.
	routes *routes.Matcher
	// unmatched counts SERVER spans whose path matched no route pattern.
	unmatched int64
	// ignored counts spans dropped by the routes' ignored patterns.
	ignored int64
}

// SetRoutes makes SERVER spans take http.route, and the span name
// "METHOD route", from m; nil (the default) sets no route.
func (b *Builder) SetRoutes(m *routes.Matcher) { b.routes = m }

// TakeUnmatched returns the number of SERVER spans whose path matched no
// route pattern since the last call.
func (b *Builder) TakeUnmatched() int64 {
	n := b.unmatched
	b.unmatched = 0
	return n
}

// TakeIgnored returns the number of spans dropped because their path
// matched an ignored pattern of the routes, since the last call.
func (b *Builder) TakeIgnored() int64 {
	n := b.ignored
	b.ignored = 0
	return n
}

// NewBuilder returns a Builder whose resources carry host.name = hostName
// and whose scope carries the given version.
func NewBuilder(hostName, scopeVersion string) *Builder {
	return &Builder{
		hostName:     hostName,
		scopeVersion: scopeVersion,
		traces:       ptrace.NewTraces(),
		byPID:        make(map[int]ptrace.SpanSlice),
		lastLen:      make(map[int]int),
		addrs:        make(map[netip.Addr]string),
	}
}

// Len reports the number of spans appended since the last Flush.
func (b *Builder) Len() int { return b.n }

// Flush returns the current batch and starts a new, empty one.
func (b *Builder) Flush() ptrace.Traces {
	td := b.traces
	b.traces = ptrace.NewTraces()
	clear(b.lastLen)
	for pid, spans := range b.byPID {
		b.lastLen[pid] = spans.Len()
	}
	clear(b.byPID)
	b.n = 0
	return td
}

// Append adds r as a span under the resource of proc, unless its path
// matches an ignored pattern of the routes (SERVER and CLIENT spans alike). The resource of a PID
// is created by its first Append in a batch; later calls for the same PID
// reuse it and do not update its attributes.
func (b *Builder) Append(r *Request, proc Process) {
	if b.routes != nil && b.routes.Ignoring() {
		if t := parseTarget(r.Path); t.origin && b.routes.Match(t.path).Ignored {
			b.ignored++
			return
		}
	}
	b.fill(b.newSpan(proc), r)
}

// newSpan appends an empty span under the resource of proc.
func (b *Builder) newSpan(proc Process) ptrace.Span {
	spans, ok := b.byPID[proc.PID]
	if !ok {
		spans = b.newResource(proc)
		b.byPID[proc.PID] = spans
	}
	b.n++
	return spans.AppendEmpty()
}

func (b *Builder) newResource(proc Process) ptrace.SpanSlice {
	rs := b.traces.ResourceSpans().AppendEmpty()
	attrs := rs.Resource().Attributes()
	attrs.EnsureCapacity(12 + len(proc.Attributes))
	service := proc.ServiceName
	if service == "" {
		// The SDK default from the resource semantic conventions.
		service = "unknown_service"
		if proc.ExeName != "" {
			service += ":" + proc.ExeName
		}
	}
	attrs.PutStr(keyServiceName, service)
	putNonEmpty(attrs, keyInstanceID, proc.ServiceInstanceID)
	attrs.PutInt(keyProcessPID, int64(proc.PID))
	putNonEmpty(attrs, keyExeName, proc.ExeName)
	putNonEmpty(attrs, keyExePath, proc.ExePath)
	if len(proc.CommandArgs) > 0 {
		args := attrs.PutEmptySlice(keyCommandArgs)
		args.EnsureCapacity(len(proc.CommandArgs))
		for _, a := range proc.CommandArgs {
			args.AppendEmpty().SetStr(a)
		}
	}
	putNonEmpty(attrs, keyRuntimeName, proc.RuntimeName)
	putNonEmpty(attrs, keyRuntimeVersion, proc.RuntimeVersion)
	putNonEmpty(attrs, keySDKLanguage, proc.Language)
	putNonEmpty(attrs, keyHostName, b.hostName)
	putNonEmpty(attrs, keyContainerID, proc.ContainerID)
	putNonEmpty(attrs, keyPodUID, proc.PodUID)
	for _, a := range proc.Attributes {
		attrs.PutStr(a.Key, a.Value)
	}
	ss := rs.ScopeSpans().AppendEmpty()
	ss.Scope().SetName(ScopeName)
	ss.Scope().SetVersion(b.scopeVersion)
	spans := ss.Spans()
	spans.EnsureCapacity(b.lastLen[proc.PID])
	return spans
}

func putNonEmpty(m pcommon.Map, k, v string) {
	if v != "" {
		m.PutStr(k, v)
	}
}

func (b *Builder) fill(span ptrace.Span, r *Request) {
	span.SetTraceID(r.TraceID)
	span.SetSpanID(r.SpanID)
	span.SetParentSpanID(r.ParentSpanID)
	if r.TraceState != "" {
		span.TraceState().FromRaw(r.TraceState)
	}
	span.SetStartTimestamp(pcommon.NewTimestampFromTime(r.Start))
	span.SetEndTimestamp(pcommon.NewTimestampFromTime(r.End))
	span.SetFlags(spanFlags(r))

	// Collected first, so the attribute slice is allocated once at its
	// exact size.
	var attrs attrBuf

	// Method and span name: "METHOD route" for a SERVER span with a
	// route, else the method; "HTTP" for methods the conventions do not
	// know.
	mi := methodIndex(r.Method)
	if mi < len(routes.Methods)-1 {
		attrs.str(keyMethod, r.Method)
	} else {
		attrs.str(keyMethod, "_OTHER")
		if r.Method != "" {
			attrs.str(keyMethodOriginal, r.Method)
		}
	}

	t := parseTarget(r.Path)
	switch {
	case b.routes != nil && r.Kind == KindServer && t.origin:
		route := b.routes.Match(t.path)
		if !route.Matched {
			b.unmatched++
		}
		span.SetName(route.Name(mi))
		if route.Route != "" {
			attrs.str(keyRoute, route.Route)
		}
	case b.routes != nil && r.Kind == KindClient && t.origin:
		// A CLIENT span takes url.template, and the name "METHOD
		// template", only from a pattern the user wrote: the heuristic
		// and the path fallbacks are for the paths a service serves, and
		// a client's targets are other services' paths.
		if route := b.routes.Match(t.path); route.Matched {
			span.SetName(route.Name(mi))
			attrs.str(keyURLTemplate, route.Route)
		} else {
			span.SetName(routes.Methods[mi])
		}
	default:
		span.SetName(routes.Methods[mi])
	}
	if r.TLS && t.origin {
		t.scheme = "https"
	}
	if t.path != "" {
		attrs.str(keyURLPath, t.path)
	}
	if t.query != "" {
		attrs.str(keyURLQuery, redactQuery(t.query))
	}
	attrs.str(keyURLScheme, t.scheme)

	if r.Status != 0 {
		attrs.int(keyStatusCode, int64(r.Status))
	}
	if r.HTTP2 {
		attrs.str(keyProtoVersion, "2")
	} else {
		attrs.str(keyProtoVersion, protoVersion(r.ProtoMinor))
	}

	peer := unmap(r.Peer)
	if peer.IsValid() {
		attrs.str(keyPeerAddress, b.addrString(peer.Addr()))
		attrs.int(keyPeerPort, int64(peer.Port()))
	}

	// Host header first (the origin the client asked for), else the socket.
	host, port, hasPort := splitHost(r.Host)
	if host == "" && t.authority != "" {
		host, port, hasPort = splitHost(t.authority)
	}

	errorFrom := 500
	switch r.Kind {
	case KindServer:
		span.SetKind(ptrace.SpanKindServer)
		local := unmap(r.Local)
		switch {
		case host != "":
			attrs.str(keyServerAddress, host)
			if !hasPort && local.IsValid() {
				port, hasPort = local.Port(), true
			}
			if hasPort {
				attrs.int(keyServerPort, int64(port))
			}
		case local.IsValid():
			attrs.str(keyServerAddress, b.addrString(local.Addr()))
			attrs.int(keyServerPort, int64(local.Port()))
		}
		if peer.IsValid() {
			attrs.str(keyClientAddress, b.addrString(peer.Addr()))
		}
	case KindClient:
		span.SetKind(ptrace.SpanKindClient)
		errorFrom = 400
		var authority string
		var peerAuth netip.AddrPort
		switch {
		case host != "":
			if !hasPort {
				// url.full has no port, so the origin is the scheme default.
				port, hasPort = defaultPort(t.scheme), true
			}
			attrs.str(keyServerAddress, host)
			attrs.int(keyServerPort, int64(port))
			authority = r.Host
			if authority == "" {
				authority = t.authority
			}
		case peer.IsValid():
			attrs.str(keyServerAddress, b.addrString(peer.Addr()))
			attrs.int(keyServerPort, int64(peer.Port()))
			peerAuth = peer
		}
		if full := t.full(authority, peerAuth, b); full != "" {
			attrs.str(keyURLFull, full)
		}
	default:
		span.SetKind(ptrace.SpanKindUnspecified)
	}

	// Span status: Error from the kind's threshold on, otherwise Unset
	// (never Ok). Status 0 means no response was seen: nothing is known
	// about the outcome, so it stays Unset too.
	if r.Status >= errorFrom {
		span.Status().SetCode(ptrace.StatusCodeError)
		attrs.str(keyErrorType, b.errorType(r.Status))
	}
	attrs.to(span.Attributes())
}

// maxSpanAttrs bounds the attributes fill sets on one span.
const maxSpanAttrs = 16

// attrBuf collects a span's attributes before they are put into its map.
type attrBuf struct {
	a [maxSpanAttrs]struct {
		key, str string
		i        int64
		isInt    bool
	}
	n int
}

func (b *attrBuf) str(k, v string) {
	e := &b.a[b.n]
	e.key, e.str = k, v
	b.n++
}

func (b *attrBuf) int(k string, v int64) {
	e := &b.a[b.n]
	e.key, e.i, e.isInt = k, v, true
	b.n++
}

// to puts the attributes into m, which gets exactly their capacity.
func (b *attrBuf) to(m pcommon.Map) {
	m.EnsureCapacity(m.Len() + b.n)
	for i := range b.n {
		e := &b.a[i]
		if e.isInt {
			m.PutInt(e.key, e.i)
		} else {
			m.PutStr(e.key, e.str)
		}
	}
}

// spanFlags returns the OTLP span flags: the W3C trace flags in the low
// byte, plus whether the parent is remote where that is known. A server
// span's parent can only have come over the wire; a root span has no
// parent, so it is known not to be remote. A client span's parent is
// normally a span of the same process, but this layer cannot tell.
func spanFlags(r *Request) uint32 {
	f := uint32(r.TraceFlags)
	switch {
	case r.ParentSpanID.IsEmpty():
		f |= flagsContextHasIsRemote
	case r.Kind == KindServer:
		f |= flagsContextHasIsRemote | flagsContextIsRemote
	}
	return f
}

// methodIndex returns the index in routes.Methods of m when it is one of
// the methods the HTTP conventions define as known (RFC 9110 plus PATCH),
// else the index of "HTTP", the last. The match is case-sensitive, as
// methods are on the wire.
func methodIndex(m string) int {
	switch m {
	case "GET":
		return 0
	case "HEAD":
		return 1
	case "POST":
		return 2
	case "PUT":
		return 3
	case "DELETE":
		return 4
	case "CONNECT":
		return 5
	case "OPTIONS":
		return 6
	case "TRACE":
		return 7
	case "PATCH":
		return 8
	}
	return len(routes.Methods) - 1
}

func protoVersion(minor uint8) string {
	switch minor {
	case 0:
		return "1.0"
	case 1:
		return "1.1"
	}
	return "1." + strconv.Itoa(int(minor))
}

func defaultPort(scheme string) uint16 {
	if scheme == "https" {
		return 443
	}
	return 80
}

// unmap turns an IPv4-mapped IPv6 address into plain IPv4.
func unmap(ap netip.AddrPort) netip.AddrPort {
	if a := ap.Addr(); a.Is4In6() {
		return netip.AddrPortFrom(a.Unmap(), ap.Port())
	}
	return ap
}

func (b *Builder) addrString(a netip.Addr) string {
	if s, ok := b.addrs[a]; ok {
		return s
	}
	if len(b.addrs) >= addrCacheMax {
		clear(b.addrs)
	}
	s := a.String()
	b.addrs[a] = s
	return s
}

func (b *Builder) errorType(status int) string {
	if status < 400 || status >= 400+len(b.errTypes) {
		return strconv.Itoa(status)
	}
	s := &b.errTypes[status-400]
	if *s == "" {
		*s = strconv.Itoa(status)
	}
	return *s
}

// splitHost splits a Host header value into host and port. IPv6 literals
// lose their brackets ("[::1]:8080" gives "::1", 8080). A missing or
// malformed port gives hasPort false. An unbracketed value with more than
// one colon is taken as a bare IPv6 address without a port.
func splitHost(h string) (host string, port uint16, hasPort bool) {
	if h == "" {
		return "", 0, false
	}
	var rest string
	if h[0] == '[' {
		end := strings.IndexByte(h, ']')
		if end < 0 {
			return h, 0, false
		}
		host, rest = h[1:end], h[end+1:]
		if !strings.HasPrefix(rest, ":") {
			return host, 0, false
		}
		rest = rest[1:]
	} else {
		i := strings.LastIndexByte(h, ':')
		if i < 0 || strings.IndexByte(h[:i], ':') >= 0 {
			return h, 0, false
		}
		host, rest = h[:i], h[i+1:]
	}
	port, hasPort = parsePort(rest)
	return host, port, hasPort
}

// parsePort parses a decimal port in 1..65535 without allocating.
func parsePort(s string) (uint16, bool) {
	if s == "" || len(s) > 5 {
		return 0, false
	}
	n := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int(c-'0')
	}
	if n == 0 || n > 65535 {
		return 0, false
	}
	return uint16(n), true
}

// target is a request target split into its URL parts.
type target struct {
	scheme    string
	authority string // only for absolute-form, userinfo removed
	userinfo  bool   // absolute-form carried credentials
	path      string
	query     string
	origin    bool // path is a path ("/..."), not "*" or an authority
}

// parseTarget splits a request target (RFC 9112 section 3.2) into path and
// query. Absolute-form ("http://host/p?q") also yields scheme and
// authority. Asterisk-form ("*") and authority-form (CONNECT "host:443")
// are kept whole as the path.
func parseTarget(p string) target {
	t := target{scheme: "http"}
	if rest, ok := cutPrefixFold(p, "http://"); ok {
		p = rest
	} else if rest, ok := cutPrefixFold(p, "https://"); ok {
		t.scheme = "https"
		p = rest
	} else if !strings.HasPrefix(p, "/") {
		t.path = p
		return t
	} else {
		t.origin = true
	}
	if !t.origin {
		end := strings.IndexAny(p, "/?")
		if end < 0 {
			end = len(p)
		}
		t.authority, p = p[:end], p[end:]
		if at := strings.LastIndexByte(t.authority, '@'); at >= 0 {
			t.authority = t.authority[at+1:]
			t.userinfo = true
		}
		t.origin = true
	}
	if path, query, ok := strings.Cut(p, "?"); ok {
		t.path, t.query = path, query
	} else {
		t.path = p
	}
	if t.path == "" && t.authority != "" {
		t.path = "/"
	}
	return t
}

// full builds url.full from the target and the authority the request was
// sent to, with the query redacted and credentials replaced as the
// conventions ask. Without an authority string it uses peer (IPv6
// bracketed); it is empty when there is neither.
func (t target) full(authority string, peer netip.AddrPort, b *Builder) string {
	var portBuf [5]byte
	var port []byte
	if authority == "" {
		if !peer.IsValid() {
			return ""
		}
		authority = b.addrString(peer.Addr())
		port = strconv.AppendUint(portBuf[:0], uint64(peer.Port()), 10)
	}
	bracket := port != nil && peer.Addr().Is6()
	var sb strings.Builder
	n := len(t.scheme) + 3 + len(authority) + 3 + len(port) + len(t.path) + 1 + len(t.query)
	if t.userinfo {
		n += len("REDACTED:REDACTED@")
	}
	sb.Grow(n)
	sb.WriteString(t.scheme)
	sb.WriteString("://")
	if t.userinfo {
		sb.WriteString("REDACTED:REDACTED@")
	}
	if bracket {
		sb.WriteByte('[')
	}
	sb.WriteString(authority)
	if bracket {
		sb.WriteByte(']')
	}
	if port != nil {
		sb.WriteByte(':')
		sb.Write(port)
	}
	if t.origin {
		sb.WriteString(t.path)
		if t.query != "" {
			sb.WriteByte('?')
			sb.WriteString(redactQuery(t.query))
		}
	}
	return sb.String()
}

func cutPrefixFold(s, prefix string) (string, bool) {
	if len(s) >= len(prefix) && strings.EqualFold(s[:len(prefix)], prefix) {
		return s[len(prefix):], true
	}
	return s, false
}

// sensitiveQueryKey reports whether k is a query parameter whose value the URL
// conventions say SHOULD be replaced by "REDACTED" by default.
func sensitiveQueryKey(k string) bool {
	switch k {
	case "AWSAccessKeyId", "Signature", "sig", "X-Goog-Signature":
		return true
	}
	return false
}

// redactQuery replaces the values of sensitive query parameters with
// "REDACTED". It returns q itself, without allocating, when there is
// nothing to redact.
func redactQuery(q string) string {
	if !hasSensitiveKey(q) {
		return q
	}
	var sb strings.Builder
	sb.Grow(len(q) + 8)
	for i, part := range strings.Split(q, "&") {
		if i > 0 {
			sb.WriteByte('&')
		}
		if k, _, ok := strings.Cut(part, "="); ok && sensitiveQueryKey(k) {
			sb.WriteString(k)
			sb.WriteString("=REDACTED")
			continue
		}
		sb.WriteString(part)
	}
	return sb.String()
}

func hasSensitiveKey(q string) bool {
	for q != "" {
		var part string
		part, q, _ = strings.Cut(q, "&")
		if k, _, ok := strings.Cut(part, "="); ok && sensitiveQueryKey(k) {
			return true
		}
	}
	return false
}
