//go:build linux

package ebpfreceiver // import "github.com/ebpftracing/ebpftracingreceiver/receiver"

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/cilium/ebpf/ringbuf"
	"github.com/cilium/ebpf/rlimit"
	"go.opentelemetry.io/collector/component"
	"go.opentelemetry.io/collector/component/componentstatus"
	"go.opentelemetry.io/collector/consumer"
	"go.opentelemetry.io/collector/receiver"
	"go.opentelemetry.io/collector/receiver/receiverhelper"
	"go.opentelemetry.io/otel/metric"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/ebpftracing/ebpftracingreceiver/bpf/ctxprop"
	"github.com/ebpftracing/ebpftracingreceiver/bpf/gogrpc"
	"github.com/ebpftracing/ebpftracingreceiver/bpf/goruntime"
	"github.com/ebpftracing/ebpftracingreceiver/bpf/httptrace"
	"github.com/ebpftracing/ebpftracingreceiver/bpf/tc"
	"github.com/ebpftracing/ebpftracingreceiver/bpf/tcpopt"
	"github.com/ebpftracing/ebpftracingreceiver/internal/discovery"
	"github.com/ebpftracing/ebpftracingreceiver/internal/kernelprobe"
	"github.com/ebpftracing/ebpftracingreceiver/internal/metadata"
	"github.com/ebpftracing/ebpftracingreceiver/internal/procres"
	"github.com/ebpftracing/ebpftracingreceiver/internal/routes"
	"github.com/ebpftracing/ebpftracingreceiver/internal/spans"
)

// exitedGrace is how long the process metadata of an exited process is kept,
// so records still in the ring buffer get their resource.
const exitedGrace = 10 * time.Second

// clockRefresh is how often the kernel clock to wall clock offset is
// measured again.
const clockRefresh = 10 * time.Second

// clockEvery is how many records readLoop decodes between two looks at the
// clock for the batch deadline (time.Now per record was 4% of the
// collector's CPU under load).
const clockEvery = 64

type tracesReceiver struct {
	set          receiver.Settings
	cfg          *Config
	envOverrides []string
	next         consumer.Traces
	// userWrites are the inputs of the user-memory write gate; zero takes
	// the real ones (tests inject files and a probe result).
	userWrites kernelprobe.UserWriteInputs

	// Set by Start, released by Shutdown.
	cancel    context.CancelFunc
	wg        sync.WaitGroup
	tracer    *httptrace.Tracer
	prop      *ctxprop.Propagator
	tcpOpt    *tcpopt.Carrier    // the TCP option carrier of TLS contexts
	ipopt     *tc.Carrier        // IPv4-option carrier (tcp + ip_option)
	goTracker *goruntime.Tracker // goroutine tracking, with header injection
	tls       *httptrace.TLS     // TLS library uprobes; nil if the kernel refused them
	grpc      *gogrpc.Tracer     // Go gRPC library uprobes; nil if the kernel refused them
	reader    *ringbuf.Reader
	watcher   *discovery.Watcher
	telemetry *metadata.TelemetryBuilder
	obsrecv   *receiverhelper.ObsReport
	routes    *routes.Matcher // owned by the reader goroutine once started

	mu    sync.Mutex
	procs map[uint32]*procEntry

	// bootID is the host's boot id for service.instance.id (describe).
	bootOnce sync.Once
	bootID   string
}

type procEntry struct {
	proc   spans.Process
	exited time.Time // zero while running
}

func newTracesReceiver(set receiver.Settings, cfg *Config, envOverrides []string, next consumer.Traces) (receiver.Traces, error) {
	return &tracesReceiver{
		set:          set,
		cfg:          cfg,
		envOverrides: envOverrides,
		next:         next,
		procs:        map[uint32]*procEntry{},
	}, nil
}

