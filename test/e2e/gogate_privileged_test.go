//go:build linux && privileged

package e2e

import (
	"fmt"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ebpftracing/ebpftracingreceiver/internal/kernelprobe"
)

// Tests of the library-level write gate and of how executables the Go
// inspection cannot follow are handled.

// gateWarning starts the collector's one warning when library-level writes
// are off.
const gateWarning = "Go library-level header writes off"

// TestGoHTTP1GateFallback: on this kernel (lockdown integrity) the gate turns
// library-level writes off; a Go gateway's call to a Go backend still
// carries the trace, written at the network level: the backend receives one
// traceparent with the incoming trace id and the gateway's CLIENT span as
// parent, and the collector's log says once why the writer is off.
func TestGoHTTP1GateFallback(t *testing.T) {
	f := startFleetEBPF(t, propagationAll, appSpec{Go, "gw-svc"}, appSpec{Go, "be-svc"})
	apps := f.chainApps("gw-svc", "be-svc")
	for _, pooled := range []string{"0", "1"} {
		tag := "gate-p" + pooled
		u := apps[0].CallURL(apps[1].URL("/headers?chain="+tag), "chain", tag, "pooled", pooled)
		hops := curlChain(t, u, 2, "-H", "traceparent: "+testTraceparent)
		cs := waitChains(t, f.sink, apps, tag)[tag]
		t.Run(tag, func(t *testing.T) { checkChain(t, apps, cs, hops, testTraceparent) })
	}
	out := f.col.Output()
	assert.Equal(t, 1, strings.Count(out, gateWarning), "one gate warning:\n%s", out)
	var line string
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, gateWarning) {
			line = l
		}
	}
	assert.Contains(t, line, "network level (sockops/sk_msg)", "the warning says what Go HTTP/1 falls back to")
	if mode, _ := kernelprobe.ReadLockdown(kernelprobe.LockdownPath); mode != "none" {
		assert.Contains(t, line, "kernel lockdown "+mode, "the warning names the lockdown")
		assert.Contains(t, line, "bpf_probe_write_user refused: verifier: ", "the warning quotes the verifier")
	}
	assert.Contains(t, out, `"go_library_writes": "off: `, "the start line reports the gate")
	t.Logf("gate warning: %s", line)
}

// TestGoBinaryHandling: a normal Go binary, a stripped one, a stripped one
// whose build info names a release the offset table lacks (go1.99) and a
// non-Go program (Python) are selected together. The stripped one is
// followed through the table; the unknown release is skipped by the Go
// inspection with one warning naming it and why, and still traced at the
// network level; Python is traced at the network level without any Go
// message; the others lose nothing; and the collector logs no error.
func TestGoBinaryHandling(t *testing.T) {
	f := startFleetEBPF(t, propagationAll,
		appSpec{Go, "go-svc"}, appSpec{GoStripped, "gostrip-svc"}, appSpec{GoUnknownRelease, "gounk-svc"}, appSpec{Python, "py-svc"})
	goApp, py, unk := f.apps["go-svc"], f.apps["py-svc"], f.apps["gounk-svc"]

	// Whole chains through the followed Go binaries and through Python.
	for _, c := range [][]string{{"go-svc", "py-svc"}, {"gostrip-svc", "py-svc"}, {"py-svc", "go-svc"}} {
		apps := f.chainApps(c...)
		for _, pooled := range []string{"0", "1"} {
			tag := fmt.Sprintf("bin-%s-p%s", c[0], pooled)
			u := apps[0].CallURL(apps[1].URL("/headers?chain="+tag), "chain", tag, "pooled", pooled)
			hops := curlChain(t, u, 2, "-H", "traceparent: "+randomTraceparent())
			cs := waitChains(t, f.sink, apps, tag)[tag]
			t.Run(tag, func(t *testing.T) { checkChain(t, apps, cs, hops, hops[0].Traceparent) })
		}
	}

	// The unknown release: its server spans are complete; its call, if it
	// carries a traceparent, carries one naming its CLIENT span.
	tag := "bin-gounk"
	hops := curlChain(t, unk.CallURL(py.URL("/headers?chain="+tag), "chain", tag), 2, "-H", "traceparent: "+testTraceparent)
	server := f.sink.WaitForSpans(t, All(ServerOf("gounk-svc"), withTag(tag)), 1, spanTimeout)[0]
	assert.Equal(t, "4bf92f3577b34da6a3ce929d0e0e4736", server.TraceID, "%s", server)
	assert.LessOrEqual(t, hops[1].TraceparentCount, 1)
	if hops[1].TraceparentCount == 1 {
		client := f.sink.WaitForSpans(t, All(ClientOf("gounk-svc"), withTag(tag)), 1, spanTimeout)[0]
		assert.Equal(t, "00-"+client.TraceID+"-"+client.SpanID+"-01", hops[1].Traceparent, "%s", client)
	}

	// Nothing lost for the normal Go binary: every request is a span.
	const n = 50
	for i := 0; i < n; i++ {
		require.Equal(t, 200, curlStatus(t, goApp.URL(fmt.Sprintf("/status/200?chain=lost-%d", i))))
	}
	f.sink.WaitForSpans(t, All(ServerOf("go-svc"), func(s Span) bool { return strings.HasPrefix(tagOf(s), "lost-") }), n, spanTimeout)

	out := f.col.Output()
	var skipped []string
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, "Go process without goroutine ancestry") {
			skipped = append(skipped, l)
		}
		assert.NotContains(t, l, "\terror\t", "no error-level line")
		assert.NotContains(t, l, "panic", "no panic")
	}
	require.Len(t, skipped, 1, "one skip line, for the unknown release only:\n%s", out)
	assert.Contains(t, skipped[0], fmt.Sprintf(`"pid": %d`, unk.PID))
	assert.Contains(t, skipped[0], "goapp-go199", "the line names the binary")
	assert.Contains(t, skipped[0], "go1.99", "the line names the release")
	assert.Contains(t, skipped[0], "Go release without known runtime.g offsets", "the line says why")
	t.Logf("skip line: %s", skipped[0])
}
