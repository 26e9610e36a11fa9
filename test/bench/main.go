//go:build linux

// Command bench measures what the ebpf_tracing receiver costs Go net/http
// services, by running wrk against them without and with the collector
// distribution (_build/otelcol-ebpf) instrumenting them. Run it as root from
// the repository root, after `make distro`:
//
//	make bench                          # or: go run ./test/bench
//	go run ./test/bench -wakeup-len 0   # compare the ring buffer wakeup policy
//	go run ./test/bench -workload proxy # only the proxy workload
//
// Two workloads, chosen with -workload (default all: server, then proxy):
//
//   - server: wrk → test/bench/server (`GET /hello`). The collector
//     instruments the server's port with the receiver's default ebpf
//     settings (plus -ebpf, -wakeup-len); one SERVER span per request.
//   - proxy: wrk → test/bench/proxy → test/bench/server -stats. The proxy's
//     `GET /hello` makes one outgoing `GET /hello` to the backend, on a new
//     connection each time (DisableKeepAlives: header injection applies only
//     to connections opened after the collector started, and no connection
//     survives a collector restart). The collector instruments both ports
//     with ebpf.context_propagation: all (unless -ebpf sets
//     context_propagation); three spans per request (proxy SERVER, proxy
//     CLIENT, backend SERVER). The backend counts the requests that arrived
//     with a traceparent header; its GET /stats is read before each run and
//     after it (for a WITH run: before the collector starts and after it
//     exited, so /stats calls are never traced), and the report shows the
//     share of backend requests that carried the header. For Go that share
//     depends on goroutine tracking: net/http's client writes the request
//     from the transport's own goroutine, often on another thread than the
//     one that read the incoming request. It is reported, not judged.
//
// Each workload builds and starts its processes on 127.0.0.1:<free port>,
// warms them up, then alternates its rounds of wrk runs, WITHOUT then WITH
// the collector (A B A B A B), each `wrk -t<threads> -c<connections>
// -d<duration> --latency http://127.0.0.1:<port>/hello` (-duration, -rounds
// for server; -proxy-duration, -proxy-rounds for proxy).
//
// For each WITH run a fresh collector is started with discovery.instrument
// selecting the workload's ports, the batch processor and an otlp_http
// exporter (gzip, the exporter's default queue and retry) pointed at a sink
// inside this process, and with its internal metrics on a Prometheus pull
// reader on 127.0.0.1. wrk starts only after the collector logged
// "Everything is ready", its "ebpf_tracing started" line counted every
// process of the workload, and -settle more. After wrk ends and -flush-wait
// more, the run reads the collector's CPU time (utime+stime from
// /proc/<pid>/stat, sampled just before wrk starts and after the flush wait)
// and VmHWM, scrapes the metrics, counts the spans the sink received, and
// stops the collector with SIGTERM, waiting for it to exit so its BPF
// programs are detached before the next WITHOUT run.
//
// The sink only keeps the request bodies while wrk runs and decodes them
// (gunzip, then ptrace.ProtoUnmarshaler: an ExportTraceServiceRequest has
// the wire form of TracesData) after the flush wait, so decoding does not
// take CPU from the server during the measurement on a small machine.
// ptraceotlp would decode the same bytes but needs golang.org/x/net and
// golang.org/x/text in go.mod, which this module does not require.
//
// Output, on stdout, is two markdown tables per workload: one row per run,
// and a summary with the targets (server: throughput ratio ≥ 0.95, p99
// ratio ≤ 1.10, spans per request 1.00 ± 0.01; proxy: throughput ratio ≥
// 0.90, p99 ratio ≤ 1.15, spans per request 3.00 ± 0.03; both: collector
// peak RSS ≤ 120 MiB, 0 lost events). Ratios compare medians over the
// rounds. Progress goes to stderr. Missing a target exits 0, since this is
// a measurement; a broken setup (not root, wrk or the distro missing, a
// process that fails to start or dies, a WITH run with no span at all)
// exits 1, and an interrupt 130, after every process started here has been
// stopped: the collector by SIGTERM and a wait, the others by SIGKILL of
// their process group.
package main

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"go.opentelemetry.io/collector/pdata/ptrace"
)

// Targets, from the project's goals. The throughput, p99 and spans per
// request targets are per workload (see workloadsFor).
const (
	targetPeakRSSMiB     = 120
	targetSpansPerReqTol = 0.01 // relative to the expected spans per request
)

// userHZ is the unit of utime and stime in /proc/<pid>/stat: USER_HZ, which
// Linux fixes at 100 for user space on every architecture.
const userHZ = 100

type options struct {
	compression   string
	workload      string
	rounds        int
	duration      time.Duration
	proxyRounds   int
	proxyDuration time.Duration
	connections   int
	threads       int
	warmup        time.Duration
	settle        time.Duration
	flushWait     time.Duration
	wakeupLen     int
	ebpf          kvList
	collector     string
}

// kvList is a repeatable key=value flag.
type kvList []string

func (l *kvList) String() string { return strings.Join(*l, ",") }

func (l *kvList) Set(s string) error {
	k, v, ok := strings.Cut(s, "=")
	if !ok || k == "" || v == "" || strings.ContainsAny(k, ": \n") || strings.Contains(v, "\n") {
		return fmt.Errorf("want key=value, got %q", s)
	}
	*l = append(*l, k+"="+v)
	return nil
}

