package ebpfreceiver // import "github.com/ebpftracing/ebpftracingreceiver/receiver"

import (
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/ebpftracing/ebpftracingreceiver/internal/routes"
)

// Values of EBPFConfig.TrafficControlBackend.
const (
	// TCBackendAuto picks tcx where the kernel supports it (6.6+), tc otherwise.
	TCBackendAuto = "auto"
	// TCBackendTC attaches with a clsact qdisc and cls_bpf filters.
	TCBackendTC = "tc"
	// TCBackendTCX attaches with tcx links (kernel 6.6+).
	TCBackendTCX = "tcx"
)

// Values of EBPFConfig.PacketCarrier: where the trace context of a TLS
// request travels with context_propagation tcp or all.
const (
	// CarrierTCPOption writes and parses a TCP header option from sockops.
	CarrierTCPOption = "tcp_option"
	// CarrierIPOption writes and parses an IPv4 option from TC programs.
	CarrierIPOption = "ip_option"
)

// Values of EBPFConfig.IOHook.
const (
	// IOHookAuto uses the socket tracepoints where the kernel has them,
	// sys_exit otherwise.
	IOHookAuto = "auto"
	// IOHookSocket uses the socket tracepoints sock_recv_length and
	// sock_send_length, which run only for socket I/O.
	IOHookSocket = "socket"
	// IOHookSysExit uses the sys_exit tracepoint, which every system call
	// of the host runs.
	IOHookSysExit = "sys_exit"
)

// Values of EBPFConfig.GoLibraryWrites.
const (
	// GoLibraryWritesAuto checks at Start whether BPF programs may write
	// user memory (CAP_SYS_ADMIN, no kernel lockdown, the verifier accepts
	// bpf_probe_write_user) and writes headers at the Go library level
	// only then.
	GoLibraryWritesAuto = "auto"
	// GoLibraryWritesOff never writes at the Go library level.
	GoLibraryWritesOff = "off"
)

// Values of EBPFConfig.ContextPropagation; several may be joined with commas.
const (
	PropagationDisabled = "disabled"
	PropagationAll      = "all"
	PropagationHeaders  = "headers"
	PropagationTCP      = "tcp"
)

// Values of SamplerConfig.Name: the OpenTelemetry SDK samplers, spelled as
// OTEL_TRACES_SAMPLER spells them.
const (
	SamplerAlwaysOn                = "always_on"
	SamplerAlwaysOff               = "always_off"
	SamplerTraceIDRatio            = "traceidratio"
	SamplerParentBasedAlwaysOn     = "parentbased_always_on"
	SamplerParentBasedAlwaysOff    = "parentbased_always_off"
	SamplerParentBasedTraceIDRatio = "parentbased_traceidratio"
	// defaultSampler is used when neither sampler.name nor
	// OTEL_TRACES_SAMPLER is set, as in the OpenTelemetry SDKs.
	defaultSampler = SamplerParentBasedAlwaysOn
)

// The standard SDK environment variables of the sampler.
const (
	envTracesSampler    = "OTEL_TRACES_SAMPLER"
	envTracesSamplerArg = "OTEL_TRACES_SAMPLER_ARG"
)

// Defaults and limits.
const (
	defaultPollInterval   = 500 * time.Millisecond
	minPollInterval       = 50 * time.Millisecond
	defaultRingBufferSize = 4 << 20 // 4 MiB
	minRingBufferSize     = 4 << 10 // one page
	maxRingBufferSize     = 1 << 30 // 1 GiB
	defaultWakeupLen      = 512
	defaultBatchTimeout   = 200 * time.Millisecond
	defaultBatchLength    = 1000
)

// Config is the configuration of the ebpf_tracing receiver.
type Config struct {
	// Discovery selects the processes to trace.
	Discovery DiscoveryConfig `mapstructure:"discovery"`
	// EBPF tunes the BPF programs, the ring buffer and span batching.
	EBPF EBPFConfig `mapstructure:"ebpf"`
	// Sampler is the head sampler, decided in the kernel when a request's
	// trace context is made.
	Sampler SamplerConfig `mapstructure:"sampler"`
	// Routes sets http.route of SERVER spans, url.template of CLIENT spans
	// (user patterns only), and their names.
	Routes RoutesConfig `mapstructure:"routes"`

	// prevent unkeyed literal initialization
	_ struct{}
}