// Start probes the kernel, loads and attaches the tracer, selects the running
// processes and starts the discovery and ring buffer reader goroutines. When
// it returns without error the probes are attached.
func (r *tracesReceiver) Start(ctx context.Context, host component.Host) (err error) {
	logger := r.set.Logger
	for _, o := range r.envOverrides {
		logger.Info("configuration overridden by environment", zap.String("variable", o))
	}
	if err := kernelprobe.CheckPrivileges(); err != nil {
		return fmt.Errorf("ebpf_tracing: %w", err)
	}
	if err := rlimit.RemoveMemlock(); err != nil {
		return fmt.Errorf("ebpf_tracing: remove memlock limit: %w", err)
	}
	report, err := kernelprobe.Probe()
	if err != nil {
		return fmt.Errorf("ebpf_tracing: %w", err)
	}
	useLoop := report.BPFLoop || r.cfg.EBPF.OverrideBPFLoopEnabled
	if !useLoop {
		logger.Warn("bpf_loop helper unavailable (kernel before 5.17): only request lines are parsed; " +
			"incoming traceparent and Host headers are ignored and no header is injected. " +
			"Set ebpf.override_bpf_loop_enabled (BEYLA_OVERRIDE_BPF_LOOP_ENABLED) if the kernel has it backported")
	}
	criteria, err := r.cfg.Discovery.criteria()
	if err != nil {
		return fmt.Errorf("ebpf_tracing: %w", err)
	}
	propagation, err := r.cfg.EBPF.Propagation()
	if err != nil {
		return fmt.Errorf("ebpf_tracing: %w", err)
	}
	if !useLoop {
		propagation.Headers = false
	}
	// Library-level (Go) header writes need bpf_probe_write_user: decided
	// once here, never a reason to fail.
	writes := goLibraryWrites(r.cfg.EBPF.GoLibraryWrites, r.userWrites)
	logGoLibraryWrites(logger, writes, propagation.Headers)
	sampler, err := r.cfg.Sampler.Parsed()
	if err != nil {
		return fmt.Errorf("ebpf_tracing: %w", err)
	}
	if r.routes, err = routes.New(r.cfg.Routes.options()); err != nil {
		return fmt.Errorf("ebpf_tracing: routes: %w", err)
	}
	// The packet-level carrier takes the context of TLS requests; plaintext
	// requests get headers (headers or all), never the carrier. httptrace
	// fills and takes the carrier maps for either carrier.
	carrier := propagation.TCP

	// Everything opened from here on is closed again if Start fails.
	defer func() {
		if err != nil {
			_ = r.release()
		}
	}()
	r.telemetry, err = metadata.NewTelemetryBuilder(r.set.TelemetrySettings)
	if err != nil {
		return fmt.Errorf("ebpf_tracing: telemetry: %w", err)
	}
	r.obsrecv, err = receiverhelper.NewObsReport(receiverhelper.ObsReportSettings{
		ReceiverID:             r.set.ID,
		Transport:              "ebpf",
		ReceiverCreateSettings: r.set,
	})
	if err != nil {
		return fmt.Errorf("ebpf_tracing: obsreport: %w", err)
	}
	r.tracer, err = httptrace.Load(httptrace.Options{
		RingBufferSize:      r.cfg.EBPF.RingBufferSize,
		WakeupRecords:       r.cfg.EBPF.WakeupLen,
		TrackRequestHeaders: r.cfg.EBPF.TrackRequestHeaders,
		NoBPFLoop:           !useLoop,
		Hook:                ioHook(r.cfg.EBPF.IOHook),
		ReturnAtOnce:        benchFloor(),
		Sampler:             kernelSampler(sampler),
		Carrier:             carrier,
	})
	if err != nil {
		return fmt.Errorf("ebpf_tracing: %w", err)
	}
	if err = r.tracer.Attach(); err != nil {
		return fmt.Errorf("ebpf_tracing: %w", err)
	}
	// HTTPS: uprobes on the TLS libraries of selected processes. Without
	// them plaintext tracing goes on.
	if r.tls, err = r.tracer.LoadTLS(true); err != nil {
		logger.Warn("TLS library probes unavailable: no HTTPS spans", zap.Error(err))
		r.tls, err = nil, nil
	}
	if propagation.Headers {
		if r.prop, err = ctxprop.Load(r.tracer.Shared(), kernelSampler(sampler), benchFloor()); err != nil {
			return fmt.Errorf("ebpf_tracing: %w", err)
		}
		if err = r.prop.Attach(report.CgroupV2); err != nil {
			return fmt.Errorf("ebpf_tracing: ebpf.context_propagation %q: %w", r.cfg.EBPF.ContextPropagation, err)
		}
	}
	if carrier && r.cfg.EBPF.PacketCarrier == CarrierTCPOption {
		if r.tcpOpt, err = tcpopt.Load(r.tracer.Shared()); err != nil {
			return fmt.Errorf("ebpf_tracing: ebpf.packet_carrier tcp_option: %w", err)
		}
		if err = r.tcpOpt.Attach(report.CgroupV2); err != nil {
			return fmt.Errorf("ebpf_tracing: ebpf.packet_carrier tcp_option: %w (or set ebpf.context_propagation to headers)", err)
		}
	}
	if propagation.TCP && r.cfg.EBPF.PacketCarrier == CarrierIPOption {
		shared := r.tracer.Shared()
		r.ipopt, err = tc.Load(tc.Maps{CarrierOut: shared.CarrierOut, CarrierIn: shared.CarrierIn},
			tc.Options{Backend: r.cfg.EBPF.TrafficControlBackend, Netns: r.cfg.EBPF.TrafficControlNamespaces, Logger: logger})
		if err != nil {
			return fmt.Errorf("ebpf_tracing: %w", err)
		}
		if err = r.ipopt.Start(); err != nil {
			return fmt.Errorf("ebpf_tracing: ebpf.packet_carrier ip_option (ebpf.traffic_control_backend %s): %w; "+
				"CAP_NET_ADMIN and the host network namespace are needed", r.cfg.EBPF.TrafficControlBackend, err)
		}
		logger.Info("IPv4-option carrier attached to every interface of the network namespace, and to new ones",
			zap.String("backend", r.ipopt.Backend()), zap.Strings("interfaces", r.ipopt.Interfaces()))
	}
	// Go moves goroutines between threads: follow them in Go processes, so
	// outgoing calls get the context of the request they serve, never the
	// thread's. Without propagation (neither headers nor the packet
	// carrier) no uprobe is placed at all: the hand-over to a pooled
	// connection's writeLoop is what gives a keep-alive HTTPS request its
	// context for the carrier too.
	shared := r.tracer.Shared()
	r.goTracker, err = goruntime.Load(goruntime.Maps{
		TracedPids: shared.TracedPids,
		ThreadCtxs: shared.ThreadCtxs,
		GoProcs:    shared.GoProcs,
		GoCtxs:     shared.GoCtxs,
		GoParents:  shared.GoParents,
	}, goruntime.Options{NoHandOver: !propagation.Headers && !propagation.TCP, ReturnAtOnce: benchFloor()})
	if err != nil {
		return fmt.Errorf("ebpf_tracing: %w", err)
	}
	// gRPC (HTTP/2) in Go programs: library uprobes. Without them the
	// rest goes on.
	if r.grpc, err = gogrpc.Load(gogrpc.Maps{
		TracedPids: shared.TracedPids,
		ThreadCtxs: shared.ThreadCtxs,
		GoProcs:    shared.GoProcs,
		GoCtxs:     shared.GoCtxs,
		GoParents:  shared.GoParents,
		Events:     r.tracer.Events(),
	}, gogrpc.Options{WakeupRecords: r.cfg.EBPF.WakeupLen, ReturnAtOnce: benchFloor()}); err != nil {
		logger.Warn("Go gRPC probes unavailable: no gRPC spans", zap.Error(err))
		r.grpc, err = nil, nil
	}
	r.reader, err = ringbuf.NewReader(r.tracer.Events())
	if err != nil {
		return fmt.Errorf("ebpf_tracing: open ring buffer reader: %w", err)
	}

	watcher := discovery.NewWatcher(criteria, discovery.Options{Interval: r.cfg.Discovery.PollInterval}, logger)
	r.watcher = watcher
	added, _, err := watcher.Scan()
	if err != nil {
		return fmt.Errorf("ebpf_tracing: discover processes: %w", err)
	}
	for _, p := range added {
		r.onAdd(p)
	}

	logger.Info("ebpf_tracing started",
		zap.String("attach", r.tracer.Variant()),
		zap.Bool("inject_headers", r.prop != nil),
		zap.String("tls_carrier", r.carrierVariant()),
		zap.String("go_hand_over", r.goTracker.Variant()),
		zap.String("tls", r.tlsVariant()),
		zap.Bool("go_grpc", r.grpc != nil),
		zap.Bool("bpf_loop", report.BPFLoop),
		zap.String("cgroup_v2", report.CgroupV2),
		zap.String("lockdown", report.Lockdown),
		zap.String("go_library_writes", writes.String()),
		zap.String("sampler", sampler.String()),
		zap.Int("processes", len(added)))

	runCtx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	clock := httptrace.NewClock(monotonicNow())
	r.wg.Add(2)
	go func() {
		defer r.wg.Done()
		watcher.Run(runCtx, r.onAdd, r.onRemove)
	}()
	if r.tls != nil {
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			r.rescanTLS(runCtx, r.cfg.Discovery.PollInterval)
		}()
	}
	go func() {
		defer r.wg.Done()
		if err := r.readLoop(runCtx, clock); err != nil {
			componentstatus.ReportStatus(host, componentstatus.NewFatalErrorEvent(err))
		}
	}()
	return nil
}

