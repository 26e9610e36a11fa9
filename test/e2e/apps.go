//go:build linux

package e2e

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ebpftracing/ebpftracingreceiver/internal/goexe"
)

// Lang names one of the test apps under apps/.
type Lang string

// The test apps.
const (
	Python Lang = "python"
	Node   Lang = "node"
	Java   Lang = "java"
	Go     Lang = "go"
	// GoStripped is apps/go built with -ldflags "-s -w": no symbol table,
	// no DWARF; not in AllLangs.
	GoStripped Lang = "go-stripped"
	// GoUnknownRelease is GoStripped with its build info rewritten to name
	// release go1.99, which the runtime.g offset table does not hold; not
	// in AllLangs.
	GoUnknownRelease Lang = "go-unknown-release"
	// GoSDK is apps/gosdk, a Go app instrumented with the OpenTelemetry SDK
	// (otelhttp) that exports its own spans over OTLP/HTTP; not in AllLangs.
	GoSDK Lang = "gosdk"
	// GoGRPC is apps/gogrpc (a module of its own: the module proxy's
	// google.golang.org/grpc): a gRPC health server, or with
	// GOGRPC_MODE=client an HTTP front calling GOGRPC_TARGET over gRPC; not
	// in AllLangs.
	GoGRPC Lang = "gogrpc"
	// GoH2C is apps/goh2c (a module of its own: the module proxy's
	// golang.org/x/net): an h2c server, with GOH2C_TARGET calling another
	// over h2c; GOH2C_COPY picks the HTTP/2 copy (std or xnet); not in
	// AllLangs.
	GoH2C Lang = "goh2c"
	// PyAsync is apps/pyasync, a Python asyncio (aiohttp) server: one event
	// loop thread; not in AllLangs.
	PyAsync Lang = "pyasync"
)

// AllLangs returns every uninstrumented test app language, in a fixed order.
func AllLangs() []Lang { return []Lang{Python, Node, Java, Go} }

// DefaultService is the OTEL_SERVICE_NAME the tests give each language's app.
func DefaultService(l Lang) string {
	switch l {
	case Python:
		return "py-svc"
	default:
		return string(l) + "-svc"
	}
}

// readyTimeout is how long an app may take to print "ready".
func readyTimeout(l Lang) time.Duration {
	if l == Java {
		return 30 * time.Second
	}
	return 15 * time.Second
}

// App is a running test app.
type App struct {
	Lang    Lang
	Service string
	Port    int
	PID     int
	// StartUp is the time from exec to "ready" on stdout.
	StartUp time.Duration

	// Host is the address it listens on; empty is 127.0.0.1.
	Host string
	// TLS: it serves HTTPS (AppOptions.Cert).
	TLS bool

	cmd  *exec.Cmd
	done chan struct{}
	out  *syncBuffer
}

// AppOptions place an app (Python and Node read them): in a network
// namespace, on an address, serving HTTPS.
type AppOptions struct {
	Netns     string // run under "ip netns exec Netns"
	Host      string // listening address (BIND_HOST); 127.0.0.1 when empty
	Cert, Key string // PEM files: serve HTTPS (TLS_CERT, TLS_KEY)
	Env       []string
}

// Addr is the app's host:port.
func (a *App) Addr() string {
	host := a.Host
	if host == "" {
		host = "127.0.0.1"
	}
	return net.JoinHostPort(host, strconv.Itoa(a.Port))
}

// URL is the app's http (https with TLS) URL for pathAndQuery ("/hello?i=1").
func (a *App) URL(pathAndQuery string) string {
	if a.TLS {
		return "https://" + a.Addr() + pathAndQuery
	}
	return "http://" + a.Addr() + pathAndQuery
}

// CallURL is the app's /call URL for target, with more query parameters given
// as name, value pairs ("pad", "2000").
func (a *App) CallURL(target string, params ...string) string {
	q := url.Values{"url": {target}}
	for i := 0; i+1 < len(params); i += 2 {
		q.Add(params[i], params[i+1])
	}
	return a.URL("/call?" + q.Encode())
}