// Values of RoutesConfig.Unmatched (Beyla's spelling).
const (
	RoutesHeuristic = string(routes.Heuristic)
	RoutesPath      = string(routes.Path)
	RoutesWildcard  = string(routes.Wildcard)
	RoutesUnset     = string(routes.Unset)
)

// RoutesConfig gives SERVER spans their http.route and the span name
// "METHOD route", as Beyla's routes section does (a subset: patterns,
// unmatched, wildcard_char). CLIENT spans get neither.
type RoutesConfig struct {
	// Patterns are URL path templates; a segment {name} or :name matches
	// any one non-empty path segment, e.g. /users/{id}/orders/:order. The
	// pattern itself becomes http.route. Where several match, a literal
	// segment wins over a parameter at the first place they differ, then
	// the one listed first.
	Patterns []string `mapstructure:"patterns"`
	// Unmatched is what a path that matches no pattern gets: "heuristic"
	// (default: the path with id-like segments, numbers, UUIDs and long hex,
	// replaced by WildcardChar), "path" (the path itself: high
	// cardinality), "wildcard" ("/**") or "unset" (no http.route; the span
	// name is the method).
	Unmatched string `mapstructure:"unmatched"`
	// WildcardChar replaces id-like segments in heuristic mode. Default "*".
	WildcardChar string `mapstructure:"wildcard_char"`
	// IgnoredPatterns are paths whose spans, SERVER and CLIENT, are not
	// exported (health checks, metrics scrapes): written as Patterns, where
	// a segment "*" also matches any one segment and a last segment "**"
	// any number, e.g. /health, /metrics, /debug/**. Dropped spans are
	// counted (spans_ignored).
	IgnoredPatterns []string `mapstructure:"ignored_patterns"`

	// prevent unkeyed literal initialization
	_ struct{}
}

func (c RoutesConfig) options() routes.Options {
	return routes.Options{
		Patterns:     c.Patterns,
		Unmatched:    routes.Unmatched(c.Unmatched),
		WildcardChar: c.WildcardChar,
		Ignored:      c.IgnoredPatterns,
	}
}

// DiscoveryConfig selects the processes to trace.
type DiscoveryConfig struct {
	// Instrument lists the selectors; a process matching ANY selector is
	// traced. At least one selector is required.
	Instrument []Selector `mapstructure:"instrument"`
	// PollInterval is how often the process list is rescanned for new and
	// exited processes. Default 500ms, minimum 50ms.
	PollInterval time.Duration `mapstructure:"poll_interval"`

	// prevent unkeyed literal initialization
	_ struct{}
}

// Selector matches processes. A process matches when it satisfies every
// criterion the selector sets; at least one criterion must be set.
type Selector struct {
	// OpenPorts matches processes listening on one of these ports: a comma
	// list of ports and inclusive ranges, e.g. "80,8080-8089".
	OpenPorts string `mapstructure:"open_ports"`
	// ExePath is a glob matched against the full executable path, in
	// path.Match syntax except that "*" and "?" also match "/"; a pattern
	// without "/" is also matched against the base name. So "*/python3*"
	// matches "/usr/bin/python3.12", and "java" or "*node*" match by name.
	// Matching is done by internal/discovery.
	ExePath string `mapstructure:"exe_path"`
	// PID matches one process id.
	PID int `mapstructure:"pid"`

	// prevent unkeyed literal initialization
	_ struct{}
}