func main() {
	var o options
	flag.StringVar(&o.workload, "workload", "all", "server, proxy, or all (server then proxy)")
	flag.StringVar(&o.compression, "compression", "gzip", "otlp_http exporter compression: gzip (the exporter's default) or none")
	flag.IntVar(&o.rounds, "rounds", 3, "WITHOUT/WITH pairs of wrk runs of the server workload")
	flag.DurationVar(&o.duration, "duration", 10*time.Second, "length of each wrk run of the server workload (wrk -d)")
	flag.IntVar(&o.proxyRounds, "proxy-rounds", 3, "WITHOUT/WITH pairs of wrk runs of the proxy workload")
	flag.DurationVar(&o.proxyDuration, "proxy-duration", 6*time.Second, "length of each wrk run of the proxy workload (wrk -d)")
	flag.IntVar(&o.connections, "connections", 32, "wrk connections (wrk -c)")
	flag.IntVar(&o.threads, "threads", 2, "wrk threads (wrk -t)")
	flag.DurationVar(&o.warmup, "warmup", 3*time.Second, "unrecorded wrk run before the first round (0: none)")
	flag.DurationVar(&o.settle, "settle", time.Second, "wait between the collector being ready and wrk starting")
	flag.DurationVar(&o.flushWait, "flush-wait", 2*time.Second, "wait after wrk ends before counting spans")
	flag.IntVar(&o.wakeupLen, "wakeup-len", -1, "ebpf.wakeup_len for the collector (-1: leave the receiver's default, 64)")
	flag.Var(&o.ebpf, "ebpf", "extra ebpf.<key>=<value> for the receiver config, value written verbatim (repeatable)")
	flag.StringVar(&o.collector, "collector", "", "collector binary (default <repo>/_build/otelcol-ebpf)")
	flag.Parse()
	if flag.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "bench: unexpected arguments %q\n", flag.Args())
		os.Exit(2)
	}
	if o.workload != "all" && o.workload != "server" && o.workload != "proxy" {
		fmt.Fprintf(os.Stderr, "bench: -workload %q: want server, proxy or all\n", o.workload)
		os.Exit(2)
	}
	if o.rounds < 1 || o.duration < time.Second || o.duration > 10*time.Minute ||
		o.proxyRounds < 1 || o.proxyDuration < time.Second || o.proxyDuration > 10*time.Minute ||
		o.connections < 1 || o.threads < 1 || o.connections < o.threads ||
		o.warmup < 0 || o.warmup > time.Minute || o.settle < 0 || o.settle > time.Minute ||
		o.flushWait < 0 || o.flushWait > time.Minute || o.wakeupLen < -1 {
		fmt.Fprintln(os.Stderr, "bench: flag out of range (rounds, proxy-rounds ≥ 1, 1s ≤ duration, proxy-duration ≤ 10m, connections ≥ threads ≥ 1, waits ≤ 1m, wakeup-len ≥ -1)")
		os.Exit(2)
	}
	if o.wakeupLen >= 0 {
		o.ebpf = append(o.ebpf, "wakeup_len="+strconv.Itoa(o.wakeupLen))
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	go func() {
		// A second Ctrl-C kills the bench at once; the children die with it
		// (Pdeathsig) and the collector's BPF links close with its fds.
		<-ctx.Done()
		stop()
	}()
	err := run(ctx, o)
	switch {
	case err == nil:
	case ctx.Err() != nil:
		fmt.Fprintln(os.Stderr, "bench: interrupted:", err)
		os.Exit(130)
	default:
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// workload is one client → service(s) setup the bench measures.
type workload struct {
	name       string        // -workload value
	title      string        // report heading
	appLabel   string        // whose CPU the app CPU column counts
	rounds     int           // WITHOUT/WITH pairs
	duration   time.Duration // wrk -d
	ebpf       []string      // ebpf.<key>=<value> of the receiver config
	targetTput float64       // throughput ratio WITH/WITHOUT, at least
	targetP99  float64       // p99 ratio WITH/WITHOUT, at most
	wantSpans  float64       // spans exported per request
	wantProcs  int           // processes the collector must select

	// Set by start.
	url   string  // what wrk requests
	ports []int   // instrumented ports (discovery.instrument open_ports)
	apps  []*proc // the workload's processes, the one wrk talks to first
	stats string  // the backend's /stats URL; "" when there is none
}

// workloadsFor lists the workloads -workload selects, in run order.
func workloadsFor(o options) []*workload {
	var out []*workload
	if o.workload == "all" || o.workload == "server" {
		out = append(out, &workload{
			name: "server", title: "Go net/http `GET /hello`", appLabel: "server",
			rounds: o.rounds, duration: o.duration, ebpf: o.ebpf,
			targetTput: 0.95, targetP99: 1.10, wantSpans: 1, wantProcs: 1,
		})
	}
	if o.workload == "all" || o.workload == "proxy" {
		ebpf := o.ebpf
		if !slices.ContainsFunc(ebpf, func(kv string) bool { return strings.HasPrefix(kv, "context_propagation=") }) {
			ebpf = append(slices.Clone(ebpf), "context_propagation=all")
		}
		out = append(out, &workload{
			name: "proxy", title: "wrk → Go net/http proxy → Go net/http backend, `GET /hello`, header injection", appLabel: "proxy+backend",
			rounds: o.proxyRounds, duration: o.proxyDuration, ebpf: ebpf,
			targetTput: 0.90, targetP99: 1.15, wantSpans: 3, wantProcs: 2,
		})
	}
	return out
}

// start builds nothing (bins are built by run) and starts the workload's
// processes on the given free ports.
func (wl *workload) start(ctx context.Context, bins map[string]string, ports []int) error {
	startApp := func(name, bin string, args ...string) error {
		p, err := startProc(ctx, name, 0, bin, args...)
		if err != nil {
			return err
		}
		wl.apps = append(wl.apps, p)
		return p.waitOutput(ctx, "ready\n", 10*time.Second)
	}
	switch wl.name {
	case "server":
		port := ports[0]
		wl.ports = []int{port}
		wl.url = fmt.Sprintf("http://127.0.0.1:%d/hello", port)
		return startApp("server", bins["server"], strconv.Itoa(port))
	case "proxy":
		proxyPort, backendPort := ports[0], ports[1]
		wl.ports = []int{proxyPort, backendPort}
		wl.url = fmt.Sprintf("http://127.0.0.1:%d/hello", proxyPort)
		wl.stats = fmt.Sprintf("http://127.0.0.1:%d/stats", backendPort)
		if err := startApp("proxy", bins["proxy"], "-new-conn", strconv.Itoa(proxyPort), strconv.Itoa(backendPort)); err != nil {
			return err
		}
		return startApp("backend", bins["server"], "-stats", strconv.Itoa(backendPort))
	}
	return fmt.Errorf("unknown workload %q", wl.name)
}

func (wl *workload) stop() {
	for _, p := range wl.apps {
		p.kill()
	}
}

func (wl *workload) alive() error {
	for _, p := range wl.apps {
		if err := p.alive(); err != nil {
			return err
		}
	}
	return nil
}

func (wl *workload) pids() []int {
	out := make([]int, len(wl.apps))
	for i, p := range wl.apps {
		out[i] = p.pid()
	}
	return out
}

func (wl *workload) desc() string {
	parts := make([]string, len(wl.apps))
	for i, p := range wl.apps {
		parts[i] = fmt.Sprintf("%s pid %d port %d", p.name, p.pid(), wl.ports[i])
	}
	return strings.Join(parts, ", ")
}

// runResult is one wrk run.
type runResult struct {
	round int
	with  bool
	wrk   wrkResult

	appCPU     time.Duration // utime+stime of the workload's processes during wrk
	otherCPU   float64       // share of the machine busy outside the workload, wrk, collector and bench during wrk
	others     []int         // otelcol-ebpf processes not started here, seen just before or after wrk
	coll       collectorSample
	spans      int // spans at the sink after the flush wait
	lateSpans  int // more spans that arrived by the time the collector exited
	sinkErrors int

	hasStats bool         // the workload's backend counts requests
	backend  backendStats // its counters' increase over the run
}

// collectorSample is what a WITH run measured of the collector.
type collectorSample struct {
	cpu       time.Duration // utime+stime from just before wrk to after the flush wait
	hwm       int64         // VmHWM in bytes, just before SIGTERM
	lost      float64       // ebpf_tracing_events_lost
	read      float64       // ebpf_tracing_events_read
	emitted   float64       // ebpf_tracing_spans_emitted
	injected  float64       // ebpf_tracing_headers_injected
	sent      float64       // exporter sent spans
	failed    float64       // exporter send_failed + enqueue_failed spans
	exitCode  int
	startedIn time.Duration // exec to ready
}

// backendStats is the proxy workload backend's GET /stats.
type backendStats struct {
	Requests        int64 `json:"requests"`
	WithTraceparent int64 `json:"with_traceparent"`
}

// statsClient opens a new connection per call, so no connection of the
// bench to the backend stays open across collectors.
var statsClient = &http.Client{Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}, Timeout: 5 * time.Second}

func getStats(ctx context.Context, url string) (backendStats, error) {
	var st backendStats
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return st, err
	}
	resp, err := statsClient.Do(req)
	if err != nil {
		return st, fmt.Errorf("backend stats: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return st, fmt.Errorf("backend stats: %s", resp.Status)
	}
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return st, fmt.Errorf("backend stats: %w", err)
	}
	return st, nil
}

