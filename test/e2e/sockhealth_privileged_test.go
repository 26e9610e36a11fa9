//go:build linux && privileged

package e2e

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/collector/pdata/ptrace"
)

// Socket health under context propagation. The kernel puts the connections
// of traced processes in the ctxprop sockhash; on kernels with the sockmap
// receive regression (Linux commit 929e30f93125, seen on 6.18) a socket in a
// sockhash without an SK_SKB verdict program answers FIONREAD with 0 while
// epoll reports it readable. ctxprop attaches a pass-through SK_SKB
// verdict to the sockhash, which keeps FIONREAD right; without it these
// tests fail on 6.18.44 (FIONREAD 0 on 300 of 300 responses). They run
// real clients against a backend with the collector and check what they
// saw.

// rawBackend is an HTTP/1.1 server on raw TCP: GET /resp?size=n answers the
// pattern of n bytes in one write; with X-Half-Close it first reads until the
// client's FIN, then answers and closes. It counts requests and those that
// carried a traceparent.
type rawBackend struct {
	ln          net.Listener
	requests    atomic.Int64
	traceparent atomic.Int64

	mu    sync.Mutex
	conns map[net.Conn]bool
	wg    sync.WaitGroup
}

func startRawBackend(t *testing.T) *rawBackend {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	b := &rawBackend{ln: ln, conns: map[net.Conn]bool{}}
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			b.mu.Lock()
			b.conns[c] = true
			b.mu.Unlock()
			b.wg.Add(1)
			go func() {
				defer b.wg.Done()
				b.serve(c)
				b.mu.Lock()
				delete(b.conns, c)
				b.mu.Unlock()
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		b.mu.Lock()
		for c := range b.conns {
			c.Close()
		}
		b.mu.Unlock()
		b.wg.Wait()
	})
	return b
}

func (b *rawBackend) Port() int { return b.ln.Addr().(*net.TCPAddr).Port }

// reset zeroes the counters.
func (b *rawBackend) reset() {
	b.requests.Store(0)
	b.traceparent.Store(0)
}

func (b *rawBackend) serve(c net.Conn) {
	defer c.Close()
	r := bufio.NewReader(c)
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		var target string
		if f := strings.Fields(line); len(f) == 3 {
			target = f[1]
		}
		halfClose, closeAfter, tp := false, false, false
		for {
			h, err := r.ReadString('\n')
			if err != nil {
				return
			}
			h = strings.TrimRight(h, "\r\n")
			if h == "" {
				break
			}
			name, value, _ := strings.Cut(h, ":")
			switch strings.ToLower(strings.TrimSpace(name)) {
			case "traceparent":
				tp = true
			case "x-half-close":
				halfClose = true
			case "connection":
				closeAfter = strings.EqualFold(strings.TrimSpace(value), "close")
			}
		}
		b.requests.Add(1)
		if tp {
			b.traceparent.Add(1)
		}
		size := 100
		if u, err := url.Parse(target); err == nil {
			if n, err := strconv.Atoi(u.Query().Get("size")); err == nil && n >= 0 {
				size = n
			}
		}
		if halfClose {
			if _, err := io.Copy(io.Discard, r); err != nil {
				return
			}
			closeAfter = true
		}
		resp := fmt.Appendf(nil, "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n", size)
		if _, err := c.Write(append(resp, Pattern(size)...)); err != nil || closeAfter {
			return
		}
	}
}