// SamplerConfig selects the head sampler, with the names and arguments of
// the OpenTelemetry SDKs' OTEL_TRACES_SAMPLER and OTEL_TRACES_SAMPLER_ARG.
// The decision is the sampled flag of the trace context: an unsampled
// request still propagates its traceparent (flags 00) and its spans, and
// those of the outgoing requests made under it, are not exported.
//
// When Name is empty, OTEL_TRACES_SAMPLER and OTEL_TRACES_SAMPLER_ARG are
// used if set, else parentbased_always_on. A Name set in the configuration
// WINS over the environment (unlike the BEYLA_* variables): the sampler of
// a collector is a deliberate choice, and OTEL_TRACES_SAMPLER in its
// environment may be meant for an SDK.
type SamplerConfig struct {
	// Name is always_on, always_off, traceidratio, parentbased_always_on
	// (default), parentbased_always_off or parentbased_traceidratio. The
	// parentbased_* samplers keep the decision of a valid incoming
	// traceparent and decide as the named sampler for new traces; the
	// others decide every request themselves, on its trace id.
	Name string `mapstructure:"name"`
	// Arg is the sampling ratio of traceidratio and
	// parentbased_traceidratio, a number from 0 to 1; empty means 1. Not
	// allowed with the other samplers.
	Arg string `mapstructure:"arg"`

	// prevent unkeyed literal initialization
	_ struct{}
}

// Sampler is the parsed form of SamplerConfig.
type Sampler struct {
	// Root decides the requests without a parent: always_on, always_off or
	// traceidratio.
	Root string
	// ParentBased keeps the sampled flag of a valid incoming parent.
	ParentBased bool
	// Ratio is traceidratio's sampling ratio, in [0, 1].
	Ratio float64
}

// String is the sampler in OTEL_TRACES_SAMPLER's spelling, with its ratio.
func (s Sampler) String() string {
	if s.Root == SamplerTraceIDRatio {
		return s.Name() + ":" + strconv.FormatFloat(s.Ratio, 'g', -1, 64)
	}
	return s.Name()
}

// Parsed returns the sampler, parentbased_always_on when Name is empty. The
// error names the YAML path.
func (c SamplerConfig) Parsed() (Sampler, error) {
	if strings.TrimSpace(c.Name) == "" {
		if strings.TrimSpace(c.Arg) != "" {
			return Sampler{}, errors.New("sampler.arg: set without sampler.name")
		}
		return parseSampler(defaultSampler, "", false)
	}
	s, err := parseSampler(c.Name, c.Arg, false)
	if err != nil {
		return Sampler{}, fmt.Errorf("sampler: %w", err)
	}
	return s, nil
}

// parseSampler parses a sampler name (trimmed, case-insensitive) and its
// argument. lenientArg ignores an argument the sampler does not take, as
// the SDKs do for OTEL_TRACES_SAMPLER_ARG; the configuration rejects it.
func parseSampler(name, arg string, lenientArg bool) (Sampler, error) {
	s, err := parseSamplerName(name)
	if err != nil {
		return Sampler{}, err
	}
	if err := s.parseArg(arg, lenientArg); err != nil {
		return Sampler{}, err
	}
	return s, nil
}

func parseSamplerName(name string) (Sampler, error) {
	name = strings.ToLower(strings.TrimSpace(name))
	root, parentBased := strings.CutPrefix(name, "parentbased_")
	switch root {
	case SamplerAlwaysOn, SamplerAlwaysOff, SamplerTraceIDRatio:
		return Sampler{Root: root, ParentBased: parentBased}, nil
	}
	return Sampler{}, fmt.Errorf("unknown sampler %q; want %s, %s, %s, %s, %s or %s", name,
		SamplerAlwaysOn, SamplerAlwaysOff, SamplerTraceIDRatio,
		SamplerParentBasedAlwaysOn, SamplerParentBasedAlwaysOff, SamplerParentBasedTraceIDRatio)
}

// parseArg sets the ratio of a traceidratio sampler from arg, 1 when arg is
// empty.
func (s *Sampler) parseArg(arg string, lenient bool) error {
	arg = strings.TrimSpace(arg)
	if s.Root != SamplerTraceIDRatio {
		if arg != "" && !lenient {
			return fmt.Errorf("arg %q: %s takes no argument", arg, s.Name())
		}
		return nil
	}
	s.Ratio = 1
	if arg == "" {
		return nil
	}
	r, err := strconv.ParseFloat(arg, 64)
	if err != nil || !(r >= 0 && r <= 1) { // also refuses NaN
		return fmt.Errorf("arg %q: %s wants a ratio from 0 to 1, e.g. 0.25", arg, s.Name())
	}
	s.Ratio = r
	return nil
}