// env is what every workload shares.
type env struct {
	tmp         string
	bins        map[string]string // name → built binary
	wrkPath     string
	sink        *sink
	metricsPort int
	keepTmp     *bool
}

func run(ctx context.Context, o options) (err error) {
	if os.Geteuid() != 0 {
		return errors.New("needs root (the collector loads eBPF programs): run `sudo make bench`")
	}
	wrkPath, err := exec.LookPath("wrk")
	if err != nil {
		return errors.New("wrk not found on PATH: `make bench` installs it (apt-get install wrk)")
	}
	root, err := repoRoot()
	if err != nil {
		return err
	}
	if o.collector == "" {
		o.collector = filepath.Join(root, "_build", "otelcol-ebpf")
	}
	if _, err := os.Stat(o.collector); err != nil {
		return fmt.Errorf("collector distro: %w: run `make distro` first", err)
	}
	tmp, err := os.MkdirTemp("", "ebpftracing-bench-")
	if err != nil {
		return err
	}
	keepTmp := false
	defer func() {
		if keepTmp {
			fmt.Fprintf(os.Stderr, "bench: kept %s (configs and collector logs)\n", tmp)
			return
		}
		os.RemoveAll(tmp)
	}()

	wls := workloadsFor(o)
	bins := map[string]string{"server": filepath.Join(tmp, "bench-server")}
	for _, wl := range wls {
		if wl.name == "proxy" {
			bins["proxy"] = filepath.Join(tmp, "bench-proxy")
		}
	}
	for _, name := range slices.Sorted(maps.Keys(bins)) {
		logf("building test/bench/%s", name)
		build := exec.CommandContext(ctx, "go", "build", "-o", bins[name], "./test/bench/"+name)
		build.Dir = root
		if out, err := build.CombinedOutput(); err != nil {
			return fmt.Errorf("go build ./test/bench/%s: %w\n%s", name, err, out)
		}
	}

	ports, err := freePorts(2 + 2*len(wls))
	if err != nil {
		return err
	}
	sinkPort, metricsPort := ports[0], ports[1]
	sink, err := startSink(sinkPort)
	if err != nil {
		return err
	}
	defer sink.close()

	e := env{tmp: tmp, bins: bins, wrkPath: wrkPath, sink: sink, metricsPort: metricsPort, keepTmp: &keepTmp}
	for i, wl := range wls {
		rs, err := runWorkload(ctx, o, e, wl, ports[2+2*i:4+2*i])
		if err != nil {
			return fmt.Errorf("workload %s: %w", wl.name, err)
		}
		printReport(os.Stdout, o, wl, rs)
	}
	return nil
}

// runWorkload starts wl's processes, warms them up and runs its rounds.
func runWorkload(ctx context.Context, o options, e env, wl *workload, ports []int) ([]runResult, error) {
	defer wl.stop()
	if err := wl.start(ctx, e.bins, ports); err != nil {
		return nil, err
	}
	w := wrkRunner{path: e.wrkPath, url: wl.url, threads: o.threads, connections: o.connections}
	logf("workload %s: %s; wrk -t%d -c%d -d%s %s; %d rounds; collector %s; ebpf: %s",
		wl.name, wl.desc(), o.threads, o.connections, wl.duration, wl.url, wl.rounds, o.collector, ebpfDesc(wl.ebpf))

	if pids := otherCollectors(); len(pids) > 0 {
		logf("WARNING: other otelcol-ebpf processes are running (pids %v): their BPF programs and load distort the measurement", pids)
	}
	if o.warmup > 0 {
		logf("warm-up %s (not recorded)", o.warmup)
		if _, err := w.run(ctx, o.warmup); err != nil {
			return nil, fmt.Errorf("warm-up: %w", err)
		}
	}

	var results []runResult
	for round := 1; round <= wl.rounds; round++ {
		for _, with := range []bool{false, true} {
			if err := wl.alive(); err != nil {
				return nil, err
			}
			r := runResult{round: round, with: with, hasStats: wl.stats != ""}
			var before backendStats
			if r.hasStats {
				// Read outside the collector's lifetime: the /stats
				// requests are never traced and never counted.
				var err error
				if before, err = getStats(ctx, wl.stats); err != nil {
					return nil, fmt.Errorf("round %d %s: %w", round, r.mode(), err)
				}
			}
			if with {
				cfg := collectorConfig(wl.ports, e.sink.endpoint(), e.metricsPort, wl.ebpf, o.compression)
				if err := withCollector(ctx, o, e, wl, cfg, w, &r); err != nil {
					*e.keepTmp = ctx.Err() == nil
					return nil, fmt.Errorf("round %d WITH: %w", round, err)
				}
			} else {
				if err := r.measure(ctx, w, wl.duration, wl.pids(), 0); err != nil {
					return nil, fmt.Errorf("round %d WITHOUT: %w", round, err)
				}
				// Nothing instruments the workload: the sink must stay empty.
				if n, _ := e.sink.take(); n != 0 {
					return nil, fmt.Errorf("round %d WITHOUT: the sink received %d spans with no collector running", round, n)
				}
			}
			if r.hasStats {
				after, err := getStats(ctx, wl.stats)
				if err != nil {
					return nil, fmt.Errorf("round %d %s: %w", round, r.mode(), err)
				}
				r.backend = backendStats{Requests: after.Requests - before.Requests, WithTraceparent: after.WithTraceparent - before.WithTraceparent}
			}
			logf("%s %s", wl.name, r.progress())
			results = append(results, r)
		}
	}
	return results, nil
}