// startSockApp starts a test app of apps/sockhealth (name is what the test
// logs) from argv, with OTEL_SERVICE_NAME service, and waits for "ready".
func startSockApp(t *testing.T, service string, port int, argv ...string) *App {
	t.Helper()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = filepath.Join(RepoRoot(t), "test", "e2e", "apps", "sockhealth")
	cmd.Env = append(cmd.Environ(), "OTEL_SERVICE_NAME="+service, "PORT="+strconv.Itoa(port))
	app := &App{Lang: Lang(service), Service: service, Port: port, cmd: cmd, done: make(chan struct{}), out: &syncBuffer{}}
	ready := make(chan struct{})
	cmd.Stdout = &readyWriter{buf: app.out, ready: ready}
	cmd.Stderr = app.out
	startProcessGroup(t, cmd, nil, app.done, func() string { return fmt.Sprintf("%s (port %d)", service, port) }, app.out)
	app.PID = cmd.Process.Pid
	select {
	case <-ready:
	case <-app.done:
		t.Fatalf("%s exited before it was ready: %v\n%s", service, cmd.ProcessState, app.out)
	case <-time.After(20 * time.Second):
		t.Fatalf("%s not ready after 20s:\n%s", service, app.out)
	}
	return app
}

// probeResult is probe.py's /run answer.
type probeResult struct {
	FIONREAD      []int    `json:"fionread"`
	Peek          []int    `json:"peek"`
	EpollTimeouts int      `json:"epoll_timeouts"`
	OK            int      `json:"ok"`
	Errors        []string `json:"errors"`
	MaxMS         float64  `json:"max_ms"`
}

func runProbe(t *testing.T, probe *App, backend *rawBackend, mode string, n, size int) probeResult {
	t.Helper()
	client := &http.Client{Timeout: 90 * time.Second}
	resp, err := client.Get(probe.URL(fmt.Sprintf("/run?port=%d&n=%d&size=%d&mode=%s", backend.Port(), n, size, mode)))
	require.NoError(t, err)
	defer resp.Body.Close()
	var res probeResult
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&res))
	return res
}

// checkProbe asserts that every response was read whole, no epoll wait
// timed out, and FIONREAD was the bytes a peek returned, and more than 0.
func checkProbe(t *testing.T, what string, res probeResult, n int) {
	t.Helper()
	assert.Empty(t, res.Errors, "%s: errors", what)
	assert.Equal(t, n, res.OK, "%s: bodies read whole", what)
	assert.Zero(t, res.EpollTimeouts, "%s: epoll waits that timed out (%v each)", what, 2*time.Second)
	zeros, differ := 0, 0
	for i := range res.FIONREAD {
		if res.FIONREAD[i] <= 0 {
			zeros++
		}
		if i < len(res.Peek) && res.FIONREAD[i] != res.Peek[i] {
			differ++
		}
	}
	assert.Len(t, res.FIONREAD, n, "%s: FIONREAD samples", what)
	assert.Zero(t, zeros, "%s: FIONREAD of 0 with EPOLLIN reported (of %d)", what, len(res.FIONREAD))
	assert.Zero(t, differ, "%s: FIONREAD differing from the bytes a peek read (of %d)", what, len(res.FIONREAD))
}

// TestSockHealthFIONREAD runs an epoll+FIONREAD keep-alive client as a
// traced process: 300 responses on one connection, each must be announced
// by epoll, sized by FIONREAD exactly and read whole; then 1 MiB responses
// and half-closed connections.
func TestSockHealthFIONREAD(t *testing.T) {
	backend := startRawBackend(t)
	port := FreePort(t)
	probe := startSockApp(t, "sockprobe", port, "python3", "-u", "probe.py", strconv.Itoa(port))

	// Without the collector: the probe itself must pass.
	checkProbe(t, "baseline keep-alive", runProbe(t, probe, backend, "keepalive", 300, 200), 300)
	backend.reset()

	sink := StartSink(t)
	StartCollector(t, CollectorConfig{
		Instrument:   []Selector{PortsSelector(port)},
		SinkEndpoint: sink.Endpoint(),
		EBPF:         propagationAll,
	})
	waitTraced(t, sink, probe)

	res := runProbe(t, probe, backend, "keepalive", 300, 200)
	checkProbe(t, "keep-alive", res, 300)
	t.Logf("keep-alive: FIONREAD %v…, slowest response %.1f ms", res.FIONREAD[:min(5, len(res.FIONREAD))], res.MaxMS)
	assert.EqualValues(t, 300, backend.traceparent.Load(), "backend requests with a traceparent (of %d)", backend.requests.Load())

	big := runProbe(t, probe, backend, "keepalive", 8, 1<<20)
	assert.Empty(t, big.Errors, "1 MiB responses")
	assert.Equal(t, 8, big.OK, "1 MiB responses read whole")
	assert.Zero(t, big.EpollTimeouts, "1 MiB responses: epoll timeouts")
	for i, v := range big.FIONREAD {
		assert.Positive(t, v, "1 MiB response %d: FIONREAD", i)
	}
	t.Logf("1 MiB: FIONREAD %v, slowest %.1f ms", big.FIONREAD, big.MaxMS)

	checkProbe(t, "half-close", runProbe(t, probe, backend, "halfclose", 20, 5000), 20)
}