// ChainURL is the URL of a chain of /call requests: apps[0] calls apps[1],
// …, and the last app calls its own path last ("/headers"). params are added
// to every /call URL and to last.
func ChainURL(apps []*App, last string, params ...string) string {
	target := apps[len(apps)-1].URL(last)
	if len(params) > 0 {
		q := url.Values{}
		for i := 0; i+1 < len(params); i += 2 {
			q.Add(params[i], params[i+1])
		}
		sep := "?"
		if strings.Contains(last, "?") {
			sep = "&"
		}
		target += sep + q.Encode()
	}
	for i := len(apps) - 2; i >= 0; i-- {
		target = apps[i].CallURL(target, params...)
	}
	return target
}

// Pattern is the first n bytes of "0123456789" repeated: what /call sends as
// its pad=n header value and body=n POST body.
func Pattern(n int) []byte {
	if n <= 0 {
		return nil
	}
	return bytes.Repeat([]byte("0123456789"), n/10+1)[:n]
}

// Hop is the JSON body of one app's response in a chain of /call requests.
type Hop struct {
	// Traceparent is the first traceparent header the app received, ""
	// when none; TraceparentCount is how many it received.
	Traceparent      string `json:"traceparent"`
	TraceparentCount int    `json:"traceparent_count"`
	// Status and Body are the downstream's status and body, for /call.
	Status int    `json:"status"`
	Body   string `json:"body"`
	// Error is /call's error when the outbound request failed.
	Error string `json:"error"`
	// Headers and SHA256 are /headers' fields; SHA256 and Len /echo's.
	Headers map[string]string `json:"headers"`
	SHA256  string            `json:"sha256"`
	Len     int               `json:"len"`
}

// ParseChain decodes a chain of /call responses: hop 0 is body, the JSON
// response of the app called first; while a hop's Body (the downstream's
// response, a JSON string inside the JSON) is itself a JSON object, it is the
// next hop. So a Python /call → Node /call → Go /headers chain gives three
// hops, the last with Headers.
func ParseChain(body string) ([]Hop, error) {
	var hops []Hop
	for {
		var h Hop
		var fields map[string]json.RawMessage
		if err := json.Unmarshal([]byte(body), &fields); err != nil {
			return hops, fmt.Errorf("hop %d: %w: %q", len(hops), err, body)
		}
		if _, ok := fields["traceparent_count"]; !ok {
			return hops, fmt.Errorf("hop %d: no traceparent_count: %q", len(hops), body)
		}
		if err := json.Unmarshal([]byte(body), &h); err != nil {
			return hops, fmt.Errorf("hop %d: %w: %q", len(hops), err, body)
		}
		hops = append(hops, h)
		if h.Error != "" {
			return hops, fmt.Errorf("hop %d: %s", len(hops)-1, h.Error)
		}
		if !strings.HasPrefix(strings.TrimSpace(h.Body), "{") {
			return hops, nil
		}
		body = h.Body
	}
}

// Output returns what the app wrote on stdout and stderr so far.
func (a *App) Output() string { return a.out.String() }

// StartApp starts the lang app on 127.0.0.1:port with OTEL_SERVICE_NAME set
// to service, waits until it prints "ready", and kills its process group when
// the test ends (printing its output if the test failed).
func StartApp(t testing.TB, lang Lang, port int, service string) *App {
	t.Helper()
	return StartAppEnv(t, lang, port, service)
}

// StartAppEnv is StartApp with more "NAME=value" environment variables, such
// as GoSDK's OTEL_EXPORTER_OTLP_ENDPOINT.
func StartAppEnv(t testing.TB, lang Lang, port int, service string, env ...string) *App {
	t.Helper()
	return StartAppWith(t, lang, port, service, AppOptions{Env: env})
}

