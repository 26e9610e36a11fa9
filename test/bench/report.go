//go:build linux

package main

import (
	"cmp"
	"fmt"
	"io"
	"maps"
	"os"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"time"
)

// targetPeakRSSMiB is the project's bound on the collector's peak RSS.
const targetPeakRSSMiB = 120

// ---- per-run measures ----

func (r runResult) collected() bool { return r.spec.kind != kindWithout }

// allSpans are the run's spans, the late ones included.
func (r runResult) allSpans() sinkTake {
	var t sinkTake
	t.add(r.spans)
	t.add(r.late)
	return t
}

func (r runResult) perReq(v float64) float64 { return v / float64(r.main.wrk.requests) }

func (r runResult) spansPerReq() float64 { return r.perReq(float64(r.allSpans().spans)) }

// bpfNs is the run time of all the collector's programs while wrk ran.
func (r runResult) bpfNs() float64 {
	var t uint64
	for _, d := range r.coll.progs {
		t += d.ns
	}
	return float64(t)
}

// collCPUPerSpan is the collector's CPU time per span that reached the sink
// by the end of the flush wait (the same window as the CPU time), in µs.
func (r runResult) collCPUPerSpan() float64 {
	if r.spans.spans == 0 {
		return 0
	}
	return float64(r.coll.cpu.Microseconds()) / float64(r.spans.spans)
}

// collSysPerSpan is the kernel (stime) part of collCPUPerSpan.
func (r runResult) collSysPerSpan() float64 {
	if r.spans.spans == 0 {
		return 0
	}
	return float64(r.coll.sys.Microseconds()) / float64(r.spans.spans)
}

func (r runResult) allocPerSpan() float64 {
	if r.spans.spans == 0 {
		return 0
	}
	return r.coll.counters.alloc / float64(r.spans.spans)
}

// tpShare is the share of the backend's requests that carried traceparent.
func (r runResult) tpShare() float64 {
	if r.backend.Requests == 0 {
		return 0
	}
	return float64(r.backend.WithTraceparent) / float64(r.backend.Requests)
}

// spanProblems checks that each traced process exported exactly its spans
// per request (wrk stops with up to -c requests in flight, which it does
// not count but the services finish: those may add up to -c per side) and
// that no span came from anywhere else, the neighbour included.
func (r runResult) spanProblems(wl *workload, conns int) []string {
	if r.spec.kind != kindWith {
		return nil
	}
	got := maps.Clone(r.allSpans().byPID)
	var out []string
	req := r.main.wrk.requests
	for _, a := range wl.traced {
		var n int64
		for _, pid := range a.spanPIDs() {
			n += int64(got[int64(pid)])
			delete(got, int64(pid))
		}
		lo, hi := int64(a.spansPerReq)*req, int64(a.spansPerReq)*(req+int64(conns))
		if n < lo || n > hi {
			out = append(out, fmt.Sprintf("%s exported %d spans for %d requests, want %d per request (%d–%d)", a.name, n, req, a.spansPerReq, lo, hi))
		}
	}
	for pid, n := range got {
		who := fmt.Sprintf("process.pid %d", pid)
		if wl.neighbour != nil && pid == int64(wl.neighbour.pid()) {
			who = "the untraced neighbour"
		} else if pid < 0 {
			who = "spans without process.pid"
		}
		out = append(out, fmt.Sprintf("%d spans from %s", n, who))
	}
	return out
}

func (r runResult) progress() string {
	s := fmt.Sprintf("round %d %-13s %8.0f req/s  p50 %-8s p99 %-8s %d requests, %.1f µs app CPU/req, other CPU %.0f%%",
		r.round, r.spec, r.main.wrk.reqPerSec, fmtDur(r.main.wrk.p50), fmtDur(r.main.wrk.p99), r.main.wrk.requests, r.main.appCPUPerReq(), 100*r.otherCPU)
	if n := r.neighbour; n != nil {
		s += fmt.Sprintf("; neighbour %.0f req/s p99 %s", n.wrk.reqPerSec, fmtDur(n.wrk.p99))
	}
	if r.collected() {
		s += fmt.Sprintf("; BPF %.0f ns/req, collector %.1f µs/span, VmHWM %.1f MiB, spans/req %.4f, lost %.0f",
			r.perReq(r.bpfNs()), r.collCPUPerSpan(), mib(r.coll.hwm), r.spansPerReq(), r.coll.counters.lost+r.coll.counters.dropped)
	}
	if r.hasStats {
		s += fmt.Sprintf("; backend %d requests, %.4f with traceparent", r.backend.Requests, r.tpShare())
	}
	return s
}