// Shutdown stops the goroutines, detaches the programs and closes the maps.
// It is safe without Start and when called twice, and gives up waiting for
// the goroutines when ctx ends.
func (r *tracesReceiver) Shutdown(ctx context.Context) error {
	if r.cancel != nil {
		r.cancel()
	}
	var errs []error
	if r.reader != nil {
		// Interrupts the reader's ReadInto.
		if err := r.reader.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close ring buffer reader: %w", err))
		}
	}
	done := make(chan struct{})
	go func() {
		r.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-ctx.Done():
		errs = append(errs, fmt.Errorf("wait for ebpf_tracing goroutines: %w", ctx.Err()))
	}
	r.reader = nil
	errs = append(errs, r.release())
	return errors.Join(errs...)
}

// release detaches and closes what Start opened, in reverse order.
func (r *tracesReceiver) release() error {
	var errs []error
	if r.watcher != nil {
		if err := r.watcher.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close process watcher: %w", err))
		}
		r.watcher = nil
	}
	if r.reader != nil {
		if err := r.reader.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close ring buffer reader: %w", err))
		}
		r.reader = nil
	}
	if r.goTracker != nil {
		if err := r.goTracker.Close(); err != nil {
			errs = append(errs, err)
		}
		r.goTracker = nil
	}
	if r.grpc != nil {
		if err := r.grpc.Close(); err != nil {
			errs = append(errs, err)
		}
		r.grpc = nil
	}
	if r.tls != nil {
		if err := r.tls.Close(); err != nil {
			errs = append(errs, err)
		}
		r.tls = nil
	}
	if r.tcpOpt != nil {
		if err := r.tcpOpt.Close(); err != nil {
			errs = append(errs, err)
		}
		r.tcpOpt = nil
	}
	if r.ipopt != nil {
		if err := r.ipopt.Close(); err != nil {
			errs = append(errs, err)
		}
		r.ipopt = nil
	}
	if r.prop != nil {
		if err := r.prop.Close(); err != nil {
			errs = append(errs, err)
		}
		r.prop = nil
	}
	if r.tracer != nil {
		if err := r.tracer.Close(); err != nil {
			errs = append(errs, err)
		}
		r.tracer = nil
	}
	if r.telemetry != nil {
		r.telemetry.Shutdown()
		r.telemetry = nil
	}
	return errors.Join(errs...)
}