// gateway is a reverse proxy under test/e2e/apps/sockhealth that listens on
// a port and forwards every request to a backend over a keep-alive pool.
type gateway struct {
	name string
	// bin is the runtime the gateway needs; the subtest skips without it.
	bin   string
	start func(t *testing.T, service string, port, backendPort int) *App
}

var gateways = []gateway{
	{name: "node", bin: "node", start: func(t *testing.T, service string, port, backendPort int) *App {
		return startSockApp(t, service, port, "node", "gw_node.js", strconv.Itoa(port), strconv.Itoa(backendPort))
	}},
	{name: "go", bin: "go", start: func(t *testing.T, service string, port, backendPort int) *App {
		bin := filepath.Join(t.TempDir(), "gogw")
		cmd := exec.Command("go", "build", "-o", bin, "./test/e2e/apps/sockhealth/gogw")
		cmd.Dir = RepoRoot(t)
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go build ./test/e2e/apps/sockhealth/gogw: %v\n%s", err, b)
		}
		return startSockApp(t, service, port, bin, strconv.Itoa(port), strconv.Itoa(backendPort))
	}},
	{name: "python-aiohttp", bin: "/usr/bin/python3", start: func(t *testing.T, service string, port, backendPort int) *App {
		// The Debian python, which has python3-aiohttp (python3 on PATH
		// may be another one).
		if err := exec.Command("/usr/bin/python3", "-c", "import aiohttp").Run(); err != nil {
			t.Skipf("/usr/bin/python3 has no aiohttp (apt-get install python3-aiohttp): %v", err)
		}
		return startSockApp(t, service, port, "/usr/bin/python3", "-u", "gw_aiohttp.py", strconv.Itoa(port), strconv.Itoa(backendPort))
	}},
	{name: "nginx", bin: "/usr/sbin/nginx", start: startNginxGateway},
}

// nginxConf is the gateway's nginx.conf: one worker, an upstream keep-alive
// pool, every path the master would write under dir. "env" keeps
// OTEL_SERVICE_NAME in the worker's environment. The fifth and sixth
// arguments are the listen options and more server lines (TLS).
const nginxConf = `%sworker_processes 1;
pid %[2]s/nginx.pid;
error_log %[2]s/error.log warn;
env OTEL_SERVICE_NAME;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path %[2]s/body;
    proxy_temp_path %[2]s/proxy;
    fastcgi_temp_path %[2]s/fastcgi;
    uwsgi_temp_path %[2]s/uwsgi;
    scgi_temp_path %[2]s/scgi;
    upstream backend {
        server 127.0.0.1:%[3]d;
        keepalive 16;
    }
    server {
        listen 127.0.0.1:%[4]d%[5]s;
%[6]s        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
`

// startNginxGateway runs /usr/sbin/nginx in the foreground with a generated
// config in a temporary directory and waits until it answers.
func startNginxGateway(t *testing.T, service string, port, backendPort int) *App {
	t.Helper()
	return startNginx(t, service, port, backendPort, "")
}

