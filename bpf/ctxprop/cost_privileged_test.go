//go:build linux && privileged

package ctxprop

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"testing"

	"github.com/cilium/ebpf"
)

// A Python server whose GET /call?port=N&hdrs=K calls 127.0.0.1:N/ with
// urllib, adding K headers of 100 bytes each, and returns the downstream's
// body.
const pyCostServer = `
import sys, urllib.request, urllib.parse
from http.server import ThreadingHTTPServer, BaseHTTPRequestHandler
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def do_GET(self):
        q = urllib.parse.parse_qs(urllib.parse.urlparse(self.path).query)
        req = urllib.request.Request("http://127.0.0.1:%s/" % q["port"][0])
        for i in range(int(q["hdrs"][0])):
            req.add_header("X-Header-%03d" % i, "v" * 84)
        body = urllib.request.urlopen(req).read()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
s = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H)
print("ready", flush=True)
s.serve_forever()
`

// TestSkMsgCost measures the sk_msg program's time per run (bpf_stats) on
// requests that get a traceparent injected: a small Python urllib GET (one
// write, ~120 bytes) and one with 30 headers of 100 bytes (~3.1 KiB).
func TestSkMsgCost(t *testing.T) {
	tr, p, rd := attached(t)
	_, downPort := startPy(t)
	cmd := exec.Command("python3", "-c", pyCostServer, "0")
	port := freePort(t)
	cmd.Args[len(cmd.Args)-1] = fmt.Sprint(port)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	if _, err := bufio.NewReader(out).ReadString('\n'); err != nil {
		t.Fatal(err)
	}
	if err := tr.Trace(uint32(cmd.Process.Pid)); err != nil {
		t.Fatal(err)
	}
	stats, err := ebpf.EnableStats(0) // BPF_STATS_RUN_TIME
	if err != nil {
		t.Fatal(err)
	}
	defer stats.Close()
	for _, hdrs := range []int{0, 30} {
		before, err := p.objs.CtxpropSkMsg.Stats()
		if err != nil {
			t.Fatal(err)
		}
		const n = 200
		for i := 0; i < n; i++ {
			if got := get(t, fmt.Sprintf("http://127.0.0.1:%d/call?port=%d&hdrs=%d", port, downPort, hdrs)); len(got) != 55 {
				t.Fatalf("request %d: downstream received %q", i, got)
			}
			read(t, rd, 2)
		}
		after, err := p.objs.CtxpropSkMsg.Stats()
		if err != nil {
			t.Fatal(err)
		}
		runs := after.RunCount - before.RunCount
		if runs < n {
			t.Fatalf("sk_msg ran %d times for %d requests", runs, n)
		}
		t.Logf("%d extra headers: sk_msg %d runs, %d ns per run", hdrs, runs, uint64(after.Runtime-before.Runtime)/runs)
	}
}

func freePort(t *testing.T) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}