// ---- the per-workload run table ----

func printRuns(w io.Writer, o options, wl *workload, rs []runResult) {
	fmt.Fprintf(w, "\n### Runs, workload %s: %s\n\n", wl.name, wl.title)
	head := "| round | run | req/s | p50 | p99 | requests | errors | " + wl.appLabel + " CPU µs/req |"
	align := "|---:|---|---:|---:|---:|---:|---:|---:|"
	if wl.neighbour != nil {
		head += " neighbour req/s | neighbour p99 | neighbour CPU µs/req |"
		align += "---:|---:|---:|"
	}
	head += " BPF ns/req | collector CPU µs/span | VmHWM MiB | spans/req | lost |"
	align += "---:|---:|---:|---:|---:|"
	if wl.stats != "" {
		head += " backend requests | with traceparent | injected |"
		align += "---:|---:|---:|"
	}
	fmt.Fprintln(w, head+" other CPU |")
	fmt.Fprintln(w, align+"---:|")
	for _, r := range rs {
		row := fmt.Sprintf("| %d | %s | %.0f | %s | %s | %d | %d | %.2f |", r.round, r.spec, r.main.wrk.reqPerSec,
			fmtDur(r.main.wrk.p50), fmtDur(r.main.wrk.p99), r.main.wrk.requests, r.main.wrk.sockErrs+r.main.wrk.non2xx, r.main.appCPUPerReq())
		if n := r.neighbour; n != nil {
			row += fmt.Sprintf(" %.0f | %s | %.2f |", n.wrk.reqPerSec, fmtDur(n.wrk.p99), n.appCPUPerReq())
		}
		if r.collected() {
			c := r.coll.counters
			row += fmt.Sprintf(" %.0f | %.2f | %.1f | %.4f | %.0f |", r.perReq(r.bpfNs()), r.collCPUPerSpan(), mib(r.coll.hwm), r.spansPerReq(), c.lost+c.dropped)
		} else {
			row += " – | – | – | – | – |"
		}
		if wl.stats != "" {
			row += fmt.Sprintf(" %d | %.4f |", r.backend.Requests, r.tpShare())
			if r.collected() {
				row += fmt.Sprintf(" %.0f |", r.coll.counters.injected)
			} else {
				row += " – |"
			}
		}
		fmt.Fprintf(w, "%s %.0f%% |\n", row, 100*r.otherCPU)
	}
}

// ---- the cost budget ----

// result is one workload's runs.
type result struct {
	wl *workload
	rs []runResult
}

func (res result) runs(kind runKind, label string) []runResult {
	var out []runResult
	for _, r := range res.rs {
		if r.spec.kind == kind && (kind == kindWithout || r.spec.label() == label) {
			out = append(out, r)
		}
	}
	return out
}

func med(rs []runResult, f func(runResult) float64) float64 {
	v := make([]float64, len(rs))
	for i, r := range rs {
		v[i] = f(r)
	}
	return median(v)
}

func ratio(a, b float64) string {
	if a == 0 || b == 0 {
		return "–"
	}
	return fmt.Sprintf("×%.3f", a/b)
}

var (
	mainRPS  = func(r runResult) float64 { return r.main.wrk.reqPerSec }
	mainP99  = func(r runResult) float64 { return float64(r.main.wrk.p99) }
	neighRPS = func(r runResult) float64 { return r.neighbour.wrk.reqPerSec }
	neighP99 = func(r runResult) float64 { return float64(r.neighbour.wrk.p99) }
)

