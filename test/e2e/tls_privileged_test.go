//go:build linux && privileged

package e2e

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/collector/pdata/ptrace"
)

// An HTTPS server on Python's ssl module (OpenSSL's libssl.so, loaded by
// dlopen with the _ssl extension). GET /call?target=URL calls URL first
// (urllib, with TLS when it is https) and answers with its body.
//
// With a fourth argument, a file name, it listens at once but loads nothing
// of TLS (no ssl, no http.server, which imports it) until that file exists:
// libssl.so then arrives by dlopen in a process already traced.
const pythonHTTPSServer = `
import os, socket, sys, time

port, cert, key = int(sys.argv[1]), sys.argv[2], sys.argv[3]
ls = socket.socket()
ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind(("127.0.0.1", port))
ls.listen(64)
if len(sys.argv) > 4:
    assert "_ssl" not in sys.modules
    print("ready", flush=True)
    while not os.path.exists(sys.argv[4]):
        time.sleep(0.02)

import http.server, ssl, urllib.parse, urllib.request

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        u = urllib.parse.urlparse(self.path)
        body = b"ok\n"
        if u.path == "/call":
            target = urllib.parse.parse_qs(u.query)["target"][0]
            with urllib.request.urlopen(target, context=ssl._create_unverified_context(), timeout=10) as r:
                body = r.read()
        self.send_response(404 if u.path == "/missing" else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

srv = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler, bind_and_activate=False)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
srv.socket = ctx.wrap_socket(ls, server_side=True)
print("ready" if len(sys.argv) <= 4 else "tls", flush=True)
srv.serve_forever()
`

// selfSigned writes a certificate for 127.0.0.1 and its key into dir.
func selfSigned(t *testing.T, dir string) (cert, key string) {
	t.Helper()
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "127.0.0.1"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &priv.PublicKey, priv)
	require.NoError(t, err)
	kder, err := x509.MarshalECPrivateKey(priv)
	require.NoError(t, err)
	cert, key = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	require.NoError(t, os.WriteFile(cert, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600))
	require.NoError(t, os.WriteFile(key, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600))
	return cert, key
}

// startPythonHTTPS starts pythonHTTPSServer on port as service (more
// arguments are passed on).
func startPythonHTTPS(t *testing.T, dir string, port int, service string, more ...string) *App {
	t.Helper()
	script := filepath.Join(dir, "https_server.py")
	if _, err := os.Stat(script); err != nil {
		require.NoError(t, os.WriteFile(script, []byte(pythonHTTPSServer), 0o600))
	}
	cert, key := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	cmd := exec.Command("python3", append([]string{"-u", script, strconv.Itoa(port), cert, key}, more...)...)
	cmd.Env = append(os.Environ(), "OTEL_SERVICE_NAME="+service)
	app := &App{Lang: Python, Service: service, Port: port, cmd: cmd, done: make(chan struct{}), out: &syncBuffer{}}
	ready := make(chan struct{})
	cmd.Stdout = &readyWriter{buf: app.out, ready: ready}
	cmd.Stderr = app.out
	startProcessGroup(t, cmd, nil, app.done, func() string { return "python https server " + service }, app.out)
	app.PID = cmd.Process.Pid
	select {
	case <-ready:
	case <-app.done:
		t.Fatalf("python https server exited: %s", app.out)
	case <-time.After(20 * time.Second):
		t.Fatalf("python https server not ready: %s", app.out)
	}
	return app
}

// waitHTTPS sends GET /warmup over HTTPS to a every 250 ms until one of its
// HTTPS SERVER spans arrives.
func waitHTTPS(t *testing.T, sink *Sink, a *App) {
	t.Helper()
	https := WithAttr("url.scheme", "https")
	deadline := time.Now().Add(spanTimeout)
	for i := 0; len(sink.Matching(All(ServerOf(a.Service), https))) == 0; i++ {
		if time.Now().After(deadline) {
			t.Fatalf("no HTTPS SERVER span of %s after %v; spans:\n%s", a.Service, spanTimeout, sink.Dump())
		}
		Curl(t, "-k", "-o", "/dev/null", httpsURL(a, fmt.Sprintf("/warmup?i=%d", i)))
		time.Sleep(250 * time.Millisecond)
	}
}

