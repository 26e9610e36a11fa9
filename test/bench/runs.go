//go:build linux

package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"time"
)

// runKind is what instruments the workload during a run.
type runKind int

const (
	kindWithout runKind = iota // no collector
	kindFloor                  // a collector whose BPF programs return at once (floorEnv)
	kindWith                   // the collector
)

func (k runKind) String() string {
	return [...]string{"without", "floor", "with"}[k]
}

// runSpec is one run of a round.
type runSpec struct {
	kind    runKind
	mode    string  // ebpf.context_propagation; "" for without
	variant variant // the collector set-up (-variant); zero for without
}

func (s runSpec) String() string {
	if s.kind == kindWithout {
		return "without"
	}
	return s.kind.String() + " " + s.label()
}

// label is the budget row of a floor or with run: the mode, and the
// variant's name if any.
func (s runSpec) label() string {
	if s.variant.name == "" {
		return s.mode
	}
	return s.mode + " " + s.variant.name
}

// roundSpecs is the order of the runs of round (from 1): without, then per
// mode and variant a floor run (unless noFloor) and a with run; even rounds
// run the same list backwards, so a slow drift of the machine does not
// favour one kind or variant.
func roundSpecs(round int, modes []string, variants []variant, withFloor bool) []runSpec {
	specs := []runSpec{{kind: kindWithout}}
	for _, m := range modes {
		for _, v := range variants {
			if withFloor {
				specs = append(specs, runSpec{kind: kindFloor, mode: m, variant: v})
			}
			specs = append(specs, runSpec{kind: kindWith, mode: m, variant: v})
		}
	}
	if round%2 == 0 {
		slices.Reverse(specs)
	}
	return specs
}

// load is what one wrk run against one service measured.
type load struct {
	wrk    wrkResult
	appCPU time.Duration // utime+stime of the service's processes during wrk
}

func (l load) appCPUPerReq() float64 {
	return float64(l.appCPU.Microseconds()) / float64(l.wrk.requests)
}

// runResult is one run of a workload.
type runResult struct {
	round int
	spec  runSpec

	main      load  // wrk → the traced service, CPU of its processes
	neighbour *load // wrk → the untraced neighbour, nil when none

	otherCPU float64 // share of the machine busy outside the workload, wrk, collector and bench during wrk
	others   []int   // otelcol-ebpf processes not started here, seen just before or after wrk

	coll  collectorSample // floor and with runs
	spans sinkTake        // at the sink by the end of the flush wait
	late  sinkTake        // more that arrived by the time the collector exited

	hasStats bool         // the workload's backend counts requests
	backend  backendStats // its counters' increase over the run
}

// collectorSample is what a floor or with run measured of the collector.
type collectorSample struct {
	cpu       time.Duration        // utime+stime from just before wrk to after the flush wait
	sys       time.Duration        // the stime part of cpu
	hwm       int64                // VmHWM in bytes, just before SIGTERM
	counters  collectorCounters    // increase from just before wrk to after the flush wait
	progs     map[string]progDelta // BPF run time while wrk ran, per program
	startedIn time.Duration        // exec to ready
}

// env is what every workload shares.
type env struct {
	o           options
	tmp         string
	bins        map[string]string // test/bench/<name> → built binary (pyhttps: the script)
	cert, key   string            // the HTTPS workloads' self-signed certificate and key (PEM files)
	wrkPath     string
	sink        *sink
	metricsPort int
	pprofPort   int // the collector's pprof extension, with -pprof
	keepTmp     *bool
}

// runWorkload warms wl up and runs its rounds; wl's processes are running.
func runWorkload(ctx context.Context, e env, wl *workload) ([]runResult, error) {
	o := e.o
	logf("workload %s: %s; wrk -t%d -c%d -d%s %s; %d rounds; modes %v; floor runs %v; ebpf: %s",
		wl.name, wl.desc(), o.threads, o.connections, o.duration, wl.url(), o.rounds, o.modes, o.floor, ebpfDesc(o.ebpf))
	if pids := otherCollectors(); len(pids) > 0 {
		logf("WARNING: other otelcol-ebpf processes are running (pids %v): their BPF programs and load distort the measurement", pids)
	}
	if o.warmup > 0 {
		logf("warm-up %s (not recorded)", o.warmup)
		var r runResult
		if err := r.measure(ctx, e, wl, o.warmup, 0); err != nil {
			return nil, fmt.Errorf("warm-up: %w", err)
		}
	}
	var results []runResult
	for round := 1; round <= o.rounds; round++ {
		for _, spec := range roundSpecs(round, o.modes, o.variantsOrPlain(), o.floor) {
			r, err := runOne(ctx, e, wl, round, spec)
			if err != nil {
				return nil, fmt.Errorf("round %d %s: %w", round, spec, err)
			}
			logf("%s %s", wl.name, r.progress())
			results = append(results, r)
		}
	}
	return results, nil
}

