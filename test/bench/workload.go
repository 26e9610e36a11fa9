//go:build linux

package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// workloadNames are the -workload values, in run order.
var workloadNames = []string{"server", "server-https", "https-python", "https-nginx-static", "https-nginx", "proxy", "proxy-new", "neighbour", "neighbour-pinned", "grpc"}

// defaultWorkloads are what -workload all runs: every workload but the
// nginx one that https-nginx contains (its backend).
var defaultWorkloads = []string{"server", "server-https", "https-python", "https-nginx", "proxy", "proxy-new", "neighbour", "neighbour-pinned", "grpc"}

// workload is one client → service(s) setup the bench measures.
type workload struct {
	name     string // -workload value
	title    string // report heading
	appLabel string // whose CPU the app CPU column counts

	// Targets from the project's goals, checked per mode; 0: none.
	targetTput float64 // throughput ratio WITH/WITHOUT, at least
	targetP99  float64 // p99 ratio WITH/WITHOUT, at most

	// Set by start.
	traced    []*app // selected by the collector; wrk talks to the first
	neighbour *app   // loaded by its own wrk, not selected; nil when none
	stats     string // the backend's /stats URL; "" when there is none
	closeIdle string // the keep-alive proxy's POST /close-idle URL; "" when none

	// pinned: the traced side (its server, its wrk, the collector and this
	// process with its sink) runs on CPU 0, the neighbour and its wrk on
	// CPU 1, so the neighbour's row shows what its own hooks cost it, not
	// the CPU the traced side's work takes from it.
	pinned bool
	// path is what wrk requests; "/hello" when empty.
	path string
	// https: wrk talks HTTPS to the front.
	https bool
	// carried: the front makes a CLIENT request over TLS per request, so
	// the report counts the backend's SERVER spans whose parent is one of
	// the front's CLIENT spans (the packet-level carrier's work).
	carried bool
}

// pythonPath is Debian's python3 (its ssl module links the system's
// libssl.so.3), not whatever python3 is first on PATH.
const pythonPath = "/usr/bin/python3"

// CPU lists (taskset -c) of the pinned workload's two sides.
const (
	tracedCPUs    = "0"
	neighbourCPUs = "1"
)

// tracedSide and neighbourSide are the CPU lists a process of the workload
// runs on; "" when it is not pinned.
func (wl *workload) tracedSide() string {
	if wl.pinned {
		return tracedCPUs
	}
	return ""
}

func (wl *workload) neighbourSide() string {
	if wl.pinned {
		return neighbourCPUs
	}
	return ""
}

// app is one process of a workload.
type app struct {
	*proc
	port int
	// workers are the processes that serve for it (nginx's worker: its
	// master only forks and waits); its spans come from these and its CPU
	// is theirs too. Empty when the process serves itself.
	workers []int
	// spansPerReq is how many spans this process must export per request
	// wrk completes on the workload's front (one per side of each traced
	// request it takes part in); 0 for the neighbour.
	spansPerReq int
}

// newWorkload describes the workload name (one of workloadNames).
func newWorkload(name string) *workload {
	switch name {
	case "server":
		return &workload{name: name, title: "wrk → Go net/http hello server", appLabel: "server",
			targetTput: 0.95, targetP99: 1.10}
	case "server-https":
		return &workload{name: name, title: "wrk → Go net/http hello server over HTTPS (crypto/tls, HTTP/1.1)", appLabel: "server",
			targetTput: 0.95, targetP99: 1.10, https: true}
	case "https-python":
		return &workload{name: name, title: "wrk → Python http.server over HTTPS (ssl module, OpenSSL; a thread per connection, keep-alive)", appLabel: "server",
			targetTput: 0.85, targetP99: 1.15, https: true}
	case "https-nginx-static":
		return &workload{name: name, title: "wrk → nginx over HTTPS (one worker, `return 200`)", appLabel: "nginx worker",
			targetTput: 0.85, targetP99: 1.15, https: true}
	case "https-nginx":
		return &workload{name: name, title: "wrk → nginx over HTTPS (one worker) → nginx over HTTPS (one worker, `return 200`), a keep-alive HTTPS upstream pool",
			appLabel: "nginx workers", targetTput: 0.85, targetP99: 1.15, https: true, carried: true}
	case "proxy":
		return &workload{name: name, title: "wrk → Go net/http proxy (keep-alive) → Go hello backend", appLabel: "proxy+backend",
			targetTput: 0.90, targetP99: 1.15}
	case "proxy-new":
		return &workload{name: name, title: "wrk → Go net/http proxy (new connection per request) → Go hello backend", appLabel: "proxy+backend",
			targetTput: 0.90, targetP99: 1.15}
	case "neighbour":
		return &workload{name: name, title: "wrk → traced Go hello server, and a second wrk → untraced Go hello neighbour", appLabel: "traced server"}
	case "grpc":
		return &workload{name: name, title: "wrk → Go HTTP front making one unary gRPC call per request → Go gRPC server (grpc v1.85.0, test/e2e/apps/gogrpc)",
			appLabel: "front+server", targetTput: 0.85, path: "/call?service=ok.Service"}
	case "neighbour-pinned":
		return &workload{name: name, title: "neighbour with the traced side (server, wrk, collector, sink) on CPU " + tracedCPUs +
			" and the untraced neighbour with its wrk on CPU " + neighbourCPUs, appLabel: "traced server", pinned: true}
	}
	panic("unknown workload " + name)
}