// measure runs wrk for d and samples CPU time around it: the workload's
// processes' (appPIDs), and the share of the machine's busy time that
// neither they, wrk, the collector (collPID, 0 for none) nor this process
// account for (other processes, kernel threads, and interrupt time not
// charged to a task).
func (r *runResult) measure(ctx context.Context, w wrkRunner, d time.Duration, appPIDs []int, collPID int) error {
	pids := append(slices.Clone(appPIDs), os.Getpid())
	if collPID != 0 {
		pids = append(pids, collPID)
	}
	sample := func() (busy, total time.Duration, own []time.Duration, err error) {
		if busy, total, err = machineCPU(); err != nil {
			return
		}
		own = make([]time.Duration, len(pids))
		for i, pid := range pids {
			if own[i], err = cpuTime(pid); err != nil {
				return
			}
		}
		return
	}
	r.others = otherCollectors(collPID)
	busy0, total0, own0, err := sample()
	if err != nil {
		return err
	}
	if r.wrk, err = w.run(ctx, d); err != nil {
		return err
	}
	busy1, total1, own1, err := sample()
	if err != nil {
		return err
	}
	for _, pid := range otherCollectors(collPID) {
		if !slices.Contains(r.others, pid) {
			r.others = append(r.others, pid)
		}
	}
	r.appCPU = 0
	for i := range appPIDs {
		r.appCPU += own1[i] - own0[i]
	}
	other := busy1 - busy0 - r.wrk.cpu
	for i := range pids {
		other -= own1[i] - own0[i]
	}
	if total1 > total0 {
		r.otherCPU = max(0, float64(other)/float64(total1-total0))
	}
	return nil
}

// withCollector runs one WITH measurement into r.
func withCollector(ctx context.Context, o options, e env, wl *workload, cfg string, w wrkRunner, r *runResult) (err error) {
	cfgPath := filepath.Join(e.tmp, fmt.Sprintf("collector-%s-round%d.yaml", wl.name, r.round))
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		return err
	}
	sink := e.sink
	if _, errs := sink.take(); errs != 0 {
		return fmt.Errorf("sink rejected %d export requests before the run", errs)
	}
	start := time.Now()
	coll, err := startProc(ctx, "collector", syscall.SIGTERM, o.collector, "--config", cfgPath)
	if err != nil {
		return err
	}
	logPath := filepath.Join(e.tmp, fmt.Sprintf("collector-%s-round%d.log", wl.name, r.round))
	defer func() {
		// Stops the collector on every path; on failure keeps its log.
		code, stopErr := coll.terminate(15 * time.Second)
		r.coll.exitCode = code
		_ = os.WriteFile(logPath, coll.output(), 0o644)
		if err == nil && stopErr != nil {
			err = stopErr
		}
		if err != nil && ctx.Err() == nil {
			err = fmt.Errorf("%w\ncollector log (%s), last lines:\n%s", err, logPath, tail(coll.output(), 30))
		}
	}()
	if err := coll.waitOutput(ctx, "Everything is ready", 60*time.Second); err != nil {
		return err
	}
	r.coll.startedIn = time.Since(start)
	n, err := startedProcesses(coll.output())
	if err != nil {
		return err
	}
	if n < wl.wantProcs {
		return fmt.Errorf("the collector selected %d processes on ports %v, want %d (\"ebpf_tracing started\" says processes: %d)", n, wl.ports, wl.wantProcs, n)
	}
	if err := sleep(ctx, o.settle); err != nil {
		return err
	}
	if err := coll.alive(); err != nil {
		return err
	}

	collBefore, err := cpuTime(coll.pid())
	if err != nil {
		return err
	}
	if err := r.measure(ctx, w, wl.duration, wl.pids(), coll.pid()); err != nil {
		return err
	}
	if err := sleep(ctx, o.flushWait); err != nil {
		return err
	}
	collAfter, err := cpuTime(coll.pid())
	if err != nil {
		return err
	}
	r.coll.cpu = collAfter - collBefore

	m, err := scrape(ctx, e.metricsPort)
	if err != nil {
		return err
	}
	r.coll.lost = m.sum("ebpf_tracing_events_lost")
	r.coll.read = m.sum("ebpf_tracing_events_read")
	r.coll.emitted = m.sum("ebpf_tracing_spans_emitted")
	r.coll.injected = m.sum("ebpf_tracing_headers_injected")
	r.coll.sent = m.sum("otelcol_exporter_sent_spans")
	r.coll.failed = m.sum("otelcol_exporter_send_failed_spans") + m.sum("otelcol_exporter_enqueue_failed_spans")
	if r.coll.hwm, err = vmHWM(coll.pid()); err != nil {
		return err
	}
	spans, errs := sink.take()
	r.spans, r.sinkErrors = spans, errs
	if spans == 0 {
		return fmt.Errorf("no span reached the sink after %d requests (events read %v, spans emitted %v, exporter sent %v, failed %v)",
			r.wrk.requests, r.coll.read, r.coll.emitted, r.coll.sent, r.coll.failed)
	}

	code, err := coll.terminate(15 * time.Second)
	if err != nil {
		return err
	}
	if code != 0 {
		return fmt.Errorf("collector exited with code %d after SIGTERM", code)
	}
	late, lateErrs := sink.take()
	r.lateSpans, r.sinkErrors = late, r.sinkErrors+lateErrs
	return nil
}

// collectorConfig is the collector's YAML for one WITH run.
func collectorConfig(ports []int, sinkEndpoint string, metricsPort int, ebpf []string, compression string) string {
	var b strings.Builder
	ps := make([]string, len(ports))
	for i, p := range ports {
		ps[i] = strconv.Itoa(p)
	}
	fmt.Fprintf(&b, `receivers:
  ebpf_tracing:
    discovery:
      instrument:
        - open_ports: "%s"
`, strings.Join(ps, ","))
	if len(ebpf) > 0 {
		b.WriteString("    ebpf:\n")
		for _, kv := range ebpf {
			k, v, _ := strings.Cut(kv, "=")
			fmt.Fprintf(&b, "      %s: %s\n", k, v)
		}
	}
	fmt.Fprintf(&b, `processors:
  batch:
exporters:
  otlp_http:
    endpoint: %s
    compression: %s
service:
  telemetry:
    logs:
      level: info
    metrics:
      level: detailed
      readers:
        - pull:
            exporter:
              prometheus:
                host: 127.0.0.1
                port: %d
  pipelines:
    traces:
      receivers: [ebpf_tracing]
      processors: [batch]
      exporters: [otlp_http]
`, sinkEndpoint, compression, metricsPort)
	return b.String()
}