// Name is the sampler's name, without its ratio.
func (s Sampler) Name() string {
	if s.ParentBased {
		return "parentbased_" + s.Root
	}
	return s.Root
}

// EBPFConfig tunes the BPF programs, the ring buffer and span batching.
// Fields marked with an environment variable take that variable's value when
// it is set and non-empty, overriding the YAML value (see applyEnv).
type EBPFConfig struct {
	// ContextPropagation selects how the trace context is propagated to
	// outgoing requests: "disabled" (default), "all", "headers" (inject a
	// traceparent HTTP header) or "tcp" (TCP options); a comma list such as
	// "headers,tcp" is accepted. Env: BEYLA_BPF_CONTEXT_PROPAGATION.
	ContextPropagation string `mapstructure:"context_propagation"`
	// OverrideBPFLoopEnabled forces the use of the bpf_loop helper (kernel
	// 5.17+) even where the feature probe says it is unavailable. Default
	// false. Env: BEYLA_OVERRIDE_BPF_LOOP_ENABLED.
	OverrideBPFLoopEnabled bool `mapstructure:"override_bpf_loop_enabled"`
	// TrafficControlBackend selects how the TC programs attach: "auto"
	// (default: tcx where supported, kernel 6.6+, else tc), "tc" or "tcx".
	// Env: BEYLA_BPF_TC_BACKEND.
	TrafficControlBackend string `mapstructure:"traffic_control_backend"`
	// TrafficControlNamespaces are network namespaces, by path
	// (/proc/<pid>/ns/net, /run/netns/<name>), whose interfaces get the
	// ip_option carrier's TC programs besides the collector's own (the
	// host's, for a hostNetwork collector). Default none.
	TrafficControlNamespaces []string `mapstructure:"traffic_control_namespaces"`
	// PacketCarrier selects where the trace context of a TLS request
	// travels when context_propagation includes tcp: "tcp_option"
	// (default: a TCP header option from sockops) or "ip_option" (an IPv4
	// option from TC programs).
	PacketCarrier string `mapstructure:"packet_carrier"`
	// IOHook selects where HTTP/1.x traffic is seen: "auto" (default: the
	// socket tracepoints sock_recv_length and sock_send_length, kernel 6.3+,
	// which only socket I/O runs, else sys_exit), "socket" or "sys_exit"
	// (every system call of the host runs it: measurably slower).
	IOHook string `mapstructure:"io_hook"`
	// GoLibraryWrites selects whether headers may be written at the Go
	// library level (net/http, HTTP/2, gRPC metadata) with
	// bpf_probe_write_user: "auto" (default: where CAP_SYS_ADMIN is held,
	// the kernel is not locked down and the verifier accepts the helper,
	// checked at Start) or "off". Where it is off, Go HTTP/1 requests get
	// their traceparent at the network level (sockops/sk_msg) when
	// context_propagation includes headers. Start never fails because of
	// it: the reason it is off is logged once.
	GoLibraryWrites string `mapstructure:"go_library_writes"`
	// RingBufferSize is the size of the event ring buffer in bytes: a power
	// of two from 4096 to 1 GiB. Default 4194304 (4 MiB).
	RingBufferSize int `mapstructure:"ring_buffer_size"`
	// WakeupLen is the number of records pending in the ring buffer before
	// the kernel wakes the reader (at most a quarter of the ring's bytes).
	// Default 512 (64 costs 1–2 µs more per request in the kernel and about
	// 1.5 µs more collector CPU per span: every record submitted while more
	// than WakeupLen are pending forces a wakeup); 0 wakes the reader on
	// every record, which costs a wakeup per event. Without a wakeup the
	// reader polls every BatchTimeout. Env: BEYLA_BPF_WAKEUP_LEN.
	WakeupLen int `mapstructure:"wakeup_len"`
	// BatchTimeout is the longest a record waits in the ring buffer, and a
	// span in the batch, before being sent on. Default 200ms.
	// Env: BEYLA_BPF_BATCH_TIMEOUT.
	BatchTimeout time.Duration `mapstructure:"batch_timeout"`
	// BatchLength is the largest number of spans in one ConsumeTraces call.
	// Default 1000. Env: BEYLA_BPF_BATCH_LENGTH.
	BatchLength int `mapstructure:"batch_length"`
	// TrackRequestHeaders parses the traceparent header of incoming requests
	// so server spans join the caller's trace. Default true.
	// Env: BEYLA_BPF_TRACK_REQUEST_HEADERS.
	TrackRequestHeaders bool `mapstructure:"track_request_headers"`

	// prevent unkeyed literal initialization
	_ struct{}
}

