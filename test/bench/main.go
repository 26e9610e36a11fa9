//go:build linux

// Command bench measures what the ebpf_tracing receiver costs Go net/http
// services and prints a cost budget: it runs wrk against them without the
// collector, with the collector distribution (_build/otelcol-ebpf), and with
// a "floor" collector whose BPF programs return at once, alternating in one
// invocation. Run it as root from the repository root, after `make distro`:
//
//	make bench                                  # or: go run ./test/bench
//	make bench BENCH_FLAGS=-quick               # smoke run: 1 round of 3 s
//	go run ./test/bench -workload server,neighbour -modes all -rounds 5
//	go run ./test/bench -wakeup-len 0           # compare the ring buffer wakeup policy
//
// # Workloads
//
// Chosen with -workload (a comma list, default all: every one but
// https-nginx-static, in this order):
//
//   - server: wrk → test/bench/server (`GET /hello`); one SERVER span per
//     request.
//   - server-https: test/bench/server -tls (Go crypto/tls, HTTP/1.1).
//   - https-python: wrk over HTTPS → test/bench/pyhttps/server.py under
//     /usr/bin/python3 (http.server, a thread per connection, the ssl
//     module over OpenSSL); one SERVER span per request.
//   - https-nginx: wrk over HTTPS → /usr/sbin/nginx (one worker) → a keep-
//     alive HTTPS upstream pool → a second nginx answering `return 200`;
//     three spans per request (front SERVER and CLIENT, backend SERVER),
//     the upstream request a TLS CLIENT request, so with -modes all the
//     packet-level carrier writes and parses its TCP option. nginx's spans
//     and CPU are counted for its worker (a child of the pid started); the
//     collector selects master and worker. https-nginx-static (not in
//     "all"): the second nginx alone. The HTTPS workloads' certificate is
//     self-signed, written at start with crypto/x509.
//   - proxy: wrk → test/bench/proxy → test/bench/server -stats, the proxy
//     keeping its backend connections alive; three spans per request (proxy
//     SERVER and CLIENT, backend SERVER). Before every run, while no
//     collector runs, the bench makes the proxy close its idle backend
//     connections (POST /close-idle), so each run opens its own and those of
//     a with run are opened under its collector (header injection applies
//     only to connections opened after the collector started).
//   - proxy-new: the same with `proxy -new-conn`: a new backend connection
//     per request, so the connection-level programs run per request.
//   - neighbour: two test/bench/server processes, each loaded by its own wrk
//     at the same time; the collector selects only the first. The second,
//     the untraced neighbour, still runs the kernel-wide hooks (the syscall
//     tracepoints, sockops on the root cgroup) and shares the CPUs: its
//     throughput and p99 against the run without collector are what a
//     process on the same node that nobody asked to trace pays.
//   - neighbour-pinned: the same with the traced side (its server, its wrk,
//     the collector and this process, which holds the sink) on CPU 0 and
//     the neighbour with its wrk on CPU 1 (taskset, in every run, the one
//     without collector too): the neighbour's row is then what its own
//     hooks cost it, without the CPU the traced side's work takes from it.
//   - grpc: wrk → the gRPC client of test/e2e/apps/gogrpc (an HTTP front
//     whose `GET /call` makes one unary Health/Check over one shared h2c
//     connection) → its gRPC server; three spans per request (front HTTP
//     SERVER, gRPC CLIENT, gRPC SERVER), four uprobe hits per gRPC call.
//
// The proxy backends count the requests that arrived with a traceparent
// header (GET /stats, read before and after each run, outside any
// collector's lifetime); the report shows that share.
//
// # Runs
//
// Each workload starts its processes on 127.0.0.1:<free port>, warms them up
// (-warmup), then runs -rounds rounds. A round is a run without collector,
// then for each -modes value (ebpf.context_propagation, default disabled and
// all) a floor run and a with run (-floor=false drops the floor runs); even
// rounds run that list backwards. Every run is `wrk -t<threads>
// -c<connections> -d<duration> --latency http://127.0.0.1:<port>/hello`
// (and the neighbour's wrk alongside).
//
// A floor or with run starts a fresh collector: discovery.instrument
// selecting the workload's traced ports, ebpf.context_propagation: <mode>
// plus -ebpf and -wakeup-len, the batch processor and an otlp_http exporter
// (-compression, default none: the sink is local, like a collector sending
// to a gateway on the same host) pointed at a sink inside this process, its
// internal metrics (level detailed) on a Prometheus pull reader on
// 127.0.0.1. A floor run adds EBPFTRACING_BENCH_FLOOR=1 to its environment:
// the loaders then make every BPF program return at once, so the floor
// measures the hooks themselves (a collector without that switch runs
// normally; the report says so when floor runs export spans). wrk starts
// after the collector logged "Everything is ready", its "ebpf_tracing
// started" line counted the traced processes, and -settle more. Around wrk
// the run reads the collector's internal metrics, its CPU time
// (utime+stime, /proc/<pid>/stat) and the run time of each BPF program it
// holds (found through /proc/<pid>/fdinfo of its bpf-prog and bpf_link fds,
// read with BPF_OBJ_GET_INFO_BY_FD while this process keeps BPF statistics
// on with BPF_ENABLE_STATS); after wrk and -flush-wait it reads them again,
// with VmHWM, counts the spans the sink received per process.pid, and stops
// the collector with SIGTERM, waiting for it to exit so its programs are
// detached before the next run.
//
// The sink keeps the request bodies while wrk runs and decodes them after
// the flush wait, so decoding takes no CPU from the services during the
// measurement on a small machine.
//
// # Output
//
// On stdout: per workload a table of its runs; at the end the cost budget
// (one row per workload and mode; the neighbour workload has a row for the
// traced server and one for the untraced neighbour), the BPF programs'
// runs and run time per request, the project's targets (server throughput
// ratio ≥ 0.95 and p99 ratio ≤ 1.10, proxies ≥ 0.90 and ≤ 1.15; collector
// peak RSS ≤ 120 MiB, 0 lost events, spans exactly as expected per
// process), and notes on anything that makes a run suspect. The legend
// printed under the budget says how each column is measured. Progress goes
// to stderr.
//
// Missing a target exits 0, since this is a measurement; a broken setup (not
// root, wrk or the distro missing, a process that fails to start or dies, a
// with run with no span at all) exits 1, and an interrupt 130, after every
// process started here has been stopped: the collector by SIGTERM and a
// wait, the others by SIGKILL of their process group.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