// portsNeeded is how many free ports start takes.
func (wl *workload) portsNeeded() int {
	switch wl.name {
	case "server", "server-https", "https-python", "https-nginx-static":
		return 1
	}
	return 2
}

// start starts the workload's processes (from the binaries built by run) on
// the given free ports.
func (wl *workload) start(ctx context.Context, e env, ports []int) error {
	bins := e.bins
	// Each command takes [flags] <port> [more ports].
	startApp := func(name string, port, spans int, bin string, flags []string, more ...string) (*app, error) {
		args := append(append(flags, strconv.Itoa(port)), more...)
		cpus := wl.tracedSide()
		if spans == 0 {
			cpus = wl.neighbourSide()
		}
		p, err := startPinned(ctx, cpus, name, 0, nil, bin, args...)
		if err != nil {
			return nil, err
		}
		a := &app{proc: p, port: port, spansPerReq: spans}
		if spans > 0 {
			wl.traced = append(wl.traced, a)
		} else {
			wl.neighbour = a
		}
		return a, p.waitOutput(ctx, "ready\n", 10*time.Second)
	}
	switch wl.name {
	case "server":
		_, err := startApp("server", ports[0], 1, bins["server"], nil)
		return err
	case "server-https":
		_, err := startApp("server", ports[0], 1, bins["server"], []string{"-tls"})
		return err
	case "https-python":
		_, err := startApp("server", ports[0], 1, pythonPath, []string{"-u", bins["pyhttps"]}, e.cert, e.key)
		return err
	case "https-nginx-static":
		return wl.startNginx(ctx, e, "nginx", ports[0], 0, 1)
	case "https-nginx":
		frontPort, backendPort := ports[0], ports[1]
		// The backend first: the front is ready once a request through it
		// is answered. The front's SERVER and CLIENT spans, the backend's
		// SERVER span.
		if err := wl.startNginx(ctx, e, "nginx-backend", backendPort, 0, 1); err != nil {
			return err
		}
		if err := wl.startNginx(ctx, e, "nginx-front", frontPort, backendPort, 2); err != nil {
			return err
		}
		// wrk talks to the front: first in traced.
		wl.traced[0], wl.traced[1] = wl.traced[1], wl.traced[0]
		return nil
	case "proxy", "proxy-new":
		proxyPort, backendPort := ports[0], ports[1]
		var flags []string
		if wl.name == "proxy-new" {
			flags = []string{"-new-conn"}
		} else {
			wl.closeIdle = fmt.Sprintf("http://127.0.0.1:%d/close-idle", proxyPort)
		}
		// The proxy's SERVER and CLIENT spans.
		if _, err := startApp("proxy", proxyPort, 2, bins["proxy"], flags, strconv.Itoa(backendPort)); err != nil {
			return err
		}
		wl.stats = fmt.Sprintf("http://127.0.0.1:%d/stats", backendPort)
		_, err := startApp("backend", backendPort, 1, bins["server"], []string{"-stats"})
		return err
	case "grpc":
		frontPort, serverPort := ports[0], ports[1]
		// The front's HTTP SERVER span and its gRPC CLIENT span.
		if _, err := startApp("front", frontPort, 2, bins["gogrpc"], []string{"client"}, fmt.Sprintf("127.0.0.1:%d", serverPort)); err != nil {
			return err
		}
		_, err := startApp("grpc-server", serverPort, 1, bins["gogrpc"], []string{"server"})
		return err
	case "neighbour", "neighbour-pinned":
		if _, err := startApp("server", ports[0], 1, bins["server"], nil); err != nil {
			return err
		}
		_, err := startApp("neighbour", ports[1], 0, bins["server"], nil)
		return err
	}
	return fmt.Errorf("unknown workload %q", wl.name)
}