var processesRE = regexp.MustCompile(`ebpf_tracing started.*"processes": ?(\d+)`)

// startedProcesses reads the process count of the receiver's start log line.
func startedProcesses(log []byte) (int, error) {
	m := processesRE.FindSubmatch(log)
	if m == nil {
		return 0, errors.New(`the collector is ready but logged no "ebpf_tracing started ... processes: N" line`)
	}
	return strconv.Atoi(string(m[1]))
}

func ebpfDesc(kv []string) string {
	if len(kv) == 0 {
		return "receiver defaults (wakeup_len 64)"
	}
	return strings.Join(kv, ", ")
}

// ---- processes ----

// proc is a child process in its own process group.
type proc struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}
	out  *syncBuffer
}

// startProc starts name in its own process group, so a Ctrl-C at the
// terminal reaches only this process, which then stops it. deathSig is sent
// to it if this process dies first (SIGKILL when 0).
func startProc(ctx context.Context, name string, deathSig syscall.Signal, path string, args ...string) (*proc, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if deathSig == 0 {
		deathSig = syscall.SIGKILL
	}
	p := &proc{name: name, cmd: exec.Command(path, args...), done: make(chan struct{}), out: &syncBuffer{limit: 4 << 20}}
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: deathSig}
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	go func() {
		_ = p.cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

func (p *proc) pid() int       { return p.cmd.Process.Pid }
func (p *proc) output() []byte { return p.out.Bytes() }
func (p *proc) exited() bool   { return isClosed(p.done) }
func isClosed(c chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

func (p *proc) alive() error {
	if p.exited() {
		return fmt.Errorf("%s (pid %d) exited: %v\n%s", p.name, p.pid(), p.cmd.ProcessState, tail(p.output(), 30))
	}
	return nil
}

// waitOutput waits until the process has written s.
func (p *proc) waitOutput(ctx context.Context, s string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for !p.out.Contains(s) {
		if err := p.alive(); err != nil {
			return fmt.Errorf("waiting for %q: %w", strings.TrimSpace(s), err)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s wrote no %q within %v:\n%s", p.name, strings.TrimSpace(s), timeout, tail(p.output(), 30))
		}
		if err := sleep(ctx, 20*time.Millisecond); err != nil {
			return err
		}
	}
	return nil
}

// kill SIGKILLs the process group and waits for the process.
func (p *proc) kill() {
	_ = syscall.Kill(-p.pid(), syscall.SIGKILL)
	<-p.done
}

// terminate sends SIGTERM and waits up to timeout for the process to exit,
// then SIGKILLs its group. It returns the exit code (128+signal when a signal
// ended it). Safe to call again once the process has exited.
func (p *proc) terminate(timeout time.Duration) (int, error) {
	if !p.exited() {
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(timeout):
			p.kill()
			return exitCode(p.cmd.ProcessState), fmt.Errorf("%s (pid %d) still running %v after SIGTERM: killed", p.name, p.pid(), timeout)
		}
	}
	return exitCode(p.cmd.ProcessState), nil
}

func exitCode(st *os.ProcessState) int {
	if st == nil {
		return -1
	}
	if ws, ok := st.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return st.ExitCode()
}

// syncBuffer is a concurrency-safe buffer that keeps at most limit bytes
// (the first ones).
type syncBuffer struct {
	mu    sync.Mutex
	buf   bytes.Buffer
	limit int
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if room := b.limit - b.buf.Len(); room > 0 {
		b.buf.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}

func (b *syncBuffer) Bytes() []byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	return bytes.Clone(b.buf.Bytes())
}

func (b *syncBuffer) Contains(s string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return bytes.Contains(b.buf.Bytes(), []byte(s))
}

func tail(out []byte, n int) string {
	lines := strings.Split(strings.TrimRight(string(out), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return "  " + strings.Join(lines, "\n  ")
}

// ---- /proc ----

// cpuTime is utime+stime of pid (all its threads).
func cpuTime(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, fmt.Errorf("read cpu time: %w", err)
	}
	// comm (field 2) may hold spaces and parentheses: fields after the last
	// ')' start at field 3 (state); utime and stime are fields 14 and 15.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: no ')'", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: %d fields after comm", pid, len(f))
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, fmt.Errorf("/proc/%d/stat: %w", pid, err)
	}
	return time.Duration(ut+st) * time.Second / userHZ, nil
}

// machineCPU sums the first line of /proc/stat: busy is every state but
// idle and iowait; total includes them.
func machineCPU() (busy, total time.Duration, err error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0, err
	}
	line, _, _ := bytes.Cut(b, []byte("\n"))
	f := strings.Fields(string(line))
	if len(f) < 9 || f[0] != "cpu" {
		return 0, 0, fmt.Errorf("/proc/stat: unexpected first line %q", line)
	}
	// user nice system idle iowait irq softirq steal (guest time is
	// already in user).
	for i, s := range f[1:9] {
		v, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return 0, 0, fmt.Errorf("/proc/stat: %w", err)
		}
		d := time.Duration(v) * time.Second / userHZ
		total += d
		if i != 3 && i != 4 {
			busy += d
		}
	}
	return busy, total, nil
}

// otherCollectors lists the otelcol-ebpf processes running now that this
// bench did not start: their BPF programs run on every syscall of the
// machine and their load competes with the measurement.
func otherCollectors(own ...int) []int {
	matches, _ := filepath.Glob("/proc/[0-9]*/comm")
	var out []int
	for _, m := range matches {
		b, err := os.ReadFile(m)
		if err != nil || strings.TrimSpace(string(b)) != "otelcol-ebpf" {
			continue
		}
		pid, err := strconv.Atoi(filepath.Base(filepath.Dir(m)))
		if err != nil || slices.Contains(own, pid) {
			continue
		}
		if st, err := os.ReadFile(filepath.Join(filepath.Dir(m), "stat")); err == nil && bytes.Contains(st, []byte(") Z ")) {
			continue // a zombie has no programs attached
		}
		out = append(out, pid)
	}
	return out
}

// vmHWM is the peak resident set size of pid in bytes.
func vmHWM(pid int) (int64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, fmt.Errorf("read VmHWM: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("/proc/%d/status VmHWM %q: %w", pid, v, err)
			}
			return kb << 10, nil
		}
	}
	return 0, fmt.Errorf("/proc/%d/status: no VmHWM", pid)
}

// ---- wrk ----

type wrkRunner struct {
	path, url            string
	threads, connections int
}

// wrkResult is what one wrk run printed.
type wrkResult struct {
	reqPerSec float64
	requests  int64
	p50, p99  time.Duration
	sockErrs  int64 // connect+read+write+timeout
	non2xx    int64
	cpu       time.Duration // wrk's user+system time
}