func httpsURL(a *App, path string) string {
	return "https://" + a.Addr() + path
}

// TestHTTPSPython: SERVER and CLIENT spans of an HTTPS Python service from
// the plaintext it hands to OpenSSL (uprobes on libssl.so's SSL_read_ex and
// SSL_write_ex), with curl over HTTPS as the client: url.scheme https, the
// attributes of plaintext spans, an incoming traceparent honoured, and the
// SERVER span's context carried to a plaintext downstream call (injected
// header) and to an HTTPS one (CLIENT span, child of the SERVER span, and
// the downstream's SERVER span its child through the TCP option carrier).
func TestHTTPSPython(t *testing.T) {
	dir := t.TempDir()
	selfSigned(t, dir)
	ports := FreePorts(t, 3)
	a := startPythonHTTPS(t, dir, ports[0], "https-a")
	b := startPythonHTTPS(t, dir, ports[1], "https-b")
	c := StartApp(t, Python, ports[2], "plain-c")
	sink := StartSink(t)
	StartCollector(t, CollectorConfig{
		Instrument:   []Selector{PortsSelector(ports...)},
		SinkEndpoint: sink.Endpoint(),
		EBPF:         map[string]string{"context_propagation": "all"},
	})
	waitTraced(t, sink, c)
	waitHTTPS(t, sink, a)

	t.Run("server", func(t *testing.T) {
		tp := "00-" + w3cTrace + "-" + w3cParent + "-01"
		assert.Equal(t, 200, curlStatus(t, httpsURL(a, "/hello?x=1"), "-k", "-H", "traceparent: "+tp))
		assert.Equal(t, 404, curlStatus(t, httpsURL(a, "/missing"), "-k"))
		s := onlySpans(t, sink, All(ServerOf("https-a"), WithPath("/hello")), 1)[0]
		assertServerSpan(t, a, s, "GET", "/hello", 200)
		assert.Equal(t, "https", s.Str("url.scheme"), "%s", s)
		assert.Equal(t, "x=1", s.Str("url.query"), "%s", s)
		assert.Equal(t, w3cTrace, s.TraceID, "incoming traceparent honoured; %s", s)
		assert.Equal(t, w3cParent, s.ParentSpanID, "incoming traceparent honoured; %s", s)
		m := onlySpans(t, sink, All(ServerOf("https-a"), WithPath("/missing")), 1)[0]
		assertServerSpan(t, a, m, "GET", "/missing", 404)
		assert.Equal(t, "https", m.Str("url.scheme"), "%s", m)
		assert.Empty(t, m.ParentSpanID, "no traceparent sent: a root; %s", m)
	})

	t.Run("plaintext-downstream", func(t *testing.T) {
		trace := "5bf92f3577b34da6a3ce929d0e0e4737"
		tp := "00-" + trace + "-" + w3cParent + "-01"
		target := c.URL("/status/201")
		assert.Equal(t, 200, curlStatus(t, httpsURL(a, "/call?target="+url.QueryEscape(target)), "-k", "-H", "traceparent: "+tp))
		srv := onlySpans(t, sink, All(ServerOf("https-a"), WithPath("/call"), func(s Span) bool { return s.TraceID == trace }), 1)[0]
		cli := onlySpans(t, sink, All(ClientOf("https-a"), func(s Span) bool { return s.TraceID == trace }), 1)[0]
		down := onlySpans(t, sink, All(ServerOf("plain-c"), WithPath("/status/201")), 1)[0]
		assert.Equal(t, w3cParent, srv.ParentSpanID, "%s", srv)
		assert.Equal(t, srv.SpanID, cli.ParentSpanID, "CLIENT span child of the HTTPS SERVER span; %s", cli)
		assert.Equal(t, "http", cli.Str("url.scheme"), "%s", cli)
		assert.Equal(t, trace, down.TraceID, "downstream got the injected traceparent; %s", down)
		assert.Equal(t, cli.SpanID, down.ParentSpanID, "%s", down)
	})

	t.Run("https-downstream", func(t *testing.T) {
		trace := "6bf92f3577b34da6a3ce929d0e0e4738"
		tp := "00-" + trace + "-" + w3cParent + "-01"
		target := httpsURL(b, "/leaf?y=2")
		assert.Equal(t, 200, curlStatus(t, httpsURL(a, "/call?target="+url.QueryEscape(target)), "-k", "-H", "traceparent: "+tp))
		srv := onlySpans(t, sink, All(ServerOf("https-a"), WithPath("/call"), func(s Span) bool { return s.TraceID == trace }), 1)[0]
		cli := onlySpans(t, sink, All(ClientOf("https-a"), func(s Span) bool { return s.TraceID == trace }), 1)[0]
		leaf := onlySpans(t, sink, All(ServerOf("https-b"), WithPath("/leaf")), 1)[0]
		assert.Equal(t, ptrace.SpanKindClient, cli.Kind)
		assert.Equal(t, srv.SpanID, cli.ParentSpanID, "HTTPS CLIENT span child of the HTTPS SERVER span; %s", cli)
		assert.Equal(t, "https", cli.Str("url.scheme"), "%s", cli)
		assert.Equal(t, "https://"+b.Addr()+"/leaf?y=2", cli.Str("url.full"), "%s", cli)
		code, ok := cli.Int("http.response.status_code")
		assert.True(t, ok && code == 200, "%s", cli)
		assert.Equal(t, "https", leaf.Str("url.scheme"), "%s", leaf)
		// context_propagation all: the context of the TLS write travels
		// in the packets (TCP option carrier, also over loopback).
		assert.Equal(t, trace, leaf.TraceID, "%s", leaf)
		assert.Equal(t, cli.SpanID, leaf.ParentSpanID, "downstream HTTPS SERVER span child of the HTTPS CLIENT span; %s", leaf)
	})
}