// StartAppWith is StartApp placed by o.
func StartAppWith(t testing.TB, lang Lang, port int, service string, o AppOptions) *App {
	t.Helper()
	env := o.Env
	if o.Host != "" {
		env = append(env, "BIND_HOST="+o.Host)
	}
	if o.Cert != "" {
		env = append(env, "TLS_CERT="+o.Cert, "TLS_KEY="+o.Key)
	}
	root := RepoRoot(t)
	dir := filepath.Join(root, "test", "e2e", "apps", string(lang))
	portArg := strconv.Itoa(port)
	var cmd *exec.Cmd
	switch lang {
	case Python:
		cmd = exec.Command("python3", "-u", filepath.Join(dir, "server.py"), portArg)
	case Node:
		cmd = exec.Command("node", filepath.Join(dir, "server.js"), portArg)
	case PyAsync:
		cmd = exec.Command("/usr/bin/python3", "-u", filepath.Join(dir, "server.py"), portArg)
	case Java:
		classes := buildJavaApp(t, dir)
		cmd = exec.Command("java", "-cp", classes, "Server", portArg)
	case Go:
		cmd = exec.Command(buildGoApp(t, root, dir, ""), portArg)
	case GoStripped:
		dir = filepath.Join(root, "test", "e2e", "apps", string(Go))
		cmd = exec.Command(buildGoApp(t, root, dir, "-s -w"), portArg)
	case GoUnknownRelease:
		dir = filepath.Join(root, "test", "e2e", "apps", string(Go))
		cmd = exec.Command(unknownReleaseCopy(t, buildGoApp(t, root, dir, "-s -w")), portArg)
	case GoSDK, GoGRPC, GoH2C:
		cmd = exec.Command(buildGoModuleApp(t, dir, string(lang)), portArg)
	default:
		t.Fatalf("unknown test app language %q", lang)
	}
	if o.Netns != "" {
		// ip execs the app in place: the pid stays the app's.
		cmd = exec.Command("ip", append([]string{"netns", "exec", o.Netns}, cmd.Args...)...)
	}
	cmd.Dir = dir
	cmd.Env = append(append(os.Environ(), "OTEL_SERVICE_NAME="+service, "PORT="+portArg), env...)
	app := &App{Lang: lang, Service: service, Port: port, Host: o.Host, TLS: o.Cert != "",
		cmd: cmd, done: make(chan struct{}), out: &syncBuffer{}}
	ready := make(chan struct{})
	cmd.Stdout = &readyWriter{buf: app.out, ready: ready}
	cmd.Stderr = app.out
	startProcessGroup(t, cmd, nil, app.done, func() string { return fmt.Sprintf("%s app (%s, port %d)", lang, service, port) }, app.out)
	app.PID = cmd.Process.Pid
	start := time.Now()
	select {
	case <-ready:
		app.StartUp = time.Since(start)
	case <-app.done:
		t.Fatalf("%s app exited before it was ready: %v\n%s", lang, cmd.ProcessState, app.out)
	case <-time.After(readyTimeout(lang)):
		t.Fatalf("%s app not ready after %v:\n%s", lang, readyTimeout(lang), app.out)
	}
	return app
}

// startProcessGroup starts cmd in its own process group (as cred's user when
// cred is set), closes done when it exits, and on cleanup kills the whole
// group, waits, and logs out if the test failed.
func startProcessGroup(t testing.TB, cmd *exec.Cmd, cred *syscall.Credential, done chan struct{}, name func() string, out *syncBuffer) {
	t.Helper()
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL, Credential: cred}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name(), err)
	}
	go func() {
		_ = cmd.Wait()
		close(done)
	}()
	t.Cleanup(func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Errorf("%s (pid %d) still running 10s after SIGKILL", name(), cmd.Process.Pid)
		}
		if t.Failed() {
			t.Logf("output of %s:\n%s", name(), out)
		}
	})
}