// runOne runs one spec of round.
func runOne(ctx context.Context, e env, wl *workload, round int, spec runSpec) (runResult, error) {
	r := runResult{round: round, spec: spec, hasStats: wl.stats != ""}
	if err := wl.alive(); err != nil {
		return r, err
	}
	// Outside any collector's lifetime, so never traced: the keep-alive
	// proxy drops its backend connections (the run opens its own) and the
	// backend's counters are read.
	if err := wl.closeIdleConns(ctx); err != nil {
		return r, err
	}
	var before backendStats
	if r.hasStats {
		var err error
		if before, err = getStats(ctx, wl.stats); err != nil {
			return r, err
		}
	}
	if spec.kind == kindWithout {
		if err := r.measure(ctx, e, wl, e.o.duration, 0); err != nil {
			return r, err
		}
		// Nothing instruments the workload: the sink must stay empty.
		if t := e.sink.take(); t.spans != 0 {
			return r, fmt.Errorf("the sink received %d spans with no collector running", t.spans)
		}
	} else if err := r.withCollector(ctx, e, wl); err != nil {
		*e.keepTmp = ctx.Err() == nil
		return r, err
	}
	if r.hasStats {
		after, err := getStats(ctx, wl.stats)
		if err != nil {
			return r, err
		}
		r.backend = backendStats{Requests: after.Requests - before.Requests, WithTraceparent: after.WithTraceparent - before.WithTraceparent}
	}
	return r, nil
}