// TestHTTPSDlopenAfterSelection: a process selected while it has no TLS
// library loads libssl.so later (Python's "import ssl": dlopen) and its
// HTTPS requests are traced from then on (the discovery poll rescans the
// mappings of selected processes).
func TestHTTPSDlopenAfterSelection(t *testing.T) {
	dir := t.TempDir()
	selfSigned(t, dir)
	port := FreePort(t)
	trigger := filepath.Join(dir, "load-tls")
	a := startPythonHTTPS(t, dir, port, "https-lazy", trigger)
	sink := StartSink(t)
	col := StartCollector(t, CollectorConfig{
		Instrument:   []Selector{PortsSelector(port)},
		SinkEndpoint: sink.Endpoint(),
	})
	require.Eventually(t, func() bool {
		return strings.Contains(col.Output(), "ebpf_tracing started")
	}, spanTimeout, 50*time.Millisecond)
	time.Sleep(time.Second) // selected by the first scan or the next poll
	maps, err := os.ReadFile(fmt.Sprintf("/proc/%d/maps", a.PID))
	require.NoError(t, err)
	require.NotContains(t, string(maps), "libssl", "libssl loaded before the trigger")
	require.NoError(t, os.WriteFile(trigger, nil, 0o600))
	require.Eventually(t, func() bool { return strings.Contains(a.Output(), "tls") }, spanTimeout, 20*time.Millisecond)
	waitHTTPS(t, sink, a)
	assert.Equal(t, 200, curlStatus(t, httpsURL(a, "/after-dlopen"), "-k"))
	s := onlySpans(t, sink, All(ServerOf("https-lazy"), WithPath("/after-dlopen")), 1)[0]
	assertServerSpan(t, a, s, "GET", "/after-dlopen", 200)
	assert.Equal(t, "https", s.Str("url.scheme"), "%s", s)
}

// A Node.js HTTPS server (OpenSSL linked into the node executable).
const nodeHTTPSServer = `
const fs = require('fs'), https = require('https');
const [port, cert, key] = process.argv.slice(2);
https.createServer({cert: fs.readFileSync(cert), key: fs.readFileSync(key)}, (req, res) => {
  const code = req.url.startsWith('/missing') ? 404 : 200;
  res.writeHead(code, {'Content-Length': '3'});
  res.end('ok\n');
}).listen(Number(port), '127.0.0.1', () => console.log('ready'));
`