// startNginx is startNginxGateway; with certDir (holding cert.pem and
// key.pem, see selfSigned) nginx terminates TLS on port and proxies in
// plaintext.
func startNginx(t *testing.T, service string, port, backendPort int, certDir string) *App {
	t.Helper()
	dir := t.TempDir()
	listen, tlsLines, scheme := "", "", "http"
	if certDir != "" {
		listen, scheme = " ssl", "https"
		tlsLines = fmt.Sprintf("        ssl_certificate %s;\n        ssl_certificate_key %s;\n",
			filepath.Join(certDir, "cert.pem"), filepath.Join(certDir, "key.pem"))
	}
	user := ""
	if os.Geteuid() == 0 {
		// Workers would run as nobody, who cannot write the temporary
		// directory (64 KiB responses go through proxy_temp_path).
		user = "user root;\n"
	}
	conf := filepath.Join(dir, "nginx.conf")
	require.NoError(t, os.WriteFile(conf, fmt.Appendf(nil, nginxConf, user, dir, backendPort, port, listen, tlsLines), 0o644))
	cmd := exec.Command("/usr/sbin/nginx", "-p", dir, "-e", filepath.Join(dir, "error.log"), "-c", conf, "-g", "daemon off;")
	cmd.Dir = dir
	cmd.Env = append(cmd.Environ(), "OTEL_SERVICE_NAME="+service)
	app := &App{Lang: Lang(service), Service: service, Port: port, cmd: cmd, done: make(chan struct{}), out: &syncBuffer{}}
	cmd.Stdout, cmd.Stderr = app.out, app.out
	startProcessGroup(t, cmd, nil, app.done, func() string {
		log, _ := os.ReadFile(filepath.Join(dir, "error.log"))
		return fmt.Sprintf("nginx (port %d; error.log:\n%s)", port, log)
	}, app.out)
	app.PID = cmd.Process.Pid
	client := &http.Client{Timeout: time.Second, Transport: &http.Transport{
		DisableKeepAlives: true,
		TLSClientConfig:   &tls.Config{InsecureSkipVerify: true}, // the test's own self-signed certificate
	}}
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := client.Get(scheme + "://" + app.Addr() + warmupPath)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return app
			}
		}
		select {
		case <-app.done:
			log, _ := os.ReadFile(filepath.Join(dir, "error.log"))
			t.Fatalf("nginx exited before it answered: %v\n%s\n%s", cmd.ProcessState, app.out, log)
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("nginx not answering on port %d after 20s: %v\n%s", port, err, app.out)
		}
	}
}

// gatewayLoad is what driveGateway saw.
type gatewayLoad struct {
	ok, failed int
	errs       []string // the first few failures
	max        time.Duration
	wall       time.Duration         // the whole run
	bySize     map[int]time.Duration // summed request times per response size
}

// gatewaySizes are the response sizes driveGateway asks for, in turn.
var gatewaySizes = []int{200, 64 << 10}

// driveGateway sends n GET /resp?size=… requests through gw from conc
// workers sharing a keep-alive client, and checks each status and body.
func driveGateway(t *testing.T, gw *App, n, conc int) gatewayLoad {
	t.Helper()
	tr := &http.Transport{MaxIdleConns: conc, MaxIdleConnsPerHost: conc, IdleConnTimeout: 90 * time.Second, DisableCompression: true}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 30 * time.Second}
	patterns := map[int][]byte{}
	for _, s := range gatewaySizes {
		patterns[s] = Pattern(s)
	}
	var (
		mu  sync.Mutex
		res = gatewayLoad{bySize: map[int]time.Duration{}}
		wg  sync.WaitGroup
	)
	began := time.Now()
	next := make(chan int)
	for range conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				size := gatewaySizes[i%len(gatewaySizes)]
				start := time.Now()
				err := func() error {
					resp, err := client.Get(gw.URL(fmt.Sprintf("/resp?size=%d&i=%d", size, i)))
					if err != nil {
						return err
					}
					defer resp.Body.Close()
					body, err := io.ReadAll(resp.Body)
					if err != nil {
						return fmt.Errorf("status %d, body after %d bytes: %w", resp.StatusCode, len(body), err)
					}
					if resp.StatusCode != http.StatusOK {
						return fmt.Errorf("status %d: %.200q", resp.StatusCode, body)
					}
					if !bytes.Equal(body, patterns[size]) {
						return fmt.Errorf("body of %d bytes is not the %d-byte pattern", len(body), size)
					}
					return nil
				}()
				d := time.Since(start)
				mu.Lock()
				res.max = max(res.max, d)
				res.bySize[size] += d
				if err != nil {
					res.failed++
					if len(res.errs) < 5 {
						res.errs = append(res.errs, fmt.Sprintf("request %d (size %d, %v): %v", i, size, d.Round(time.Millisecond), err))
					}
				} else {
					res.ok++
				}
				mu.Unlock()
			}
		}()
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
	res.wall = time.Since(began)
	return res
}