func printHeader(w io.Writer, o options) {
	host, _ := os.Hostname()
	var uts syscall.Utsname
	_ = syscall.Uname(&uts)
	fmt.Fprintf(w, "\n## ebpf_tracing cost budget\n\n")
	fmt.Fprintf(w, "%s, Linux %s, %d CPUs, %s; `wrk -t%d -c%d -d%s --latency` per service; rounds: %d, each %s; batch → otlp_http (%s) to a sink in the bench; ebpf: %s\n",
		host, utsString(uts.Release[:]), runtime.NumCPU(), runtime.Version(), o.threads, o.connections, o.duration, o.rounds,
		runOrder(o), o.compression, ebpfDesc(o.ebpf))
	for _, v := range o.variants {
		fmt.Fprintf(w, "\n- variant %s", v.desc())
	}
	if len(o.variants) > 0 {
		fmt.Fprintln(w)
	}
}

func runOrder(o options) string {
	var s []string
	for _, sp := range roundSpecs(1, o.modes, o.variantsOrPlain(), o.floor) {
		s = append(s, sp.String())
	}
	return strings.Join(s, ", ") + " (even rounds backwards)"
}

// budgetLabels are the budget's rows per workload: each mode, times each
// variant.
func budgetLabels(o options) []string {
	var out []string
	for _, m := range o.modes {
		for _, v := range o.variantsOrPlain() {
			out = append(out, runSpec{mode: m, variant: v}.label())
		}
	}
	return out
}

// printBudget prints the cost budget: one row per workload and mode, and the
// BPF programs' share.
func printBudget(w io.Writer, o options, results []result) {
	printHeader(w, o)
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| workload | mode | req/s vs without | p99 vs without | req/s vs floor | p99 vs floor | app CPU µs/req (Δ vs without) | BPF ns/req | ring events/req | wakeups/req | collector CPU µs/span (sys) | alloc B/span | VmHWM MiB | lost | spans/req |")
	fmt.Fprintln(w, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
	var notes []string
	for _, res := range results {
		wl := res.wl
		base := res.runs(kindWithout, "")
		for _, mode := range budgetLabels(o) {
			fl, wi := res.runs(kindFloor, mode), res.runs(kindWith, mode)
			if len(wi) == 0 {
				continue
			}
			rpsB, p99B := med(wi, mainRPS), med(wi, mainP99)
			rpsF, p99F := med(fl, mainRPS), med(fl, mainP99)
			appB := med(wi, func(r runResult) float64 { return r.main.appCPUPerReq() })
			appA := med(base, func(r runResult) float64 { return r.main.appCPUPerReq() })
			wakeups := "n/a"
			if !slices.ContainsFunc(wi, func(r runResult) bool { return !r.coll.counters.hasWakeups }) {
				wakeups = fmt.Sprintf("%.3f", med(wi, func(r runResult) float64 { return r.perReq(r.coll.counters.wakeups) }))
			}
			alloc := "n/a"
			if !slices.ContainsFunc(wi, func(r runResult) bool { return !r.coll.counters.hasAlloc }) {
				alloc = fmt.Sprintf("%.0f", med(wi, runResult.allocPerSpan))
			}
			var hwm int64
			var lost float64
			spansOK := true
			for _, r := range wi {
				hwm = max(hwm, r.coll.hwm)
				lost += r.coll.counters.lost + r.coll.counters.dropped
				if p := r.spanProblems(wl, o.connections); len(p) > 0 {
					spansOK = false
					notes = append(notes, fmt.Sprintf("%s round %d %s: %s", wl.name, r.round, r.spec, strings.Join(p, "; ")))
				}
			}
			label := wl.name
			if wl.neighbour != nil {
				label += ": traced server"
			}
			fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s | %.2f (%+.2f) | %.0f | %.3f | %s | %.2f (%.2f) | %s | %.1f | %.0f | %.4f %s |\n",
				label, mode, ratio(rpsB, med(base, mainRPS)), ratio(p99B, med(base, mainP99)), ratio(rpsB, rpsF), ratio(p99B, p99F),
				appB, appB-appA,
				med(wi, func(r runResult) float64 { return r.perReq(r.bpfNs()) }),
				med(wi, func(r runResult) float64 { return r.perReq(r.coll.counters.read) }),
				wakeups, med(wi, runResult.collCPUPerSpan), med(wi, runResult.collSysPerSpan), alloc, mib(hwm), lost,
				med(wi, runResult.spansPerReq), wantSpansDesc(wl, spansOK))
			if wl.neighbour != nil {
				nAppB := med(wi, func(r runResult) float64 { return r.neighbour.appCPUPerReq() })
				nAppA := med(base, func(r runResult) float64 { return r.neighbour.appCPUPerReq() })
				fmt.Fprintf(w, "| %s: untraced neighbour | %s | %s | %s | %s | %s | %.2f (%+.2f) | – | – | – | – | – | – | – | %.4f (want 0) |\n",
					wl.name, mode, ratio(med(wi, neighRPS), med(base, neighRPS)), ratio(med(wi, neighP99), med(base, neighP99)),
					ratio(med(wi, neighRPS), med(fl, neighRPS)), ratio(med(wi, neighP99), med(fl, neighP99)),
					nAppB, nAppB-nAppA,
					med(wi, func(r runResult) float64 {
						return float64(r.allSpans().byPID[int64(wl.neighbour.pid())]) / float64(r.neighbour.wrk.requests)
					}))
			}
		}
	}
	printPrograms(w, o, results)
	printChecks(w, o, results)
	notes = append(notes, runNotes(o, results)...)
	fmt.Fprintln(w)
	for _, n := range notes {
		fmt.Fprintln(w, "- "+n)
	}
	printLegend(w, o)
}