func createDefaultConfig() *Config {
	return &Config{
		Discovery: DiscoveryConfig{
			PollInterval: defaultPollInterval,
		},
		EBPF: EBPFConfig{
			ContextPropagation:    PropagationDisabled,
			TrafficControlBackend: TCBackendAuto,
			PacketCarrier:         CarrierTCPOption,
			IOHook:                IOHookAuto,
			GoLibraryWrites:       GoLibraryWritesAuto,
			RingBufferSize:        defaultRingBufferSize,
			WakeupLen:             defaultWakeupLen,
			BatchTimeout:          defaultBatchTimeout,
			BatchLength:           defaultBatchLength,
			TrackRequestHeaders:   true,
		},
		Routes: RoutesConfig{Unmatched: RoutesHeuristic, WildcardChar: "*"},
	}
}

// Validate checks the whole configuration and returns every problem found,
// joined with errors.Join; each message starts with the YAML path.
func (cfg *Config) Validate() error {
	var errs []error
	add := func(path string, err error) {
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", path, err))
		}
	}

	if len(cfg.Discovery.Instrument) == 0 {
		errs = append(errs, errors.New("discovery.instrument: at least one selector is needed (open_ports, exe_path or pid)"))
	}
	for i, s := range cfg.Discovery.Instrument {
		p := fmt.Sprintf("discovery.instrument[%d]", i)
		if s.OpenPorts == "" && s.ExePath == "" && s.PID == 0 {
			errs = append(errs, fmt.Errorf("%s: set at least one of open_ports, exe_path or pid", p))
			continue
		}
		if s.OpenPorts != "" {
			_, err := s.PortRanges()
			add(p+".open_ports", err)
		}
		if s.ExePath != "" {
			if _, err := path.Match(s.ExePath, ""); err != nil {
				add(p+".exe_path", fmt.Errorf("invalid glob %q: %w", s.ExePath, err))
			}
		}
		if s.PID < 0 {
			add(p+".pid", fmt.Errorf("must not be negative, got %d", s.PID))
		}
	}
	if cfg.Discovery.PollInterval < minPollInterval {
		add("discovery.poll_interval", fmt.Errorf("must be at least %v, got %v", minPollInterval, cfg.Discovery.PollInterval))
	}

	e := cfg.EBPF
	add("ebpf.context_propagation", checkPropagation(e.ContextPropagation))
	add("ebpf.traffic_control_backend", checkTCBackend(e.TrafficControlBackend))
	for i, ns := range e.TrafficControlNamespaces {
		if !filepath.IsAbs(ns) {
			add(fmt.Sprintf("ebpf.traffic_control_namespaces[%d]", i), fmt.Errorf("%q is not an absolute path", ns))
		}
	}
	add("ebpf.packet_carrier", checkCarrier(e.PacketCarrier))
	add("ebpf.io_hook", checkIOHook(e.IOHook))
	add("ebpf.go_library_writes", checkGoLibraryWrites(e.GoLibraryWrites))
	add("ebpf.ring_buffer_size", checkRingBufferSize(e.RingBufferSize))
	add("ebpf.wakeup_len", checkWakeupLen(e.WakeupLen))
	add("ebpf.batch_timeout", checkBatchTimeout(e.BatchTimeout))
	add("ebpf.batch_length", checkBatchLength(e.BatchLength))
	if _, err := cfg.Sampler.Parsed(); err != nil {
		errs = append(errs, err)
	}
	if err := routes.Check(cfg.Routes.options()); err != nil {
		for _, e := range unjoin(err) {
			errs = append(errs, fmt.Errorf("routes.%w", e))
		}
	}
	return errors.Join(errs...)
}

