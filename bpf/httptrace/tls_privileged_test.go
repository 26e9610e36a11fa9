//go:build linux && privileged

package httptrace

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/ringbuf"
	"github.com/cilium/ebpf/rlimit"
)

const tlsCostServer = `
import http.server, ssl, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        # One write: headers and body apart meet Nagle and delayed ACKs.
        self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n")
    def log_message(self, *a):
        pass
srv = http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(sys.argv[2], sys.argv[3])
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
srv.serve_forever()
`

func writeCert(t *testing.T, dir string) (string, string) {
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &priv.PublicKey, priv)
	if err != nil {
		t.Fatal(err)
	}
	kder, _ := x509.MarshalECPrivateKey(priv)
	cert, key := filepath.Join(dir, "c.pem"), filepath.Join(dir, "k.pem")
	_ = os.WriteFile(cert, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	_ = os.WriteFile(key, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600)
	return cert, key
}

// TestTLSCost measures what the TLS uprobes cost per HTTPS request to a
// Python server (curl, 2000 requests on one keep-alive connection): hits
// and run time per program (bpf_stats), and the server-side wall time per
// request with and without the probes, alternated.
func TestTLSCost(t *testing.T) {
	if err := rlimit.RemoveMemlock(); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	cert, key := writeCert(t, dir)
	script := filepath.Join(dir, "srv.py")
	_ = os.WriteFile(script, []byte(tlsCostServer), 0o600)
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	srv := exec.Command("python3", script, fmt.Sprint(port), cert, key)
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = srv.Process.Kill(); _ = srv.Wait() }()
	const n = 2000
	url := fmt.Sprintf("https://127.0.0.1:%d/r[1-%d]", port, n)
	run := func() time.Duration {
		start := time.Now()
		if out, err := exec.Command("curl", "-ksS", "-o", "/dev/null", url).CombinedOutput(); err != nil {
			t.Fatalf("curl: %v %s", err, out)
		}
		return time.Since(start) / n
	}
	for i := 0; i < 100; i++ {
		if exec.Command("curl", "-ks", "-o", "/dev/null", fmt.Sprintf("https://127.0.0.1:%d/", port)).Run() == nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	tr, err := Load(Options{RingBufferSize: 1 << 24, WakeupRecords: 64, TrackRequestHeaders: true})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	if err := tr.Attach(); err != nil {
		t.Fatal(err)
	}
	x, err := tr.LoadTLS(os.Getenv("TLS_COST_SINGLE") == "")
	if err != nil {
		t.Fatal(err)
	}
	defer x.Close()
	// Drain the ring buffer as the collector does: with records left
	// pending, every submit past wakeup_len forces a wakeup.
	rd, err := ringbuf.NewReader(tr.Events())
	if err != nil {
		t.Fatal(err)
	}
	drained := make(chan struct{})
	go func() {
		defer close(drained)
		for {
			if _, err := rd.Read(); errors.Is(err, ringbuf.ErrClosed) {
				return
			}
		}
	}()
	defer func() { rd.Close(); <-drained }()
	pid := srv.Process.Pid
	if err := tr.Trace(uint32(pid)); err != nil {
		t.Fatal(err)
	}
	stats, err := ebpf.EnableStats(0) // BPF_STATS_RUN_TIME
	if err != nil {
		t.Fatal(err)
	}
	defer stats.Close()
	var with, without []time.Duration
	var measured bool
	for round := 0; round < 5; round++ {
		if _, err := x.AttachProcess(pid); err != nil {
			t.Fatal(err)
		}
		if !measured {
			before, _ := x.Stats()
			r0, t0, _ := tr.IOStats()
			with = append(with, run())
			after, _ := x.Stats()
			r1, t1, _ := tr.IOStats()
			var names []string
			for name := range after {
				names = append(names, name)
			}
			sort.Strings(names)
			var hits uint64
			var total time.Duration
			for _, name := range names {
				runs := after[name].RunCount - before[name].RunCount
				rt := after[name].Runtime - before[name].Runtime
				hits += runs
				total += rt
				if runs > 0 {
					t.Logf("%-28s %5.2f runs/req %6d ns/run", name, float64(runs)/n, int64(rt)/int64(runs))
				}
			}
			t.Logf("TLS uprobes: %.2f hits/req, %d ns/req of program time", float64(hits)/n, int64(total)/n)
			t.Logf("socket hooks: %.2f runs/req, %d ns/req", float64(r1-r0)/n, int64(t1-t0)/n)
			measured = true
		} else {
			with = append(with, run())
		}
		if err := x.DetachProcess(pid); err != nil {
			t.Fatal(err)
		}
		without = append(without, run())
	}
	t.Logf("wall per request (curl, keep-alive): with TLS probes %v, without %v", with, without)
	c, _ := tr.ReadCounters()
	if c.Sampled < n {
		t.Errorf("sampled spans %d, want >= %d", c.Sampled, n)
	}
}