// wantSpansDesc names the spans each traced process must export per request
// ("2+1": the proxy 2, the backend 1), and whether every with run did.
func wantSpansDesc(wl *workload, ok bool) string {
	var parts []string
	for _, a := range wl.traced {
		parts = append(parts, fmt.Sprint(a.spansPerReq))
	}
	verdict := "ok"
	if !ok {
		verdict = "MISS"
	}
	return fmt.Sprintf("(want %s) %s", strings.Join(parts, "+"), verdict)
}

// printPrograms prints, per workload and mode, each BPF program's runs and
// run time per request (with runs), and its run time in the floor runs.
func printPrograms(w io.Writer, o options, results []result) {
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| workload | mode | BPF program | type | runs/req | ns/run | ns/req | floor runs/req | floor ns/req |")
	fmt.Fprintln(w, "|---|---|---|---|---:|---:|---:|---:|---:|")
	var idleLines []string
	for _, res := range results {
		for _, mode := range budgetLabels(o) {
			fl, wi := res.runs(kindFloor, mode), res.runs(kindWith, mode)
			keys := map[string]progDelta{}
			for _, r := range append(slices.Clone(wi), fl...) {
				for k, d := range r.coll.progs {
					keys[k] = progDelta{name: d.name, kind: d.kind}
				}
			}
			type row struct {
				d                           progDelta
				runs, nsRun, ns, fRuns, fNs float64
			}
			var rows []row
			for k, d := range keys {
				perReq := func(rs []runResult, f func(progDelta) uint64) float64 {
					return med(rs, func(r runResult) float64 { return r.perReq(float64(f(r.coll.progs[k]))) })
				}
				var ns, runs uint64
				for _, r := range wi {
					ns += r.coll.progs[k].ns
					runs += r.coll.progs[k].runs
				}
				nsRun := 0.0
				if runs > 0 {
					nsRun = float64(ns) / float64(runs)
				}
				rows = append(rows, row{d: d,
					runs: perReq(wi, func(d progDelta) uint64 { return d.runs }), ns: perReq(wi, func(d progDelta) uint64 { return d.ns }), nsRun: nsRun,
					fRuns: perReq(fl, func(d progDelta) uint64 { return d.runs }), fNs: perReq(fl, func(d progDelta) uint64 { return d.ns })})
			}
			// Programs that never ran (e.g. the variant not chosen, the
			// per-process attachments of a mode's other branch) go to one
			// line instead.
			var idle []string
			rows = slices.DeleteFunc(rows, func(x row) bool {
				ran := slices.ContainsFunc(append(slices.Clone(wi), fl...), func(r runResult) bool { return r.coll.progs[x.d.name+" "+x.d.kind].runs > 0 })
				if !ran {
					idle = append(idle, x.d.name)
				}
				return !ran
			})
			if len(idle) > 0 {
				slices.Sort(idle)
				idleLines = append(idleLines, fmt.Sprintf("- %s, %s: loaded, no run while wrk ran: %s", res.wl.name, mode, strings.Join(idle, ", ")))
			}
			slices.SortFunc(rows, func(a, b row) int {
				return cmp.Or(cmp.Compare(b.ns, a.ns), cmp.Compare(a.d.name, b.d.name))
			})
			for _, x := range rows {
				floorCols := "– | –"
				if len(fl) > 0 {
					floorCols = fmt.Sprintf("%.2f | %.0f", x.fRuns, x.fNs)
				}
				fmt.Fprintf(w, "| %s | %s | %s | %s | %.2f | %.0f | %.0f | %s |\n", res.wl.name, mode, x.d.name, x.d.kind, x.runs, x.nsRun, x.ns, floorCols)
			}
		}
	}
	if len(idleLines) > 0 {
		fmt.Fprintln(w)
		fmt.Fprintln(w, strings.Join(idleLines, "\n"))
	}
}