// unjoin returns the errors an errors.Join made, or err alone.
func unjoin(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	return []error{err}
}

// The check* helpers return a message without the path so Validate can
// prefix the YAML path and applyEnv the variable name.

func checkPropagation(s string) error {
	_, err := parsePropagation(s)
	return err
}

func checkIOHook(s string) error {
	switch s {
	case IOHookAuto, IOHookSocket, IOHookSysExit:
		return nil
	}
	return fmt.Errorf("unknown value %q; want %s, %s or %s", s, IOHookAuto, IOHookSocket, IOHookSysExit)
}

func checkGoLibraryWrites(s string) error {
	switch s {
	case GoLibraryWritesAuto, GoLibraryWritesOff:
		return nil
	}
	return fmt.Errorf("unknown value %q; want %s or %s", s, GoLibraryWritesAuto, GoLibraryWritesOff)
}

func checkTCBackend(s string) error {
	switch s {
	case TCBackendAuto, TCBackendTC, TCBackendTCX:
		return nil
	}
	return fmt.Errorf("unknown value %q; want auto, tc or tcx", s)
}

func checkCarrier(s string) error {
	switch s {
	case CarrierTCPOption, CarrierIPOption:
		return nil
	}
	return fmt.Errorf("unknown value %q; want %s or %s", s, CarrierTCPOption, CarrierIPOption)
}

func checkRingBufferSize(n int) error {
	if n < minRingBufferSize || n > maxRingBufferSize || n&(n-1) != 0 {
		return fmt.Errorf("must be a power of two from %d to %d bytes, got %d", minRingBufferSize, maxRingBufferSize, n)
	}
	return nil
}

func checkWakeupLen(n int) error {
	if n < 0 {
		return fmt.Errorf("must not be negative, got %d", n)
	}
	return nil
}

func checkBatchTimeout(d time.Duration) error {
	if d <= 0 {
		return fmt.Errorf("must be positive, got %v", d)
	}
	return nil
}

func checkBatchLength(n int) error {
	if n < 1 {
		return fmt.Errorf("must be at least 1, got %d", n)
	}
	return nil
}

// Propagation is the parsed form of EBPFConfig.ContextPropagation.
type Propagation struct {
	// Headers injects a traceparent header into outgoing HTTP requests.
	Headers bool
	// TCP carries the trace context in TCP options.
	TCP bool
}

// Propagation parses ContextPropagation. The error names the YAML path.
func (c EBPFConfig) Propagation() (Propagation, error) {
	p, err := parsePropagation(c.ContextPropagation)
	if err != nil {
		return Propagation{}, fmt.Errorf("ebpf.context_propagation: %w", err)
	}
	return p, nil
}

// parsePropagation parses a comma list of all, headers, tcp or disabled;
// the empty string means disabled. Tokens are trimmed and case-insensitive.
func parsePropagation(s string) (Propagation, error) {
	var p Propagation
	if strings.TrimSpace(s) == "" {
		return p, nil
	}
	tokens := strings.Split(s, ",")
	for _, tok := range tokens {
		switch strings.ToLower(strings.TrimSpace(tok)) {
		case PropagationAll:
			p.Headers, p.TCP = true, true
		case PropagationHeaders:
			p.Headers = true
		case PropagationTCP:
			p.TCP = true
		case PropagationDisabled:
			if len(tokens) > 1 {
				return Propagation{}, fmt.Errorf("%q cannot be combined with other values in %q", PropagationDisabled, s)
			}
		default:
			return Propagation{}, fmt.Errorf("unknown value %q; want all, headers, tcp or disabled", strings.TrimSpace(tok))
		}
	}
	return p, nil
}