func (r *tracesReceiver) onAdd(p discovery.Process) {
	if err := r.tracer.Trace(uint32(p.PID)); err != nil {
		r.set.Logger.Warn("cannot trace process", zap.Int("pid", p.PID), zap.Error(err))
		return
	}
	if r.prop != nil {
		// Connections the process opened before it was traced.
		if err := r.prop.AddExisting(p.PID); err != nil {
			r.set.Logger.Debug("existing connections not injected", zap.Int("pid", p.PID), zap.Error(err))
		}
	}
	if r.goTracker != nil {
		if err := r.goTracker.AttachProcess(p.PID, p.ExePath); err != nil && !errors.Is(err, goruntime.ErrNotGo) {
			r.set.Logger.Warn("Go process without goroutine ancestry: its outgoing requests get a parent only when made by the goroutine serving the request",
				zap.Int("pid", p.PID), zap.String("exe", p.ExePath), zap.Error(err))
		}
	}
	if r.grpc != nil {
		if _, err := r.grpc.AttachProcess(p.PID, p.ExePath); err != nil {
			r.set.Logger.Warn("Go gRPC or HTTP/2 probes not attached: no gRPC or h2c spans for this process",
				zap.Int("pid", p.PID), zap.String("exe", p.ExePath), zap.Error(err))
		}
	}
	if r.tls != nil {
		if _, err := r.tls.AttachProcess(p.PID); err != nil {
			r.set.Logger.Warn("TLS library probes not attached: no HTTPS spans for this process",
				zap.Int("pid", p.PID), zap.String("exe", p.ExePath), zap.Error(err))
		}
	}
	r.mu.Lock()
	r.procs[uint32(p.PID)] = &procEntry{proc: spans.ProcessOf(p.PID, &p.Resource)}
	n := r.instrumentedLocked()
	r.mu.Unlock()
	r.telemetry.ReceiverEbpfTracingProcessesInstrumented.Record(context.Background(), n)
}