type options struct {
	workloads   []string
	modes       []string
	floor       bool
	rounds      int
	duration    time.Duration
	connections int
	threads     int
	warmup      time.Duration
	settle      time.Duration
	flushWait   time.Duration
	wakeupLen   int
	ebpf        kvList
	compression string
	collector   string
	variants    variantList
	pprofDir    string
	// telemetryLevel is the collector's service.telemetry.metrics.level.
	telemetryLevel string
}

// variantsOrPlain is the -variant list, or the plain collector alone.
func (o options) variantsOrPlain() []variant {
	if len(o.variants) == 0 {
		return []variant{{}}
	}
	return o.variants
}

// kvList is a repeatable key=value flag.
type kvList []string

func (l *kvList) String() string { return strings.Join(*l, ",") }

func (l *kvList) Set(s string) error {
	k, v, ok := strings.Cut(s, "=")
	if !ok || k == "" || v == "" || strings.ContainsAny(k, ": \n") || strings.Contains(v, "\n") {
		return fmt.Errorf("want key=value, got %q", s)
	}
	if k == "context_propagation" {
		return errors.New("context_propagation is set per run: use -modes")
	}
	*l = append(*l, k+"="+v)
	return nil
}

// propagationModes are the ebpf.context_propagation values -modes accepts.
var propagationModes = []string{"disabled", "headers", "tcp", "all"}