// PortRange is an inclusive range of TCP ports; Lo == Hi for a single port.
type PortRange struct {
	Lo, Hi uint16
}

// Contains reports whether port is in the range.
func (r PortRange) Contains(port uint16) bool {
	return r.Lo <= port && port <= r.Hi
}

// PortRanges parses OpenPorts ("80,8080-8089") in the order given; an empty
// OpenPorts gives no ranges. The error does not name the YAML path, which
// the caller knows (Validate prefixes discovery.instrument[i].open_ports).
func (s Selector) PortRanges() ([]PortRange, error) {
	if strings.TrimSpace(s.OpenPorts) == "" {
		return nil, nil
	}
	var out []PortRange
	for item := range strings.SplitSeq(s.OpenPorts, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			return nil, fmt.Errorf("empty entry in %q", s.OpenPorts)
		}
		loStr, hiStr, isRange := strings.Cut(item, "-")
		lo, err := parsePort(loStr)
		if err != nil {
			return nil, err
		}
		hi := lo
		if isRange {
			if hi, err = parsePort(hiStr); err != nil {
				return nil, err
			}
			if lo > hi {
				return nil, fmt.Errorf("range %q starts after it ends", item)
			}
		}
		out = append(out, PortRange{Lo: lo, Hi: hi})
	}
	return out, nil
}

func parsePort(s string) (uint16, error) {
	s = strings.TrimSpace(s)
	n, err := strconv.ParseUint(s, 10, 16)
	if err != nil || n == 0 {
		return 0, fmt.Errorf("invalid port %q; want a number from 1 to 65535", s)
	}
	return uint16(n), nil
}

// envVar is one BEYLA_* variable read by applyEnv.
type envVar struct {
	name  string
	apply func(e *EBPFConfig, v string) error
}

// beylaEnvVars lists the Beyla environment variables applyEnv reads, in the
// order they are applied and reported.
func beylaEnvVars() []envVar {
	return []envVar{
		{"BEYLA_BPF_CONTEXT_PROPAGATION", func(e *EBPFConfig, v string) error {
			if err := checkPropagation(v); err != nil {
				return err
			}
			e.ContextPropagation = v
			return nil
		}},
		{"BEYLA_OVERRIDE_BPF_LOOP_ENABLED", func(e *EBPFConfig, v string) error {
			return parseEnvBool(v, &e.OverrideBPFLoopEnabled)
		}},
		{"BEYLA_BPF_TC_BACKEND", func(e *EBPFConfig, v string) error {
			if err := checkTCBackend(v); err != nil {
				return err
			}
			e.TrafficControlBackend = v
			return nil
		}},
		{"BEYLA_BPF_WAKEUP_LEN", func(e *EBPFConfig, v string) error {
			return parseEnvInt(v, checkWakeupLen, &e.WakeupLen)
		}},
		{"BEYLA_BPF_BATCH_TIMEOUT", func(e *EBPFConfig, v string) error {
			d, err := time.ParseDuration(v)
			if err != nil {
				return fmt.Errorf("invalid duration %q; want e.g. 200ms", v)
			}
			if err := checkBatchTimeout(d); err != nil {
				return err
			}
			e.BatchTimeout = d
			return nil
		}},
		{"BEYLA_BPF_BATCH_LENGTH", func(e *EBPFConfig, v string) error {
			return parseEnvInt(v, checkBatchLength, &e.BatchLength)
		}},
		{"BEYLA_BPF_TRACK_REQUEST_HEADERS", func(e *EBPFConfig, v string) error {
			return parseEnvBool(v, &e.TrackRequestHeaders)
		}},
	}
}

func parseEnvBool(v string, dst *bool) error {
	b, err := strconv.ParseBool(v)
	if err != nil {
		return fmt.Errorf("invalid boolean %q; want true or false", v)
	}
	*dst = b
	return nil
}

func parseEnvInt(v string, check func(int) error, dst *int) error {
	n, err := strconv.Atoi(v)
	if err != nil {
		return fmt.Errorf("invalid integer %q", v)
	}
	if err := check(n); err != nil {
		return err
	}
	*dst = n
	return nil
}