// buildJavaApp compiles Server.java once into a cache directory keyed by the
// source's hash: javac costs ~2.5 s, `java -cp` of the classes starts in
// ~0.2 s, while `java Server.java` recompiles at every start (~2.1 s).
func buildJavaApp(t testing.TB, dir string) string {
	t.Helper()
	src := filepath.Join(dir, "Server.java")
	out := cacheDir(t, "java", src)
	if _, err := os.Stat(filepath.Join(out, "Server.class")); err == nil {
		return out
	}
	tmp, err := os.MkdirTemp(filepath.Dir(out), "build-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(tmp)
	if b, err := exec.Command("javac", "-d", tmp, src).CombinedOutput(); err != nil {
		t.Fatalf("javac %s: %v\n%s", src, err, b)
	}
	publish(t, tmp, out)
	return out
}

// buildGoApp builds apps/go once into a cache directory keyed by the source's
// hash and the Go version, and returns the binary's path.
func buildGoApp(t testing.TB, root, dir, ldflags string) string {
	t.Helper()
	kind := "go"
	if ldflags != "" {
		kind = "go-" + strings.NewReplacer(" ", "", "-", "").Replace(ldflags)
	}
	out := cacheDir(t, kind, filepath.Join(dir, "main.go"))
	bin := filepath.Join(out, "goapp")
	if _, err := os.Stat(bin); err == nil {
		return bin
	}
	tmp, err := os.MkdirTemp(filepath.Dir(out), "build-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(tmp)
	cmd := exec.Command("go", "build", "-ldflags="+ldflags, "-o", filepath.Join(tmp, "goapp"), "./test/e2e/apps/go")
	cmd.Dir = root
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build ./test/e2e/apps/go: %v\n%s", err, b)
	}
	publish(t, tmp, out)
	return bin
}

// unknownReleaseCopy copies the Go binary bin into a temporary directory with
// the Go version in its build info rewritten to go1.99 (same length), and
// returns the copy's path.
func unknownReleaseCopy(t testing.TB, bin string) string {
	t.Helper()
	b, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "goapp-go199")
	if err := os.WriteFile(out, b, 0o755); err != nil {
		t.Fatal(err)
	}
	v := runtime.Version()
	if err := goexe.SetGoVersion(out, "go1.99"+v[len("go1.99"):]); err != nil {
		t.Fatal(err)
	}
	return out
}

// buildGoModuleApp builds an app that is a module of its own (apps/gosdk,
// apps/gogrpc: so the receiver's go.mod does not require the OpenTelemetry
// SDK or grpc), once into a cache directory keyed by its source, go.mod,
// go.sum and the Go version, and returns the binary's path. The first build
// downloads the modules through the module proxy; the committed go.sum pins
// them.
func buildGoModuleApp(t testing.TB, dir, name string) string {
	t.Helper()
	out := cacheDir(t, name, filepath.Join(dir, "main.go"), filepath.Join(dir, "go.mod"), filepath.Join(dir, "go.sum"))
	bin := filepath.Join(out, name)
	if _, err := os.Stat(bin); err == nil {
		return bin
	}
	tmp, err := os.MkdirTemp(filepath.Dir(out), "build-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(tmp)
	cmd := exec.Command("go", "build", "-o", filepath.Join(tmp, name), ".")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GOWORK=off")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", dir, err, b)
	}
	publish(t, tmp, out)
	return bin
}

// cacheDir names (without creating) $TMPDIR/ebpftracing-e2e/<kind>-<hash of
// srcs and the Go version>, and creates its parent.
func cacheDir(t testing.TB, kind string, srcs ...string) string {
	t.Helper()
	h := sha256.New()
	for _, src := range srcs {
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		h.Write(b)
	}
	io.WriteString(h, runtime.Version())
	parent := filepath.Join(os.TempDir(), "ebpftracing-e2e")
	if err := os.MkdirAll(parent, 0o755); err != nil {
		t.Fatal(err)
	}
	return filepath.Join(parent, kind+"-"+hex.EncodeToString(h.Sum(nil))[:16])
}

// publish renames a finished build directory into place; a concurrent build
// that got there first wins.
func publish(t testing.TB, tmp, out string) {
	t.Helper()
	if err := os.Rename(tmp, out); err != nil {
		if _, statErr := os.Stat(out); statErr != nil {
			t.Fatalf("publish build: %v", err)
		}
	}
}

// RepoRoot walks up from the working directory to the directory holding
// go.mod.
func RepoRoot(t testing.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("no go.mod above the working directory")
		}
		dir = parent
	}
}