// printChecks compares the budget with the project's targets.
func printChecks(w io.Writer, o options, results []result) {
	fmt.Fprintln(w)
	for _, res := range results {
		wl := res.wl
		base := res.runs(kindWithout, "")
		for _, mode := range budgetLabels(o) {
			wi := res.runs(kindWith, mode)
			if len(wi) == 0 {
				continue
			}
			var checks []string
			if wl.targetTput > 0 {
				t := med(wi, mainRPS) / med(base, mainRPS)
				checks = append(checks, fmt.Sprintf("throughput ×%.3f (≥ %.2f) %s", t, wl.targetTput, verdict(t >= wl.targetTput)))
			}
			if wl.targetP99 > 0 {
				p := med(wi, mainP99) / med(base, mainP99)
				checks = append(checks, fmt.Sprintf("p99 ×%.3f (≤ %.2f) %s", p, wl.targetP99, verdict(p <= wl.targetP99)))
			}
			var hwm int64
			var lost float64
			spansOK := true
			for _, r := range wi {
				hwm = max(hwm, r.coll.hwm)
				lost += r.coll.counters.lost + r.coll.counters.dropped
				spansOK = spansOK && len(r.spanProblems(wl, o.connections)) == 0
			}
			checks = append(checks,
				fmt.Sprintf("peak RSS %.1f MiB (≤ %d) %s", mib(hwm), targetPeakRSSMiB, verdict(mib(hwm) <= targetPeakRSSMiB)),
				fmt.Sprintf("lost %.0f (0) %s", lost, verdict(lost == 0)),
				fmt.Sprintf("spans exact %s", verdict(spansOK)))
			if wl.stats != "" {
				share := med(wi, runResult.tpShare)
				want, ok := "0", share == 0
				if m := wi[0].spec.mode; m == "all" || m == "headers" {
					want, ok = "1", share >= 0.999
				}
				checks = append(checks, fmt.Sprintf("backend requests with traceparent %.4f (%s) %s", share, want, verdict(ok)))
			}
			fmt.Fprintf(w, "- %s, %s: %s\n", wl.name, mode, strings.Join(checks, "; "))
		}
	}
}