// measure runs wrk for d against the workload's traced front and, at the
// same time, its neighbour, and samples CPU time around it: the traced
// processes' and the neighbour's, and the share of the machine's busy time
// that neither they, wrk, the collector (collPID, 0 for none) nor this
// process account for (other processes, kernel threads, and interrupt time
// not charged to a task).
func (r *runResult) measure(ctx context.Context, e env, wl *workload, d time.Duration, collPID int) error {
	o := e.o
	groups := [][]int{wl.tracedPIDs()}
	runners := []wrkRunner{{path: e.wrkPath, url: wl.url(), threads: o.threads, connections: o.connections, cpus: wl.tracedSide()}}
	if wl.neighbour != nil {
		groups = append(groups, []int{wl.neighbour.pid()})
		runners = append(runners, wrkRunner{path: e.wrkPath, url: fmt.Sprintf("http://127.0.0.1:%d/hello", wl.neighbour.port), threads: o.threads, connections: o.connections, cpus: wl.neighbourSide()})
	}
	pids := []int{os.Getpid()}
	if collPID != 0 {
		pids = append(pids, collPID)
	}
	for _, g := range groups {
		pids = append(pids, g...)
	}
	sample := func() (busy, total time.Duration, own map[int]time.Duration, err error) {
		if busy, total, err = machineCPU(); err != nil {
			return
		}
		own = map[int]time.Duration{}
		for _, pid := range pids {
			if own[pid], err = cpuTime(pid); err != nil {
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
	loads := make([]load, len(runners))
	errs := make([]error, len(runners))
	var wg sync.WaitGroup
	for i, w := range runners {
		wg.Go(func() { loads[i].wrk, errs[i] = w.run(ctx, d) })
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return err
		}
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
	other := busy1 - busy0
	for _, pid := range pids {
		other -= own1[pid] - own0[pid]
	}
	for i, g := range groups {
		for _, pid := range g {
			loads[i].appCPU += own1[pid] - own0[pid]
		}
		other -= loads[i].wrk.cpu
	}
	r.main = loads[0]
	if len(loads) > 1 {
		r.neighbour = &loads[1]
	}
	if total1 > total0 {
		r.otherCPU = max(0, float64(other)/float64(total1-total0))
	}
	return nil
}

// withCollector runs one floor or with measurement into r: a fresh
// collector selecting the traced ports, wrk once it is ready and -settle
// more, its CPU, metrics and BPF statistics around wrk, the spans by the end
// of -flush-wait, then SIGTERM and a wait, so its programs are detached
// before the next run.
func (r *runResult) withCollector(ctx context.Context, e env, wl *workload) (err error) {
	o := e.o
	v := r.spec.variant
	name := fmt.Sprintf("collector-%s-round%d-%s-%s", wl.name, r.round, r.spec.kind, r.spec.mode)
	if v.name != "" {
		name += "-" + v.name
	}
	cfgPath := filepath.Join(e.tmp, name+".yaml")
	compression := o.compression
	if v.compression != "" {
		compression = v.compression
	}
	level := o.telemetryLevel
	if v.telemetry != "" {
		level = v.telemetry
	}
	bin := o.collector
	if v.collector != "" {
		bin = v.collector
	}
	cfg := collectorConfig(wl.ports(), r.spec.mode, append(slices.Clone(o.ebpf), v.ebpf...), v, e.sink.endpoint(), e.metricsPort, compression, level, e.pprofPort)
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		return err
	}
	if t := e.sink.take(); t.errs != 0 || t.spans != 0 {
		return fmt.Errorf("the sink had %d spans and %d rejected exports before the run", t.spans, t.errs)
	}
	envs := slices.Clone(v.env)
	if r.spec.kind == kindFloor {
		envs = append(envs, floorEnv)
	}
	start := time.Now()
	coll, err := startPinned(ctx, wl.tracedSide(), "collector", syscall.SIGTERM, envs, bin, "--config", cfgPath)
	if err != nil {
		return err
	}
	logPath := filepath.Join(e.tmp, name+".log")
	defer func() {
		// Stops the collector on every path; on failure keeps its log.
		_, stopErr := coll.terminate(15 * time.Second)
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
	if want := wl.selectedProcesses(); n != want {
		return fmt.Errorf("the collector selected %d processes on ports %v, want %d", n, wl.ports(), want)
	}
	if err := sleep(ctx, o.settle); err != nil {
		return err
	}
	if err := coll.alive(); err != nil {
		return err
	}

	m0, err := scrape(ctx, e.metricsPort)
	if err != nil {
		return err
	}
	progs0, err := programsOf(coll.pid())
	if err != nil {
		return err
	}
	user0, sys0, err := cpuTimes(coll.pid())
	if err != nil {
		return err
	}
	var prof *profiler
	if o.pprofDir != "" && r.spec.kind == kindWith {
		if prof, err = startProfiles(ctx, e.pprofPort, filepath.Join(o.pprofDir, name), o.duration); err != nil {
			return err
		}
	}
	if err := r.measure(ctx, e, wl, o.duration, coll.pid()); err != nil {
		return err
	}
	if prof != nil {
		if err := prof.finish(ctx); err != nil {
			return err
		}
	}
	progs1, err := programsOf(coll.pid())
	if err != nil {
		return err
	}
	r.coll.progs = progs1.since(progs0)
	if err := sleep(ctx, o.flushWait); err != nil {
		return err
	}
	user1, sys1, err := cpuTimes(coll.pid())
	if err != nil {
		return err
	}
	r.coll.cpu = user1 + sys1 - user0 - sys0
	r.coll.sys = sys1 - sys0
	m1, err := scrape(ctx, e.metricsPort)
	if err != nil {
		return err
	}
	r.coll.counters = countersFrom(m1).minus(countersFrom(m0))
	if r.coll.hwm, err = vmHWM(coll.pid()); err != nil {
		return err
	}
	r.spans = e.sink.take()
	if r.spec.kind == kindWith && r.spans.spans == 0 {
		c := r.coll.counters
		return fmt.Errorf("no span reached the sink after %d requests (events read %v, spans emitted %v, exporter sent %v, failed %v)",
			r.main.wrk.requests, c.read, c.emitted, c.sent, c.failed)
	}
	code, err := coll.terminate(15 * time.Second)
	if err != nil {
		return err
	}
	if code != 0 {
		return fmt.Errorf("collector exited with code %d after SIGTERM", code)
	}
	r.late = e.sink.take()
	return nil
}