func (r *tracesReceiver) onRemove(pid int) {
	_ = r.tracer.Untrace(uint32(pid))
	if r.goTracker != nil {
		_ = r.goTracker.DetachProcess(pid)
	}
	if r.tls != nil {
		_ = r.tls.DetachProcess(pid)
	}
	if r.grpc != nil {
		_ = r.grpc.DetachProcess(pid)
	}
	r.mu.Lock()
	if e, ok := r.procs[uint32(pid)]; ok {
		e.exited = time.Now()
	}
	n := r.instrumentedLocked()
	r.mu.Unlock()
	r.telemetry.ReceiverEbpfTracingProcessesInstrumented.Record(context.Background(), n)
}

func (r *tracesReceiver) tlsVariant() string {
	if r.tls == nil {
		return "none"
	}
	return r.tls.Variant()
}

// rescanTLS looks again, every interval, at the mappings of the selected
// processes for TLS libraries loaded since (dlopen, e.g. Python's "import
// ssl"): one read of /proc/<pid>/maps per process and interval.
func (r *tracesReceiver) rescanTLS(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		for _, pid := range r.tls.Pids() {
			// Errors (the process exited) are left to discovery.
			r.tls.Rescan(pid)
		}
	}
}

func (r *tracesReceiver) instrumentedLocked() int64 {
	var n int64
	for _, e := range r.procs {
		if e.exited.IsZero() {
			n++
		}
	}
	return n
}

// process returns the resource of pid; purgeExited forgets processes that
// exited more than exitedGrace ago.
func (r *tracesReceiver) process(pid uint32) spans.Process {
	r.mu.Lock()
	defer r.mu.Unlock()
	if e, ok := r.procs[pid]; ok {
		return e.proc
	}
	// A process the kernel traces because a traced process created it
	// while serving a request: described once, forgotten after the grace
	// period like an exited one.
	p := r.describe(int(pid))
	r.procs[pid] = &procEntry{proc: p, exited: time.Now()}
	return p
}

// describe reads the resource of a process discovery did not select; a
// process already gone gets only its pid.
func (r *tracesReceiver) describe(pid int) spans.Process {
	r.bootOnce.Do(func() { r.bootID = procres.BootID("/proc") })
	info := procres.Read("/proc", pid, "", r.bootID)
	return spans.ProcessOf(pid, &info)
}

func (r *tracesReceiver) purgeExited(now time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for pid, e := range r.procs {
		if !e.exited.IsZero() && now.Sub(e.exited) > exitedGrace {
			delete(r.procs, pid)
		}
	}
}