func main() {
	var o options
	var workloads, modes string
	var quick bool
	flag.StringVar(&workloads, "workload", "all", "comma list of "+strings.Join(workloadNames, ", ")+", or all ("+strings.Join(defaultWorkloads, ", ")+")")
	flag.StringVar(&modes, "modes", "disabled,all", "comma list of ebpf.context_propagation values to measure ("+strings.Join(propagationModes, ", ")+")")
	flag.BoolVar(&o.floor, "floor", true, "add a floor run per mode (collector with "+floorEnv+")")
	flag.BoolVar(&quick, "quick", false, "smoke run: -rounds 1 -duration 3s -warmup 1s -settle 500ms -flush-wait 1s, unless given")
	flag.IntVar(&o.rounds, "rounds", 3, "rounds (without, then floor and with per mode)")
	flag.DurationVar(&o.duration, "duration", 8*time.Second, "length of each wrk run (wrk -d)")
	flag.IntVar(&o.connections, "connections", 32, "wrk connections (wrk -c), per wrk")
	flag.IntVar(&o.threads, "threads", 2, "wrk threads (wrk -t), per wrk")
	flag.DurationVar(&o.warmup, "warmup", 3*time.Second, "unrecorded wrk run before each workload's first round (0: none)")
	flag.DurationVar(&o.settle, "settle", time.Second, "wait between the collector being ready and wrk starting")
	flag.DurationVar(&o.flushWait, "flush-wait", 2*time.Second, "wait after wrk ends before counting spans")
	flag.IntVar(&o.wakeupLen, "wakeup-len", -1, "ebpf.wakeup_len for the collector (-1: leave the receiver's default, 512)")
	flag.Var(&o.ebpf, "ebpf", "extra ebpf.<key>=<value> for the receiver config, value written verbatim (repeatable)")
	flag.StringVar(&o.compression, "compression", "none", "otlp_http exporter compression: none (a local sink, like a gateway on the same host) or gzip (the exporter's default)")
	flag.StringVar(&o.collector, "collector", "", "collector binary (default <repo>/_build/otelcol-ebpf)")
	flag.Var(&o.variants, "variant", "NAME:key=value;… a collector set-up; each round runs the floor and with runs once per variant, in turn (repeatable). Keys: collector (binary), compression, processors (batch or none), env.K (environment, e.g. env.GOGC=200), ebpf.K, exporter.K, processor.K (batch processor; \"::\" nests, e.g. exporter.sending_queue::batch::flush_timeout=200ms)")
	flag.StringVar(&o.telemetryLevel, "telemetry-level", "normal", "the collector's service.telemetry.metrics.level (normal: the DaemonSet's; detailed also computes each batch's size in bytes in the batch processor and the exporter queue)")
	flag.StringVar(&o.pprofDir, "pprof", "", "directory for pprof profiles of each with run (CPU while wrk runs, allocations before and after: go tool pprof -base ...-allocs0.pb.gz ...-allocs1.pb.gz)")
	flag.Parse()
	if flag.NArg() > 0 {
		usage("unexpected arguments %q", flag.Args())
	}
	if quick {
		set := map[string]bool{}
		flag.Visit(func(f *flag.Flag) { set[f.Name] = true })
		for name, v := range map[string]string{"rounds": "1", "duration": "3s", "warmup": "1s", "settle": "500ms", "flush-wait": "1s"} {
			if !set[name] {
				_ = flag.Set(name, v)
			}
		}
	}
	var err error
	if workloads == "all" {
		workloads = strings.Join(defaultWorkloads, ",")
	}
	if o.workloads, err = parseList(workloads, workloadNames, true); err != nil {
		usage("-workload: %v", err)
	}
	if o.modes, err = parseList(modes, propagationModes, false); err != nil {
		usage("-modes: %v", err)
	}
	if o.rounds < 1 || o.duration < time.Second || o.duration > 10*time.Minute ||
		o.connections < 1 || o.threads < 1 || o.connections < o.threads ||
		o.warmup < 0 || o.warmup > time.Minute || o.settle < 0 || o.settle > time.Minute ||
		o.flushWait < 0 || o.flushWait > time.Minute || o.wakeupLen < -1 {
		usage("flag out of range (rounds ≥ 1, 1s ≤ duration ≤ 10m, connections ≥ threads ≥ 1, waits ≤ 1m, wakeup-len ≥ -1)")
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
	err = run(ctx, o)
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

func usage(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench: "+format+"\n", args...)
	os.Exit(2)
}

// parseList splits a comma list of known values, in the order of known when
// ordered; "all" (when ordered) is every value.
func parseList(s string, known []string, ordered bool) ([]string, error) {
	if ordered && s == "all" {
		return known, nil
	}
	var out []string
	for _, v := range strings.Split(s, ",") {
		v = strings.TrimSpace(v)
		if !slices.Contains(known, v) {
			return nil, fmt.Errorf("unknown value %q; want %s", v, strings.Join(known, ", "))
		}
		if !slices.Contains(out, v) {
			out = append(out, v)
		}
	}
	if ordered {
		slices.SortFunc(out, func(a, b string) int { return slices.Index(known, a) - slices.Index(known, b) })
	}
	return out, nil
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
	stats, err := enableBPFStats()
	if err != nil {
		return err
	}
	defer stats.Close()
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

	bins := map[string]string{}
	for _, name := range []string{"server", "proxy"} {
		bins[name] = filepath.Join(tmp, "bench-"+name)
		logf("building test/bench/%s", name)
		build := exec.CommandContext(ctx, "go", "build", "-o", bins[name], "./test/bench/"+name)
		build.Dir = root
		if out, err := build.CombinedOutput(); err != nil {
			return fmt.Errorf("go build ./test/bench/%s: %w\n%s", name, err, out)
		}
	}
	if slices.Contains(o.workloads, "grpc") {
		// A module of its own (the module proxy's grpc).
		bins["gogrpc"] = filepath.Join(tmp, "bench-gogrpc")
		logf("building test/e2e/apps/gogrpc")
		build := exec.CommandContext(ctx, "go", "build", "-o", bins["gogrpc"], ".")
		build.Dir = filepath.Join(root, "test", "e2e", "apps", "gogrpc")
		build.Env = append(os.Environ(), "GOWORK=off")
		if out, err := build.CombinedOutput(); err != nil {
			return fmt.Errorf("go build test/e2e/apps/gogrpc: %w\n%s", err, out)
		}
	}

	var cert, key string
	if slices.ContainsFunc(o.workloads, func(w string) bool { return strings.HasPrefix(w, "https-") }) {
		if cert, key, err = writeSelfSigned(tmp); err != nil {
			return err
		}
		bins["pyhttps"] = filepath.Join(root, "test", "bench", "pyhttps", "server.py")
	}
	if slices.ContainsFunc(o.workloads, func(w string) bool { return strings.HasPrefix(w, "https-nginx") }) {
		if _, err := os.Stat(nginxPath); err != nil {
			return fmt.Errorf("the https-nginx workloads need %s: `make bench` installs it (apt-get install nginx-light): %w", nginxPath, err)
		}
	}
	if slices.Contains(o.workloads, "https-python") {
		if out, err := exec.CommandContext(ctx, pythonPath, "-c", "import ssl").CombinedOutput(); err != nil {
			return fmt.Errorf("the https-python workload needs %s with its ssl module (Debian's python3): %w\n%s", pythonPath, err, out)
		}
	}

	ports, err := freePorts(3)
	if err != nil {
		return err
	}
	sink, err := startSink(ports[0])
	if err != nil {
		return err
	}
	defer sink.close()

	if o.pprofDir != "" {
		if err := os.MkdirAll(o.pprofDir, 0o755); err != nil {
			return err
		}
	}
	e := env{o: o, tmp: tmp, bins: bins, cert: cert, key: key, wrkPath: wrkPath, sink: sink, metricsPort: ports[1], keepTmp: &keepTmp}
	if o.pprofDir != "" {
		e.pprofPort = ports[2]
	}
	var results []result
	for _, name := range o.workloads {
		wl := newWorkload(name)
		rs, err := startAndRun(ctx, e, wl)
		if err != nil {
			return fmt.Errorf("workload %s: %w", wl.name, err)
		}
		printRuns(os.Stdout, o, wl, rs)
		results = append(results, result{wl: wl, rs: rs})
	}
	printBudget(os.Stdout, o, results)
	return nil
}

// startAndRun starts wl's processes, runs it and stops them.
func startAndRun(ctx context.Context, e env, wl *workload) ([]runResult, error) {
	defer wl.stop()
	ports, err := freePorts(wl.portsNeeded())
	if err != nil {
		return nil, err
	}
	if wl.pinned {
		if runtime.NumCPU() < 2 {
			return nil, fmt.Errorf("workload %s needs 2 CPUs, this machine has %d", wl.name, runtime.NumCPU())
		}
		// This process holds the sink: it is on the traced side.
		if err := pinSelf(tracedCPUs); err != nil {
			return nil, err
		}
		defer func() {
			all := make([]string, runtime.NumCPU())
			for i := range all {
				all[i] = strconv.Itoa(i)
			}
			if err := pinSelf(strings.Join(all, ",")); err != nil {
				logf("unpin: %v", err)
			}
		}()
	}
	if err := wl.start(ctx, e, ports); err != nil {
		return nil, err
	}
	return runWorkload(ctx, e, wl)
}
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