// startNginx starts one nginx of the workload (see startNginx) as a traced
// process exporting spans spans per request.
func (wl *workload) startNginx(ctx context.Context, e env, name string, port, upstreamPort, spans int) error {
	p, worker, err := startNginx(ctx, e.tmp, name, wl.tracedSide(), e.cert, e.key, port, upstreamPort)
	if err != nil {
		return err
	}
	wl.traced = append(wl.traced, &app{proc: p, port: port, workers: []int{worker}, spansPerReq: spans})
	return nil
}

// spanPIDs are the process.pid values of a's spans.
func (a *app) spanPIDs() []int {
	if len(a.workers) > 0 {
		return a.workers
	}
	return []int{a.pid()}
}

// selected is how many processes the collector selects for a: every
// process holding its listening socket (nginx's master and worker).
func (a *app) selected() int { return 1 + len(a.workers) }

// selectedProcesses is how many processes the collector must report
// selected.
func (wl *workload) selectedProcesses() int {
	n := 0
	for _, a := range wl.traced {
		n += a.selected()
	}
	return n
}

func (wl *workload) apps() []*app {
	if wl.neighbour == nil {
		return wl.traced
	}
	return append(wl.traced[:len(wl.traced):len(wl.traced)], wl.neighbour)
}

func (wl *workload) stop() {
	for _, a := range wl.apps() {
		a.kill()
	}
}

func (wl *workload) alive() error {
	for _, a := range wl.apps() {
		if err := a.alive(); err != nil {
			return err
		}
	}
	return nil
}

// url is what the main wrk requests: the first traced process.
func (wl *workload) url() string {
	path := wl.path
	if path == "" {
		path = "/hello"
	}
	scheme := "http"
	if wl.https {
		scheme = "https"
	}
	return fmt.Sprintf("%s://127.0.0.1:%d%s", scheme, wl.traced[0].port, path)
}

// ports are the ports the collector selects (discovery.instrument
// open_ports): the traced processes', never the neighbour's.
func (wl *workload) ports() []int {
	out := make([]int, len(wl.traced))
	for i, a := range wl.traced {
		out[i] = a.port
	}
	return out
}

// tracedPIDs are the traced processes whose CPU time the app CPU column
// counts, nginx's workers included.
func (wl *workload) tracedPIDs() []int {
	var out []int
	for _, a := range wl.traced {
		out = append(out, a.pid())
		out = append(out, a.workers...)
	}
	return out
}

func (wl *workload) desc() string {
	var parts []string
	for _, a := range wl.apps() {
		s := fmt.Sprintf("%s pid %d port %d", a.name, a.pid(), a.port)
		if len(a.workers) > 0 {
			s += fmt.Sprintf(" (workers %v)", a.workers)
		}
		parts = append(parts, s)
	}
	return strings.Join(parts, ", ")
}

// benchClient opens a new connection per call, so no connection of the
// bench to a workload process stays open across collectors.
var benchClient = &http.Client{Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}, Timeout: 5 * time.Second}

// backendStats is a proxy workload backend's GET /stats.
type backendStats struct {
	Requests        int64 `json:"requests"`
	WithTraceparent int64 `json:"with_traceparent"`
}

// getStats reads the backend's counters. Called only while no collector of
// this bench runs, so these requests are never traced.
func getStats(ctx context.Context, url string) (backendStats, error) {
	var st backendStats
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return st, err
	}
	resp, err := benchClient.Do(req)
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

// closeIdleConns makes the keep-alive proxy drop its idle backend
// connections, so the next run opens its own (see test/bench/proxy). Called
// only while no collector of this bench runs.
func (wl *workload) closeIdleConns(ctx context.Context) error {
	if wl.closeIdle == "" {
		return nil
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, wl.closeIdle, nil)
	if err != nil {
		return err
	}
	resp, err := benchClient.Do(req)
	if err != nil {
		return fmt.Errorf("proxy close-idle: %w", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		return fmt.Errorf("proxy close-idle: %s", resp.Status)
	}
	return nil
}
