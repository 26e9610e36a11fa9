//go:build linux && privileged

package e2e

import (
	"bytes"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// tlsEcho is what the backend's POST /echo answered through the proxy.
type tlsEcho struct {
	Len         int    `json:"len"`
	SHA256      string `json:"sha256"`
	Traceparent string `json:"traceparent"`
	Count       int    `json:"traceparent_count"`
}

// tlsChain is one request sent through the proxy with its own incoming
// context.
type tlsChain struct {
	traceID, spanID string
	echo            tlsEcho
	err             error
}

// postThroughProxy sends POST /echo?chain=<tag> with body and the chain's
// traceparent over HTTPS to the proxy.
func postThroughProxy(client *http.Client, proxy *App, tag string, c *tlsChain, body []byte) {
	req, err := http.NewRequest(http.MethodPost, "https://"+proxy.Addr()+"/echo?chain="+tag, bytes.NewReader(body))
	if err != nil {
		c.err = err
		return
	}
	req.Header.Set("traceparent", "00-"+c.traceID+"-"+c.spanID+"-01")
	req.Header.Set("Content-Type", "application/octet-stream")
	resp, err := client.Do(req)
	if err != nil {
		c.err = err
		return
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		c.err = err
		return
	}
	if resp.StatusCode != http.StatusOK {
		c.err = fmt.Errorf("status %d: %s", resp.StatusCode, raw)
		return
	}
	c.err = json.Unmarshal(raw, &c.echo)
}

// TestNginxTLSTermination: curl-like HTTPS clients → nginx terminating TLS
// (one worker, upstream keep-alive pool) → a plaintext Python backend, with
// context_propagation all. nginx's SERVER span comes from the plaintext it
// hands to OpenSSL and takes each request's own incoming traceparent. One
// request at a time, nginx's upstream call continues that trace: the
// backend receives 00-<trace>-<nginx CLIENT span>-01 and its SERVER span is
// that CLIENT span's child. 50 at once on the one worker, the trace splits
// at the proxy as the README says: where nginx holds several requests, its
// upstream call gets no guessed parent, so the backend receives either the
// request's own trace id or a new one, never another request's. Every 64 KiB
// body arrives intact both ways (the backend's sha256).
func TestNginxTLSTermination(t *testing.T) {
	sink := StartSink(t)
	ports := FreePorts(t, 2)
	backend := StartApp(t, Python, ports[0], "tls-backend")
	certs := t.TempDir()
	selfSigned(t, certs)
	proxy := startNginx(t, "tls-nginx", ports[1], backend.Port, certs)
	// nginx writes its process title over its environment, so
	// OTEL_SERVICE_NAME cannot be read from /proc/<pid>/environ: the
	// service is named after the executable.
	proxy.Service = "nginx"
	StartCollector(t, CollectorConfig{
		Instrument:   []Selector{PortsSelector(ports...)},
		SinkEndpoint: sink.Endpoint(),
		EBPF:         propagationAll,
	})
	waitTraced(t, sink, backend)
	waitHTTPS(t, sink, proxy)

	body := Pattern(64 << 10)
	sum := sha256.Sum256(body)
	wantSum := hex.EncodeToString(sum[:])
	tr := &http.Transport{
		TLSClientConfig:     &tls.Config{InsecureSkipVerify: true}, // the test's self-signed certificate
		MaxIdleConnsPerHost: 64,
	}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 30 * time.Second}
	newChains := func(n int) []tlsChain {
		cs := make([]tlsChain, n)
		for i := range cs {
			cs[i] = tlsChain{traceID: randomHex(t, 32), spanID: randomHex(t, 16)}
		}
		return cs
	}
	checkBodies := func(cs []tlsChain) {
		for i, c := range cs {
			require.NoError(t, c.err, "chain %d", i)
			require.Equal(t, len(body), c.echo.Len, "chain %d: body length at the backend", i)
			require.Equal(t, wantSum, c.echo.SHA256, "chain %d: body at the backend", i)
			require.LessOrEqual(t, c.echo.Count, 1, "chain %d: traceparent fields at the backend", i)
		}
	}
	https := WithAttr("url.scheme", "https")

	t.Run("sequential", func(t *testing.T) {
		cs := newChains(10)
		for i := range cs {
			postThroughProxy(client, proxy, fmt.Sprintf("seq-%d", i), &cs[i], body)
		}
		checkBodies(cs)
		for i, c := range cs {
			q := WithAttr("url.query", fmt.Sprintf("chain=seq-%d", i))
			srv := sink.WaitForSpans(t, All(ServerOf(proxy.Service), https, q), 1, spanTimeout)[0]
			assert.Equal(t, c.traceID, srv.TraceID, "chain %d: nginx SERVER span trace", i)
			assert.Equal(t, c.spanID, srv.ParentSpanID, "chain %d: nginx SERVER span parent", i)
			cli := sink.WaitForSpans(t, All(ClientOf(proxy.Service), func(s Span) bool { return s.TraceID == c.traceID }), 1, spanTimeout)[0]
			assert.Equal(t, srv.SpanID, cli.ParentSpanID, "chain %d: nginx CLIENT span parent", i)
			assert.Equal(t, "00-"+c.traceID+"-"+cli.SpanID+"-01", c.echo.Traceparent, "chain %d: traceparent the backend received", i)
			be := sink.WaitForSpans(t, All(ServerOf(backend.Service), q), 1, spanTimeout)[0]
			assert.Equal(t, c.traceID, be.TraceID, "chain %d: backend SERVER span trace", i)
			assert.Equal(t, cli.SpanID, be.ParentSpanID, "chain %d: backend SERVER span parent", i)
		}
	})

	t.Run("concurrent", func(t *testing.T) {
		cs := newChains(50)
		owner := map[string]int{}
		for i, c := range cs {
			owner[c.traceID] = i
		}
		var wg sync.WaitGroup
		start := make(chan struct{})
		for i := range cs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				postThroughProxy(client, proxy, fmt.Sprintf("conc-%d", i), &cs[i], body)
			}()
		}
		close(start)
		wg.Wait()
		checkBodies(cs)
		own, fresh := 0, 0
		for i, c := range cs {
			// The proxy always injects one: the request's own context or,
			// where it was not certain, a new trace of nginx's.
			parts := strings.Split(c.echo.Traceparent, "-")
			require.Len(t, parts, 4, "chain %d: traceparent %q the backend received", i, c.echo.Traceparent)
			switch j, known := owner[parts[1]]; {
			case !known:
				fresh++
			case j == i:
				own++
			default:
				t.Errorf("chain %d: the backend received chain %d's trace id", i, j)
			}
			q := WithAttr("url.query", fmt.Sprintf("chain=conc-%d", i))
			srv := sink.WaitForSpans(t, All(ServerOf(proxy.Service), https, q), 1, spanTimeout)[0]
			assert.Equal(t, c.traceID, srv.TraceID, "chain %d: nginx SERVER span trace", i)
			assert.Equal(t, c.spanID, srv.ParentSpanID, "chain %d: nginx SERVER span parent", i)
			be := sink.WaitForSpans(t, All(ServerOf(backend.Service), q), 1, spanTimeout)[0]
			assert.Equal(t, parts[1], be.TraceID, "chain %d: backend SERVER span trace", i)
			assert.Equal(t, parts[2], be.ParentSpanID, "chain %d: backend SERVER span parent", i)
		}
		t.Logf("50 concurrent requests through nginx: %d kept their trace past the proxy, %d split there (new trace), 0 wrong", own, fresh)
	})
}