// runNotes lists what makes runs suspect.
func runNotes(o options, results []result) []string {
	var notes []string
	floorHonoured := true
	for _, res := range results {
		wl := res.wl
		for _, r := range res.rs {
			at := fmt.Sprintf("%s round %d %s", wl.name, r.round, r.spec)
			if r.spec.kind == kindFloor && r.allSpans().spans > 0 {
				floorHonoured = false
			}
			if r.late.spans > 0 {
				notes = append(notes, fmt.Sprintf("%s: %d spans reached the sink only during collector shutdown (after the %s flush wait)", at, r.late.spans, o.flushWait))
			}
			if n := r.spans.errs + r.late.errs; n > 0 {
				notes = append(notes, fmt.Sprintf("%s: the sink rejected or could not decode %d export requests", at, n))
			}
			if r.coll.counters.failed > 0 {
				notes = append(notes, fmt.Sprintf("%s: the exporter failed to send or enqueue %.0f spans", at, r.coll.counters.failed))
			}
			if len(r.others) > 0 {
				notes = append(notes, fmt.Sprintf("%s: other otelcol-ebpf processes were running (pids %v): not a clean measurement", at, r.others))
			}
			if r.otherCPU > 0.10 {
				notes = append(notes, fmt.Sprintf("%s: %.0f%% of the machine was busy outside the workload, wrk, the collector and the bench: the machine was not quiet", at, 100*r.otherCPU))
			}
			for _, l := range []*load{&r.main, r.neighbour} {
				if l != nil && l.wrk.sockErrs+l.wrk.non2xx > 0 {
					notes = append(notes, fmt.Sprintf("%s: wrk reported %d socket errors and %d non-2xx responses", at, l.wrk.sockErrs, l.wrk.non2xx))
				}
			}
			if r.spec.kind == kindWith {
				if c := r.coll.counters; c.emitted != float64(r.allSpans().spans) {
					notes = append(notes, fmt.Sprintf("%s: the receiver read %.0f events and emitted %.0f spans; the sink got %d (%d late)", at, c.read, c.emitted, r.allSpans().spans, r.late.spans))
				}
			}
			if r.hasStats {
				// wrk stops with up to -c requests in flight: those reached
				// the backend but are not in wrk's count.
				if d := r.backend.Requests - r.main.wrk.requests; d < 0 || d > int64(o.connections) {
					notes = append(notes, fmt.Sprintf("%s: the backend served %d requests, wrk completed %d through the proxy", at, r.backend.Requests, r.main.wrk.requests))
				}
				if r.spec.kind == kindWithout && r.backend.WithTraceparent > 0 {
					notes = append(notes, fmt.Sprintf("%s: %d backend requests carried a traceparent with no collector of this bench running (another collector injecting?)", at, r.backend.WithTraceparent))
				}
			}
		}
	}
	if o.floor && !floorHonoured {
		notes = append(notes, "floor runs exported spans: this collector ignores "+floorEnv+", so its floor runs are normal runs and the \"vs floor\" columns compare two normal runs")
	}
	return notes
}

func printLegend(w io.Writer, o options) {
	fmt.Fprintf(w, `
Columns: medians over the rounds; ratios are of medians (with / without, with / floor) in this invocation. app CPU is utime+stime of the workload's processes during wrk over the requests wrk completed (BPF run time on their syscalls included); BPF ns/req is the run time of every BPF program the collector holds (bpf_stats, all processes on the machine: wrk's syscalls and the neighbour's run the same hooks) while wrk ran, over the traced front's requests; runs/req of a uprobe program are uprobe hits per request. ring events/req is receiver_ebpf_tracing_events_read; wakeups/req needs a receiver counter named *wakeup* (n/a: none exported). collector CPU µs/span (utime+stime, stime in parentheses) and alloc B/span (otelcol_process_runtime_total_alloc_bytes, Go heap bytes allocated) run from just before wrk to the end of the %s flush wait, over the spans the sink got in that window; VmHWM is the collector's peak RSS (max over the rounds); lost sums receiver_ebpf_tracing_events_lost and receiver_ebpf_tracing_requests_dropped. spans/req counts every span the sink got for the run; "want 2+1" means 2 per request from the first traced process and 1 from the second, checked per process (process.pid) in every round, with up to -c requests wrk left in flight allowed. The floor runs start the collector with %s: the loaders make every program return at once.
`, o.flushWait, floorEnv)
}

// ---- formatting ----

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

func verdict(ok bool) string {
	if ok {
		return "PASS"
	}
	return "MISS"
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
