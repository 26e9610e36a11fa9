//go:build linux && privileged

package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
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