// readLoop is the one reader of the ring buffer: it decodes records, batches
// spans and hands them to the next consumer every BatchTimeout or
// BatchLength spans, whichever comes first.
func (r *tracesReceiver) readLoop(ctx context.Context, clock httptrace.Clock) error {
	hostName, _ := os.Hostname()
	builder := spans.NewBuilder(hostName, r.set.BuildInfo.Version)
	builder.SetRoutes(r.routes)
	batchTimeout := r.cfg.EBPF.BatchTimeout
	batchLength := r.cfg.EBPF.BatchLength
	var (
		rec  ringbuf.Record
		req  spans.Request
		rpc  spans.RPC
		dec  httptrace.Decoder
		rdec gogrpc.Decoder
		read int64
		kc   kernelCounters
		ts   = httptrace.NewTraceStates()
		// The resource of the last record's process, until the next flush
		// (a process's description can change between batches, as
		// discovery replaces what describe found).
		lastPID  uint32
		lastProc spans.Process
		haveLast bool
		// Records since the batch deadline was last compared with the
		// clock.
		sinceClock int
	)
	flush := func() {
		haveLast = false
		if read > 0 {
			r.telemetry.ReceiverEbpfTracingEventsRead.Add(ctx, read)
			read = 0
		}
		kc.report(ctx, r)
		if u := builder.TakeUnmatched(); u > 0 {
			r.telemetry.ReceiverEbpfTracingRoutesUnmatched.Add(ctx, u)
		}
		if n := builder.TakeIgnored(); n > 0 {
			r.telemetry.ReceiverEbpfTracingSpansIgnored.Add(ctx, n)
		}
		n := builder.Len()
		if n == 0 {
			return
		}
		td := builder.Flush()
		opCtx := r.obsrecv.StartTracesOp(ctx)
		err := r.next.ConsumeTraces(opCtx, td)
		r.obsrecv.EndTracesOp(opCtx, "http", n, err)
		r.telemetry.ReceiverEbpfTracingSpansEmitted.Add(ctx, int64(n))
		if err != nil {
			r.telemetry.ReceiverEbpfTracingConsumerErrors.Add(ctx, 1)
		}
	}
	deadline := time.Now().Add(batchTimeout)
	clockAt := time.Now()
	r.reader.SetDeadline(deadline)
	for {
		err := r.reader.ReadInto(&rec)
		switch {
		case errors.Is(err, os.ErrDeadlineExceeded):
		case errors.Is(err, ringbuf.ErrClosed):
			flush()
			return nil
		case err != nil:
			flush()
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("read ring buffer: %w", err)
		default:
			read++
			if httptrace.IsTraceState(rec.RawSample) {
				// The tracestate of the span whose record follows.
				_ = ts.Add(rec.RawSample)
			} else if gogrpc.IsH2Event(rec.RawSample) {
				if rdec.DecodeH2(rec.RawSample, clock, &req) == nil {
					if !haveLast || lastPID != req.PID {
						lastPID, lastProc, haveLast = req.PID, r.process(req.PID), true
					}
					builder.Append(&req, lastProc)
				}
			} else if gogrpc.IsEvent(rec.RawSample) {
				if rdec.Decode(rec.RawSample, clock, &rpc) == nil {
					if !haveLast || lastPID != rpc.PID {
						lastPID, lastProc, haveLast = rpc.PID, r.process(rpc.PID), true
					}
					builder.AppendRPC(&rpc, lastProc)
				}
			} else if derr := dec.Decode(rec.RawSample, clock, &req); derr == nil {
				ts.Apply(&req)
				if !haveLast || lastPID != req.PID {
					lastPID, lastProc, haveLast = req.PID, r.process(req.PID), true
				}
				builder.Append(&req, lastProc)
			}
			// The clock is read once every clockEvery records: the
			// reader's own deadline ends an idle batch, and a busy
			// one is at most clockEvery records late.
			if sinceClock++; builder.Len() < batchLength && (sinceClock < clockEvery || time.Now().Before(deadline)) {
				if sinceClock >= clockEvery {
					sinceClock = 0
				}
				continue
			}
		}
		flush()
		now := time.Now()
		r.purgeExited(now)
		if now.Sub(clockAt) > clockRefresh {
			// Follow wall-clock adjustments (NTP) in span timestamps.
			clock, clockAt = httptrace.NewClock(monotonicNow()), now
		}
		deadline = now.Add(batchTimeout)
		sinceClock = 0
		r.reader.SetDeadline(deadline)
	}
}