func (w wrkRunner) run(ctx context.Context, d time.Duration) (wrkResult, error) {
	args := []string{
		"-t" + strconv.Itoa(w.threads), "-c" + strconv.Itoa(w.connections),
		"-d" + strconv.Itoa(int(d.Round(time.Second)/time.Second)) + "s", "--latency", w.url,
	}
	p, err := startProc(ctx, "wrk", 0, w.path, args...)
	if err != nil {
		return wrkResult{}, err
	}
	defer p.kill()
	select {
	case <-p.done:
	case <-ctx.Done():
		return wrkResult{}, ctx.Err()
	case <-time.After(d + 30*time.Second):
		return wrkResult{}, fmt.Errorf("wrk still running %v after its -d %v", 30*time.Second, d)
	}
	out := p.output()
	if code := exitCode(p.cmd.ProcessState); code != 0 {
		return wrkResult{}, fmt.Errorf("wrk %s exited with %d:\n%s", strings.Join(args, " "), code, out)
	}
	res, err := parseWrk(out)
	if err != nil {
		return wrkResult{}, fmt.Errorf("wrk output: %w\n%s", err, out)
	}
	res.cpu = p.cmd.ProcessState.UserTime() + p.cmd.ProcessState.SystemTime()
	return res, nil
}

var (
	wrkReqPerSecRE = regexp.MustCompile(`(?m)^Requests/sec:\s+([0-9.]+)`)
	wrkRequestsRE  = regexp.MustCompile(`(?m)^\s*(\d+) requests in `)
	wrkPctRE       = regexp.MustCompile(`(?m)^\s+(50|99)(?:\.0+)?%\s+([0-9.]+)(us|ms|s|m|h)\s*$`)
	wrkSockErrRE   = regexp.MustCompile(`Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)`)
	wrkNon2xxRE    = regexp.MustCompile(`Non-2xx or 3xx responses: (\d+)`)
)

// parseWrk reads requests/sec, the request count, errors and the 50% and
// 99% lines of --latency output. wrk prints latencies as 812.00us, 1.84ms,
// 1.02s, 1.50m or 1.00h.
func parseWrk(out []byte) (wrkResult, error) {
	var r wrkResult
	m := wrkReqPerSecRE.FindSubmatch(out)
	if m == nil {
		return r, errors.New("no Requests/sec line")
	}
	r.reqPerSec, _ = strconv.ParseFloat(string(m[1]), 64)
	if m = wrkRequestsRE.FindSubmatch(out); m == nil {
		return r, errors.New("no 'N requests in' line")
	}
	r.requests, _ = strconv.ParseInt(string(m[1]), 10, 64)
	for _, m := range wrkPctRE.FindAllSubmatch(out, -1) {
		v, err := strconv.ParseFloat(string(m[2]), 64)
		if err != nil {
			return r, fmt.Errorf("latency %q: %w", m[0], err)
		}
		unit := map[string]time.Duration{"us": time.Microsecond, "ms": time.Millisecond, "s": time.Second, "m": time.Minute, "h": time.Hour}[string(m[3])]
		d := time.Duration(v * float64(unit))
		if string(m[1]) == "50" {
			r.p50 = d
		} else {
			r.p99 = d
		}
	}
	if r.p99 == 0 {
		return r, errors.New("no 99% latency line (was --latency given?)")
	}
	if m = wrkSockErrRE.FindSubmatch(out); m != nil {
		for _, s := range m[1:] {
			n, _ := strconv.ParseInt(string(s), 10, 64)
			r.sockErrs += n
		}
	}
	if m = wrkNon2xxRE.FindSubmatch(out); m != nil {
		r.non2xx, _ = strconv.ParseInt(string(m[1]), 10, 64)
	}
	if r.requests == 0 {
		return r, errors.New("wrk completed no request")
	}
	return r, nil
}

// ---- OTLP/HTTP sink ----

// sink accepts OTLP/HTTP trace exports on 127.0.0.1 and counts their spans.
// While wrk runs it only stores the bodies; take decodes them.
type sink struct {
	srv    *http.Server
	addr   string
	served chan struct{}

	mu     sync.Mutex
	bodies []body
	errs   int
}

type body struct {
	gzip bool
	data []byte
}

func startSink(port int) (*sink, error) {
	ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil {
		return nil, fmt.Errorf("sink listen: %w", err)
	}
	s := &sink{addr: ln.Addr().String(), served: make(chan struct{})}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/traces", s.handle)
	s.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		defer close(s.served)
		_ = s.srv.Serve(ln)
	}()
	return s, nil
}

func (s *sink) endpoint() string { return "http://" + s.addr }

func (s *sink) close() {
	_ = s.srv.Close()
	<-s.served
}

func (s *sink) handle(w http.ResponseWriter, r *http.Request) {
	var b body
	switch enc := strings.ToLower(r.Header.Get("Content-Encoding")); enc {
	case "", "identity":
	case "gzip":
		b.gzip = true
	default:
		s.fail(w, http.StatusUnsupportedMediaType, "unsupported Content-Encoding "+enc)
		return
	}
	if ct := r.Header.Get("Content-Type"); ct != "application/x-protobuf" {
		s.fail(w, http.StatusUnsupportedMediaType, "want application/x-protobuf, got "+ct)
		return
	}
	data, err := io.ReadAll(io.LimitReader(r.Body, 64<<20))
	if err != nil {
		s.fail(w, http.StatusBadRequest, "read body: "+err.Error())
		return
	}
	b.data = data
	s.mu.Lock()
	s.bodies = append(s.bodies, b)
	s.mu.Unlock()
	// An empty ExportTraceServiceResponse: full success.
	w.Header().Set("Content-Type", "application/x-protobuf")
	w.WriteHeader(http.StatusOK)
}

func (s *sink) fail(w http.ResponseWriter, code int, msg string) {
	s.mu.Lock()
	s.errs++
	s.mu.Unlock()
	http.Error(w, msg, code)
}

// take decodes and forgets the bodies received so far, and returns their
// span count and the number of rejected or undecodable exports.
func (s *sink) take() (spans, errs int) {
	s.mu.Lock()
	bodies := s.bodies
	s.bodies = nil
	errs = s.errs
	s.errs = 0
	s.mu.Unlock()
	var u ptrace.ProtoUnmarshaler
	for _, b := range bodies {
		data := b.data
		if b.gzip {
			zr, err := gzip.NewReader(bytes.NewReader(data))
			if err != nil {
				errs++
				continue
			}
			data, err = io.ReadAll(zr)
			if err != nil {
				errs++
				continue
			}
		}
		td, err := u.UnmarshalTraces(data)
		if err != nil {
			errs++
			continue
		}
		spans += td.SpanCount()
	}
	return spans, errs
}