// TestSockHealthGateways runs reverse proxies (Node http with a keep-alive
// Agent, Go net/http, Python aiohttp, nginx with an upstream keepalive pool)
// in front of the raw backend, and drives 3000 requests at concurrency 8,
// 200 B and 64 KiB responses in turn, through each: first without the
// collector, then with it (context propagation on, the gateway selected by
// its port). With the collector every request must succeed with the exact
// body, none may be more than 900 ms slower than the slowest of the run
// without it, and the backend must receive a traceparent on each.
func TestSockHealthGateways(t *testing.T) {
	const (
		requests    = 3000
		concurrency = 8
		slack       = 900 * time.Millisecond
	)
	for _, g := range gateways {
		t.Run(g.name, func(t *testing.T) {
			if _, err := exec.LookPath(g.bin); err != nil {
				t.Skipf("%s gateway: %s not found: %v", g.name, g.bin, err)
			}
			backend := startRawBackend(t)
			port := FreePort(t)
			service := "gw-" + g.name
			gw := g.start(t, service, port, backend.Port())

			base := driveGateway(t, gw, requests, concurrency)
			require.Zero(t, base.failed, "%s without the collector: failed requests (of %d): %v", g.name, requests, base.errs)
			baseTP := backend.traceparent.Load()
			backend.reset()

			sink := StartSink(t)
			StartCollector(t, CollectorConfig{
				Instrument:   []Selector{PortsSelector(port)},
				SinkEndpoint: sink.Endpoint(),
				EBPF:         propagationAll,
			})
			waitTracedBy(t, sink, gw, All(
				func(s Span) bool { return s.Kind == ptrace.SpanKindServer },
				WithAttr("server.port", port)))
			backend.reset()

			traced := driveGateway(t, gw, requests, concurrency)
			got, tp := backend.requests.Load(), backend.traceparent.Load()
			t.Logf("%s: baseline %v (mean %.2f ms at 200 B, %.2f ms at 64 KiB); traced %v (mean %.2f ms at 200 B, %.2f ms at 64 KiB)",
				g.name, base.wall.Round(time.Millisecond), ms(base.bySize[200])/(requests/2), ms(base.bySize[64<<10])/(requests/2),
				traced.wall.Round(time.Millisecond), ms(traced.bySize[200])/(requests/2), ms(traced.bySize[64<<10])/(requests/2))
			t.Logf("%s: baseline max %.1f ms (traceparents %d); traced max %.1f ms, %d ok, %d failed; backend %d requests, %d with a traceparent",
				g.name, ms(base.max), baseTP, ms(traced.max), traced.ok, traced.failed, got, tp)
			assert.Zero(t, traced.failed, "%s with the collector: failed requests (of %d): %v", g.name, requests, traced.errs)
			assert.LessOrEqual(t, traced.max, base.max+slack,
				"%s with the collector: slowest request %.1f ms, baseline's slowest %.1f ms + %v", g.name, ms(traced.max), ms(base.max), slack)
			assert.EqualValues(t, requests, got, "%s: requests the backend received", g.name)
			assert.EqualValues(t, requests, tp, "%s: backend requests with a traceparent (of %d)", g.name, got)
		})
	}
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