// applyEnv is the one place that reads environment variables. It applies
// the Beyla variables that users of Beyla already set:
//
//	BEYLA_BPF_CONTEXT_PROPAGATION    ebpf.context_propagation
//	BEYLA_OVERRIDE_BPF_LOOP_ENABLED  ebpf.override_bpf_loop_enabled
//	BEYLA_BPF_TC_BACKEND             ebpf.traffic_control_backend
//	BEYLA_BPF_WAKEUP_LEN             ebpf.wakeup_len
//	BEYLA_BPF_BATCH_TIMEOUT          ebpf.batch_timeout
//	BEYLA_BPF_BATCH_LENGTH           ebpf.batch_length
//	BEYLA_BPF_TRACK_REQUEST_HEADERS  ebpf.track_request_headers
//	OTEL_TRACES_SAMPLER              sampler.name (only when unset)
//	OTEL_TRACES_SAMPLER_ARG          sampler.arg (only with the above)
//
// The two OTEL_* variables follow the SDK rule instead, and the
// configuration wins over them (see SamplerConfig and applySamplerEnv).
//
// A variable that is set and non-empty WINS over the YAML value, as it does
// in Beyla, so a deployment can tune a shared collector config per host; an
// empty variable counts as unset. lookup is os.LookupEnv outside tests.
//
// overrides lists, in the order above, the names of the variables applied;
// the receiver logs them once at Start. A value that does not parse or is
// out of range leaves its field unchanged and adds an error that names the
// variable; all such errors are joined.
func applyEnv(cfg *Config, lookup func(string) (string, bool)) (overrides []string, err error) {
	var errs []error
	for _, ev := range beylaEnvVars() {
		v, ok := lookup(ev.name)
		v = strings.TrimSpace(v)
		if !ok || v == "" {
			continue
		}
		if err := ev.apply(&cfg.EBPF, v); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", ev.name, err))
			continue
		}
		overrides = append(overrides, ev.name)
	}
	used, err := applySamplerEnv(&cfg.Sampler, lookup)
	if err != nil {
		errs = append(errs, err)
	}
	return append(overrides, used...), errors.Join(errs...)
}

// applySamplerEnv fills an unset sampler (empty sampler.name) from
// OTEL_TRACES_SAMPLER and OTEL_TRACES_SAMPLER_ARG, as the SDKs read them:
// the argument counts only with the name, and is ignored by samplers that
// take none. A sampler set in the configuration wins: the variables are not
// read. It returns the variables used; a bad value leaves the sampler unset
// and returns an error that names the variable.
func applySamplerEnv(sc *SamplerConfig, lookup func(string) (string, bool)) ([]string, error) {
	if strings.TrimSpace(sc.Name) != "" {
		return nil, nil
	}
	name, _ := lookup(envTracesSampler)
	if name = strings.TrimSpace(name); name == "" {
		return nil, nil
	}
	s, err := parseSamplerName(name)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", envTracesSampler, err)
	}
	arg, _ := lookup(envTracesSamplerArg)
	arg = strings.TrimSpace(arg)
	if err := s.parseArg(arg, true); err != nil {
		return nil, fmt.Errorf("%s: %w", envTracesSamplerArg, err)
	}
	used := []string{envTracesSampler}
	sc.Name = name
	sc.Arg = ""
	if s.Root == SamplerTraceIDRatio && arg != "" {
		sc.Arg = arg
		used = append(used, envTracesSamplerArg)
	}
	return used, nil
}

// benchFloorEnv, set to 1, loads every BPF program in a form that returns as
// soon as it runs, so that make bench can measure the cost of the hooks
// themselves (the floor under the tracer's own work). Nothing is traced. Not
// a user setting: the one environment variable outside applyEnv.
const benchFloorEnv = "EBPFTRACING_BENCH_FLOOR"

func benchFloor() bool {
	v, _ := os.LookupEnv(benchFloorEnv)
	return strings.TrimSpace(v) == "1"
}