// ---- collector metrics ----

type promSamples map[string]float64 // full series text → value

// scrape reads the collector's Prometheus endpoint.
func scrape(ctx context.Context, port int) (promSamples, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("http://127.0.0.1:%d/metrics", port), nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("scrape collector metrics: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("scrape collector metrics: %s", resp.Status)
	}
	out := promSamples{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			continue
		}
		out[line[:i]] = v
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("scrape collector metrics: %w", err)
	}
	if len(out) == 0 {
		return nil, errors.New("scrape collector metrics: no samples")
	}
	return out, nil
}

// sum adds the samples whose metric name contains name; 0 when there are
// none (the SDK exports a counter only once it has been added to).
func (p promSamples) sum(name string) float64 {
	var t float64
	for series, v := range p {
		metric, _, _ := strings.Cut(series, "{")
		if strings.Contains(metric, name) {
			t += v
		}
	}
	return t
}

// ---- report ----

func (r runResult) mode() string {
	if r.with {
		return "WITH"
	}
	return "WITHOUT"
}

func (r runResult) progress() string {
	s := fmt.Sprintf("round %d %-7s %9.0f req/s  p50 %-9s p99 %-9s %d requests, app %.1f µs/req, other CPU %.0f%%",
		r.round, r.mode(), r.wrk.reqPerSec, fmtDur(r.wrk.p50), fmtDur(r.wrk.p99), r.wrk.requests, r.appCPUPerReq(), 100*r.otherCPU)
	if r.with {
		s += fmt.Sprintf("; collector %.1f µs/req, VmHWM %.1f MiB, spans/req %.4f, lost %.0f",
			r.collCPUPerReq(), mib(r.coll.hwm), r.spansPerReq(), r.coll.lost)
	}
	if r.hasStats {
		s += fmt.Sprintf("; backend %d requests, %.4f with traceparent", r.backend.Requests, r.tpShare())
		if r.with {
			s += fmt.Sprintf(" (collector counted %.0f injected)", r.coll.injected)
		}
	}
	return s
}

// tpShare is the share of the backend's requests that carried traceparent.
func (r runResult) tpShare() float64 {
	if r.backend.Requests == 0 {
		return 0
	}
	return float64(r.backend.WithTraceparent) / float64(r.backend.Requests)
}

func (r runResult) collCPUPerReq() float64 {
	return float64(r.coll.cpu.Microseconds()) / float64(r.wrk.requests)
}

func (r runResult) appCPUPerReq() float64 {
	return float64(r.appCPU.Microseconds()) / float64(r.wrk.requests)
}

func (r runResult) wrkCPUPerReq() float64 {
	return float64(r.wrk.cpu.Microseconds()) / float64(r.wrk.requests)
}

func (r runResult) spansPerReq() float64 { return float64(r.spans) / float64(r.wrk.requests) }

func mib(b int64) float64 { return float64(b) / (1 << 20) }