// FreePorts returns n distinct TCP ports that were free on 127.0.0.1.
func FreePorts(t testing.TB, n int) []int {
	t.Helper()
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
			t.Fatalf("free port: %v", err)
		}
		lns = append(lns, ln)
		ports = append(ports, ln.Addr().(*net.TCPAddr).Port)
	}
	return ports
}

// FreePort returns one TCP port that was free on 127.0.0.1.
func FreePort(t testing.TB) int {
	t.Helper()
	return FreePorts(t, 1)[0]
}

// Curl runs /usr/bin/curl -sS with args and returns its stdout; it fails the
// test if curl exits non-zero (add --fail yourself to fail on HTTP errors).
func Curl(t testing.TB, args ...string) string {
	t.Helper()
	var stdout, stderr bytes.Buffer
	cmd := exec.Command("/usr/bin/curl", append([]string{"-sS", "--max-time", "30"}, args...)...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("curl %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return stdout.String()
}

// NewClient returns an HTTP/1.1 client with no limit on connections per host,
// whose idle connections are closed when the test ends.
func NewClient(t testing.TB) *http.Client {
	tr := &http.Transport{
		MaxConnsPerHost:     0,
		MaxIdleConns:        1000,
		MaxIdleConnsPerHost: 1000,
		IdleConnTimeout:     30 * time.Second,
		ForceAttemptHTTP2:   false,
	}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 30 * time.Second}
}

// PipelinedResponse is one response read by Pipeline.
type PipelinedResponse struct {
	Status int
	Header http.Header
	Body   []byte
}

// Pipeline opens one TCP connection to addr, writes a GET request for each
// path in a single write (HTTP/1.1 pipelining), and reads the responses in
// order.
func Pipeline(t testing.TB, addr string, paths []string) []PipelinedResponse {
	t.Helper()
	return PipelineWithHeaders(t, addr, paths, nil)
}

// PipelineWithHeaders is Pipeline with extra header lines per request:
// headers[i] (e.g. "traceparent: 00-…") go into request i after User-Agent.
func PipelineWithHeaders(t testing.TB, addr string, paths []string, headers [][]string) []PipelinedResponse {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(30 * time.Second))
	var req strings.Builder
	for i, p := range paths {
		fmt.Fprintf(&req, "GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: e2e-pipeline\r\n", p, addr)
		if i < len(headers) {
			for _, h := range headers[i] {
				req.WriteString(h + "\r\n")
			}
		}
		if i == len(paths)-1 {
			req.WriteString("Connection: close\r\n")
		}
		req.WriteString("\r\n")
	}
	if _, err := io.WriteString(conn, req.String()); err != nil {
		t.Fatalf("write pipelined requests: %v", err)
	}
	r := bufio.NewReader(conn)
	out := make([]PipelinedResponse, 0, len(paths))
	for _, p := range paths {
		resp, err := http.ReadResponse(r, &http.Request{Method: http.MethodGet})
		if err != nil {
			t.Fatalf("read pipelined response for %s: %v", p, err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			t.Fatalf("read pipelined body for %s: %v", p, err)
		}
		out = append(out, PipelinedResponse{Status: resp.StatusCode, Header: resp.Header, Body: body})
	}
	return out
}

// syncBuffer is a bytes.Buffer safe for concurrent writers and readers.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// Contains reports whether s has been written.
func (b *syncBuffer) Contains(s string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return bytes.Contains(b.buf.Bytes(), []byte(s))
}

// readyWriter copies an app's stdout into buf and closes ready once a line
// "ready" has been written.
type readyWriter struct {
	buf   *syncBuffer
	ready chan struct{}
	line  []byte
	seen  bool
}

func (w *readyWriter) Write(p []byte) (int, error) {
	n, err := w.buf.Write(p)
	if w.seen {
		return n, err
	}
	for _, c := range p {
		if c != '\n' {
			w.line = append(w.line, c)
			continue
		}
		if strings.TrimSpace(string(w.line)) == "ready" {
			w.seen = true
			close(w.ready)
			return n, err
		}
		w.line = w.line[:0]
	}
	return n, err
}