// goLibraryWrites is the gate of library-level writes: off when configured
// so, else what the kernel and the process's capabilities allow.
func goLibraryWrites(mode string, in kernelprobe.UserWriteInputs) kernelprobe.UserWriteGate {
	if mode == GoLibraryWritesOff {
		return kernelprobe.UserWriteGate{Reasons: []string{"ebpf.go_library_writes: off"}}
	}
	return kernelprobe.UserWrites(in)
}

// logGoLibraryWrites says once why library-level writes are off and what
// Go requests get instead. There is no library-level writer in this
// version: with the gate on, Go HTTP/1 still uses the network level.
func logGoLibraryWrites(logger *zap.Logger, g kernelprobe.UserWriteGate, headers bool) {
	if g.On {
		if g.Note != "" {
			logger.Info("Go library-level header writes possible", zap.String("note", g.Note))
		}
		return
	}
	fallback := "Go HTTP/1 requests get their traceparent at the network level (sockops/sk_msg); HTTP/2 and gRPC metadata are not propagated"
	if !headers {
		fallback = "ebpf.context_propagation does not include headers: Go requests get no traceparent"
	}
	fields := []zap.Field{zap.String("reason", g.Reason())}
	if g.Note != "" {
		fields = append(fields, zap.String("note", g.Note))
	}
	logger.Warn("Go library-level header writes off: "+fallback, fields...)
}

// kernelSampler maps the sampler to the tracer's.
func kernelSampler(s Sampler) httptrace.Sampler {
	ks := httptrace.Sampler{IgnoreParent: !s.ParentBased, Ratio: s.Ratio}
	switch s.Root {
	case SamplerAlwaysOff:
		ks.Root = httptrace.RootAlwaysOff
	case SamplerTraceIDRatio:
		ks.Root = httptrace.RootRatio
	default:
		ks.Root = httptrace.RootAlwaysOn
	}
	return ks
}

// ioHook maps ebpf.io_hook to the tracer's hook ("" tries every variant).
func ioHook(h string) string {
	switch h {
	case IOHookSocket:
		return httptrace.HookSocket
	case IOHookSysExit:
		return httptrace.HookSysExit
	}
	return ""
}

func monotonicNow() time.Duration {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return time.Duration(ts.Nano())
}

// criteria turns the selectors into discovery criteria.
func (d DiscoveryConfig) criteria() ([]discovery.Criteria, error) {
	out := make([]discovery.Criteria, 0, len(d.Instrument))
	for i, s := range d.Instrument {
		ranges, err := s.PortRanges()
		if err != nil {
			return nil, fmt.Errorf("discovery.instrument[%d].open_ports: %w", i, err)
		}
		c := discovery.Criteria{ExeGlob: s.ExePath, PID: s.PID}
		for _, pr := range ranges {
			c.Ports = append(c.Ports, discovery.PortRange{Lo: pr.Lo, Hi: pr.Hi})
		}
		out = append(out, c)
	}
	return out, nil
}

// kernelCounters remembers the last kernel counter values reported, so the
// telemetry counters get the increments.
type kernelCounters struct {
	trace  httptrace.Counters
	prop   ctxprop.Counters
	tcpOpt tcpopt.Counters
	ipopt  tc.Counters
	grpc   gogrpc.Counters
}