// TestHTTPSNode: SERVER spans of a Node.js HTTPS server, probed in the node
// executable itself (it exports SSL_read and SSL_write; no libssl.so), with
// the ciphertext in a memory BIO: the connection is the socket the event
// loop thread read just before SSL_read, then the SSL object's.
func TestHTTPSNode(t *testing.T) {
	dir := t.TempDir()
	cert, key := selfSigned(t, dir)
	script := filepath.Join(dir, "https_server.js")
	require.NoError(t, os.WriteFile(script, []byte(nodeHTTPSServer), 0o600))
	port := FreePort(t)
	cmd := exec.Command("node", script, strconv.Itoa(port), cert, key)
	cmd.Env = append(os.Environ(), "OTEL_SERVICE_NAME=https-node")
	a := &App{Lang: Node, Service: "https-node", Port: port, cmd: cmd, done: make(chan struct{}), out: &syncBuffer{}}
	ready := make(chan struct{})
	cmd.Stdout = &readyWriter{buf: a.out, ready: ready}
	cmd.Stderr = a.out
	startProcessGroup(t, cmd, nil, a.done, func() string { return "node https server" }, a.out)
	a.PID = cmd.Process.Pid
	select {
	case <-ready:
	case <-time.After(20 * time.Second):
		t.Fatalf("node https server not ready: %s", a.out)
	}
	sink := StartSink(t)
	StartCollector(t, CollectorConfig{Instrument: []Selector{PortsSelector(port)}, SinkEndpoint: sink.Endpoint()})
	waitHTTPS(t, sink, a)
	tp := "00-" + w3cTrace + "-" + w3cParent + "-01"
	// Two requests on one keep-alive connection: the first finds the
	// socket by the thread's last read, the second by the SSL object.
	out := Curl(t, "-k", "-o", "/dev/null", "-o", "/dev/null", "-w", "%{http_code}\n", "-H", "traceparent: "+tp,
		httpsURL(a, "/one?x=1"), httpsURL(a, "/missing"))
	assert.Equal(t, "200\n404\n", out)
	s := onlySpans(t, sink, All(ServerOf("https-node"), WithPath("/one")), 1)[0]
	assertServerSpan(t, a, s, "GET", "/one", 200)
	assert.Equal(t, "https", s.Str("url.scheme"), "%s", s)
	assert.Equal(t, w3cTrace, s.TraceID, "%s", s)
	assert.Equal(t, w3cParent, s.ParentSpanID, "%s", s)
	m := onlySpans(t, sink, All(ServerOf("https-node"), WithPath("/missing")), 1)[0]
	assertServerSpan(t, a, m, "GET", "/missing", 404)
	assert.Equal(t, "https", m.Str("url.scheme"), "%s", m)
}

// TestHTTPSShutdownLeavesNothing: the TLS uprobe links and programs the
// collector made are gone after it stops, and the HTTPS server keeps
// answering.
func TestHTTPSShutdownLeavesNothing(t *testing.T) {
	dir := t.TempDir()
	selfSigned(t, dir)
	port := FreePort(t)
	a := startPythonHTTPS(t, dir, port, "https-stop")
	before := map[string]map[int]string{"prog": bpfObjects(t, "prog"), "link": bpfObjects(t, "link")}
	sink := StartSink(t)
	col := StartCollector(t, CollectorConfig{Instrument: []Selector{PortsSelector(port)}, SinkEndpoint: sink.Endpoint()})
	waitHTTPS(t, sink, a)
	held := heldBPFObjects(t, col.PID)
	ours := map[string][]int{}
	var tlsProgs int
	for kind, ids := range held {
		listed, ok := before[kind]
		if !ok {
			continue
		}
		now := bpfObjects(t, kind)
		for _, id := range ids {
			if _, old := listed[id]; old {
				continue
			}
			ours[kind] = append(ours[kind], id)
			if kind == "prog" && strings.HasPrefix(now[id], "httptrace_ssl") {
				tlsProgs++
			}
		}
	}
	require.Positive(t, tlsProgs, "no TLS program held by the collector: %v", ours)
	assert.Equal(t, 0, col.Stop(), "exit code after SIGTERM")
	require.Eventually(t, func() bool {
		for kind, ids := range ours {
			now := bpfObjects(t, kind)
			for _, id := range ids {
				if _, ok := now[id]; ok {
					return false
				}
			}
		}
		return true
	}, 5*time.Second, 100*time.Millisecond, "BPF objects left after the collector exited: %v", ours)
	assert.Equal(t, 200, curlStatus(t, httpsURL(a, "/after"), "-k"))
}