func fmtDur(d time.Duration) string {
	switch {
	case d < time.Millisecond:
		return fmt.Sprintf("%.0fµs", float64(d)/float64(time.Microsecond))
	case d < time.Second:
		return fmt.Sprintf("%.2fms", float64(d)/float64(time.Millisecond))
	}
	return fmt.Sprintf("%.2fs", d.Seconds())
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

func pick(rs []runResult, with bool, f func(runResult) float64) []float64 {
	var out []float64
	for _, r := range rs {
		if r.with == with {
			out = append(out, f(r))
		}
	}
	return out
}

func verdict(ok bool) string {
	if ok {
		return "PASS"
	}
	return "MISS"
}

func printReport(w io.Writer, o options, wl *workload, rs []runResult) {
	host, _ := os.Hostname()
	var uts syscall.Utsname
	_ = syscall.Uname(&uts)
	stats := wl.stats != ""
	var names []string
	for _, p := range wl.apps {
		names = append(names, p.name)
	}
	fmt.Fprintf(w, "\n### ebpf_tracing overhead, workload %s: %s\n\n", wl.name, wl.title)
	fmt.Fprintf(w, "%s, Linux %s, %d CPUs, %s; `wrk -t%d -c%d -d%s --latency`, %d rounds (WITHOUT, WITH alternating); collector instruments ports %v (%s); batch → otlp_http (%s); ebpf: %s\n\n",
		host, utsString(uts.Release[:]), runtime.NumCPU(), runtime.Version(), o.threads, o.connections, wl.duration, wl.rounds,
		wl.ports, strings.Join(names, " + "), o.compression, ebpfDesc(wl.ebpf))

	head := "| round | collector | req/s | p50 | p99 | requests | errors | " + wl.appLabel + " CPU µs/req | wrk CPU µs/req | collector CPU µs/req | collector VmHWM MiB | spans/req | events lost |"
	align := "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
	if stats {
		head += " backend requests | with traceparent | headers injected (collector) |"
		align += "---:|---:|---:|"
	}
	fmt.Fprintln(w, head+" other CPU |")
	fmt.Fprintln(w, align+"---:|")
	for _, r := range rs {
		errs := r.wrk.sockErrs + r.wrk.non2xx
		row := fmt.Sprintf("| %d | %s | %.0f | %s | %s | %d | %d | %.2f | %.2f |",
			r.round, strings.ToLower(r.mode()), r.wrk.reqPerSec, fmtDur(r.wrk.p50), fmtDur(r.wrk.p99), r.wrk.requests, errs, r.appCPUPerReq(), r.wrkCPUPerReq())
		if r.with {
			row += fmt.Sprintf(" %.2f | %.1f | %.4f | %.0f |", r.collCPUPerReq(), mib(r.coll.hwm), r.spansPerReq(), r.coll.lost)
		} else {
			row += " – | – | – | – |"
		}
		if stats {
			row += fmt.Sprintf(" %d | %.4f |", r.backend.Requests, r.tpShare())
			if r.with {
				row += fmt.Sprintf(" %.0f |", r.coll.injected)
			} else {
				row += " – |"
			}
		}
		fmt.Fprintf(w, "%s %.0f%% |\n", row, 100*r.otherCPU)
	}

	rps := func(r runResult) float64 { return r.wrk.reqPerSec }
	p99 := func(r runResult) float64 { return float64(r.wrk.p99) }
	rpsA, rpsB := median(pick(rs, false, rps)), median(pick(rs, true, rps))
	p99A, p99B := median(pick(rs, false, p99)), median(pick(rs, true, p99))
	appA := median(pick(rs, false, runResult.appCPUPerReq))
	appB := median(pick(rs, true, runResult.appCPUPerReq))
	collCPU := median(pick(rs, true, runResult.collCPUPerReq))
	spr := median(pick(rs, true, runResult.spansPerReq))
	var hwm int64
	var lost, late, sinkErrs, failed float64
	for _, r := range rs {
		if r.with {
			hwm = max(hwm, r.coll.hwm)
			lost += r.coll.lost
			late += float64(r.lateSpans)
			sinkErrs += float64(r.sinkErrors)
			failed += r.coll.failed
		}
	}
	tput, p99r := rpsB/rpsA, p99B/p99A
	sprTol := targetSpansPerReqTol * wl.wantSpans

	fmt.Fprintf(w, "\n| %s: measure (median of %d) | without | with | value | target | result |\n", wl.name, wl.rounds)
	fmt.Fprintln(w, "|---|---:|---:|---:|---|---|")
	fmt.Fprintf(w, "| throughput (req/s) | %.0f | %.0f | ×%.3f | ≥ %.2f | %s |\n", rpsA, rpsB, tput, wl.targetTput, verdict(tput >= wl.targetTput))
	fmt.Fprintf(w, "| p99 latency | %s | %s | ×%.3f | ≤ %.2f | %s |\n", fmtDur(time.Duration(p99A)), fmtDur(time.Duration(p99B)), p99r, wl.targetP99, verdict(p99r <= wl.targetP99))
	fmt.Fprintf(w, "| %s CPU per request | %.2f µs | %.2f µs | %+.2f µs | – | – |\n", wl.appLabel, appA, appB, appB-appA)
	fmt.Fprintf(w, "| collector CPU per request | – | %.2f µs | %.2f µs | – | – |\n", collCPU, collCPU)
	fmt.Fprintf(w, "| collector peak RSS (VmHWM, max) | – | %.1f MiB | %.1f MiB | ≤ %d MiB | %s |\n", mib(hwm), mib(hwm), targetPeakRSSMiB, verdict(mib(hwm) <= targetPeakRSSMiB))
	fmt.Fprintf(w, "| spans exported per request | – | %.4f | %.4f | %.2f ± %.2f | %s |\n", spr, spr, wl.wantSpans, sprTol, verdict(spr >= wl.wantSpans-sprTol && spr <= wl.wantSpans+sprTol))
	fmt.Fprintf(w, "| events lost (sum) | – | %.0f | %.0f | 0 | %s |\n", lost, lost, verdict(lost == 0))
	if stats {
		shareA := median(pick(rs, false, runResult.tpShare))
		shareB := median(pick(rs, true, runResult.tpShare))
		fmt.Fprintf(w, "| backend requests with traceparent (share) | %.4f | %.4f | %.4f | ≈ 1.00 (every request under a traced request) | – |\n", shareA, shareB, shareB)
	}

	var notes []string
	if late > 0 {
		notes = append(notes, fmt.Sprintf("%.0f spans reached the sink only during collector shutdown (after the %s flush wait); not counted above", late, o.flushWait))
	}
	if sinkErrs > 0 {
		notes = append(notes, fmt.Sprintf("the sink rejected or could not decode %.0f export requests", sinkErrs))
	}
	if failed > 0 {
		notes = append(notes, fmt.Sprintf("the exporter failed to send or enqueue %.0f spans", failed))
	}
	for _, r := range rs {
		if len(r.others) > 0 {
			notes = append(notes, fmt.Sprintf("round %d %s: other otelcol-ebpf processes were running (pids %v): this run is not a clean measurement", r.round, r.mode(), r.others))
		}
		if r.otherCPU > 0.10 {
			notes = append(notes, fmt.Sprintf("round %d %s: %.0f%% of the machine was busy outside the %s, wrk, the collector and the bench: the machine was not quiet", r.round, r.mode(), 100*r.otherCPU, wl.appLabel))
		}
		if n := r.wrk.sockErrs + r.wrk.non2xx; n > 0 {
			notes = append(notes, fmt.Sprintf("round %d %s: wrk reported %d socket errors and %d non-2xx responses", r.round, r.mode(), r.wrk.sockErrs, r.wrk.non2xx))
		}
		if r.with && r.coll.read != float64(r.spans+r.lateSpans) {
			notes = append(notes, fmt.Sprintf("round %d: the receiver read %.0f events and emitted %.0f spans; the sink got %d (+%d late); wrk completed %d requests",
				r.round, r.coll.read, r.coll.emitted, r.spans, r.lateSpans, r.wrk.requests))
		}
		if r.hasStats {
			// wrk stops with up to -c requests in flight: those reached the
			// backend but are not in wrk's count.
			if d := r.backend.Requests - r.wrk.requests; d < 0 || d > int64(o.connections) {
				notes = append(notes, fmt.Sprintf("round %d %s: the backend served %d requests, wrk completed %d through the proxy", r.round, r.mode(), r.backend.Requests, r.wrk.requests))
			}
			if !r.with && r.backend.WithTraceparent > 0 {
				notes = append(notes, fmt.Sprintf("round %d WITHOUT: %d backend requests carried a traceparent with no collector of this bench running (another collector injecting?)", r.round, r.backend.WithTraceparent))
			}
		}
	}
	fmt.Fprintln(w)
	for _, n := range notes {
		fmt.Fprintln(w, "- "+n)
	}
	fmt.Fprintf(w, "- collector CPU is its utime+stime from just before wrk until the flush wait ended, over the requests wrk completed; %s and wrk CPU include the time the kernel spends in the BPF programs on their syscalls; other CPU is the share of the machine busy outside the %s, wrk, the collector and the bench (with its sink) during wrk, interrupt time included\n", wl.appLabel, wl.appLabel)
	if stats {
		fmt.Fprintln(w, "- the proxy opens a new connection to the backend per request (no keep-alive), so every backend connection of a WITH run was opened while its collector ran; \"with traceparent\" is the share of the backend's requests (from its /stats, read outside the collector's lifetime) that arrived with the header; \"headers injected\" is the collector's ebpf_tracing_headers_injected")
	}
}

func utsString(b []int8) string {
	s := make([]byte, 0, len(b))
	for _, c := range b {
		if c == 0 {
			break
		}
		s = append(s, byte(c))
	}
	return string(s)
}

// ---- misc ----

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench: "+format+"\n", args...)
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// repoRoot walks up from the working directory to the directory holding
// go.mod.
func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod above the working directory: run from the repository")
		}
		dir = parent
	}
}

// freePorts returns n distinct TCP ports that were free on 127.0.0.1.
func freePorts(n int) ([]int, error) {
	var lns []net.Listener
	defer func() {
		for _, ln := range lns {
			ln.Close()
		}
	}()
	ports := make([]int, 0, n)
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("free port: %w", err)
		}
		lns = append(lns, ln)
		ports = append(ports, ln.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}