func (k *kernelCounters) report(ctx context.Context, r *tracesReceiver) {
	tb := r.telemetry
	if c, err := r.tracer.ReadCounters(); err == nil {
		add(ctx, tb.ReceiverEbpfTracingEventsLost, c.EventsLost, &k.trace.EventsLost)
		dropped := c.PipelineFull + c.ConnStateFull
		prev := k.trace.PipelineFull + k.trace.ConnStateFull
		if dropped > prev {
			tb.ReceiverEbpfTracingRequestsDropped.Add(ctx, int64(dropped-prev))
		}
		k.trace.PipelineFull, k.trace.ConnStateFull = c.PipelineFull, c.ConnStateFull
		add(ctx, tb.ReceiverEbpfTracingRequestsSampled, c.Sampled, &k.trace.Sampled)
		add(ctx, tb.ReceiverEbpfTracingRequestsUnsampled, c.Unsampled, &k.trace.Unsampled)
		add(ctx, tb.ReceiverEbpfTracingRequestsUncertainParent, c.AssocUncertain, &k.trace.AssocUncertain)
		add(ctx, tb.ReceiverEbpfTracingTLSHTTP2, c.TLSHTTP2, &k.trace.TLSHTTP2)
		add(ctx, tb.ReceiverEbpfTracingTLSGoUnresolved, c.GoTLSNoFD, &k.trace.GoTLSNoFD)
	}
	if r.tcpOpt != nil {
		if c, err := r.tcpOpt.ReadCounters(); err == nil {
			add(ctx, tb.ReceiverEbpfTracingTCPOptionsWritten, c.Written, &k.tcpOpt.Written)
			add(ctx, tb.ReceiverEbpfTracingTCPOptionsParsed, c.Parsed, &k.tcpOpt.Parsed)
			add(ctx, tb.ReceiverEbpfTracingTCPOptionsNoRoom, c.NoRoom, &k.tcpOpt.NoRoom)
		}
	}
	if r.ipopt != nil {
		if c, err := r.ipopt.ReadCounters(); err == nil {
			add(ctx, tb.ReceiverEbpfTracingIPOptionsWritten, c.Written, &k.ipopt.Written)
			add(ctx, tb.ReceiverEbpfTracingIPOptionsParsed, c.Parsed, &k.ipopt.Parsed)
			if n := c.NoRoom + c.StripFailed; n > k.ipopt.NoRoom+k.ipopt.StripFailed {
				tb.ReceiverEbpfTracingIPOptionsNoRoom.Add(ctx, int64(n-k.ipopt.NoRoom-k.ipopt.StripFailed))
			}
			k.ipopt.NoRoom, k.ipopt.StripFailed = c.NoRoom, c.StripFailed
		}
	}
	if r.grpc != nil {
		if c, err := r.grpc.ReadCounters(); err == nil {
			add(ctx, tb.ReceiverEbpfTracingEventsLost, c.EventsLost, &k.grpc.EventsLost)
		}
	}
	if r.prop == nil {
		return
	}
	if c, err := r.prop.ReadCounters(); err == nil {
		add(ctx, tb.ReceiverEbpfTracingHeadersInjected, c.Injected, &k.prop.Injected)
		add(ctx, tb.ReceiverEbpfTracingHeadersAppOwned, c.AppHeader, &k.prop.AppHeader)
		skipped := c.HeadersTooLong + c.PushFailed + c.PipelinedSkipped
		prev := k.prop.HeadersTooLong + k.prop.PushFailed + k.prop.PipelinedSkipped
		if skipped > prev {
			tb.ReceiverEbpfTracingHeadersSkipped.Add(ctx, int64(skipped-prev))
		}
		k.prop.HeadersTooLong, k.prop.PushFailed, k.prop.PipelinedSkipped = c.HeadersTooLong, c.PushFailed, c.PipelinedSkipped
	}
}

// carrierVariant names the packet-level carrier of TLS contexts in use.
func (r *tracesReceiver) carrierVariant() string {
	switch {
	case r.tcpOpt != nil:
		return "tcp_option (sockops)"
	case r.ipopt != nil:
		return "ip_option (" + r.ipopt.Backend() + ")"
	}
	return "none"
}

func add(ctx context.Context, counter metric.Int64Counter, now uint64, last *uint64) {
	if now > *last {
		counter.Add(ctx, int64(now-*last))
		*last = now
	}
}
