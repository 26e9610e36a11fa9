//go:build linux && privileged

package e2e

import (
	"bufio"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestREDMetricsConfig runs deploy/red-metrics.yaml as shipped (ebpf_tracing
// → span_metrics → prometheus), sends real curl requests to a traced server
// and scrapes /metrics: per method and status, the request count is what was
// sent, and the duration histogram's sum and buckets agree with curl's own
// timing of the same requests.
func TestREDMetricsConfig(t *testing.T) {
	const service = "red-go-svc"
	// (method, status) → requests; none is GET 200, which the warm-up uses.
	type key struct {
		method string
		status int
	}
	sends := []struct {
		key
		n    int
		args []string
		path string
	}{
		{key{"POST", 200}, 30, []string{"-X", "POST", "--data-binary", "0123456789"}, "/echo"},
		{key{"GET", 404}, 12, nil, "/status/404"},
		{key{"GET", 503}, 7, nil, "/status/503"},
	}

	app := StartApp(t, Go, FreePort(t), service)
	promPort := FreePort(t)
	b, err := os.ReadFile(filepath.Join(RepoRoot(t), "deploy", "red-metrics.yaml"))
	require.NoError(t, err)
	col := StartCollectorYAML(t, string(b), []string{
		"EBPF_OPEN_PORTS=" + strconv.Itoa(app.Port),
		fmt.Sprintf("PROMETHEUS_ENDPOINT=127.0.0.1:%d", promPort),
	}, 0)
	metricsURL := fmt.Sprintf("http://127.0.0.1:%d/metrics", promPort)

	// Warm-up: GET /status/200 until its series shows (the receiver has
	// found the app and the connector has flushed once).
	calls := func(samples []promSample, method string, status int) (float64, bool) {
		return sumOf(samples, "traces_span_metrics_calls_total", map[string]string{
			"job": service, "http_request_method": method, "http_response_status_code": strconv.Itoa(status),
		})
	}
	deadline := time.Now().Add(30 * time.Second)
	for i := 0; ; i++ {
		curlStatus(t, app.URL(fmt.Sprintf("%s?e2e_warmup=%d", warmupPath, i)))
		if _, ok := calls(scrape(t, metricsURL), "GET", 200); ok {
			break
		}
		require.False(t, time.Now().After(deadline), "no GET 200 series after 30 s; collector:\n%s\nmetrics:\n%s", col.Output(), scrapeText(t, metricsURL))
		time.Sleep(500 * time.Millisecond)
	}

	// Curl's own timing of each request, in ms.
	var clientMS []float64
	for _, s := range sends {
		for i := range s.n {
			out := Curl(t, append(append([]string{"-o", "/dev/null", "-w", "%{http_code} %{time_total}"}, s.args...), app.URL(fmt.Sprintf("%s?i=%d", s.path, i)))...)
			var code int
			var secs float64
			_, err := fmt.Sscanf(out, "%d %g", &code, &secs)
			require.NoError(t, err, "curl -w %q", out)
			require.Equal(t, s.status, code, "%s %s", s.method, s.path)
			clientMS = append(clientMS, secs*1000)
		}
	}
	var clientSum, clientMax float64
	for _, ms := range clientMS {
		clientSum += ms
		clientMax = max(clientMax, ms)
	}

	// The connector flushes every 5 s: wait for the counts, then one more
	// flush to see that no extra request is counted.
	wantTotal := 0
	for _, s := range sends {
		wantTotal += s.n
	}
	var samples []promSample
	deadline = time.Now().Add(30 * time.Second)
	for {
		samples = scrape(t, metricsURL)
		got := 0.0
		for _, s := range sends {
			n, _ := calls(samples, s.method, s.status)
			got += n
		}
		if int(got) >= wantTotal || time.Now().After(deadline) {
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	time.Sleep(6 * time.Second)
	samples = scrape(t, metricsURL)

	var serverSum float64
	for _, s := range sends {
		labels := map[string]string{"job": service, "http_request_method": s.method, "http_response_status_code": strconv.Itoa(s.status)}
		n, _ := calls(samples, s.method, s.status)
		assert.EqualValues(t, s.n, n, "calls of %s %d", s.method, s.status)
		count, _ := sumOf(samples, "traces_span_metrics_duration_milliseconds_count", labels)
		assert.EqualValues(t, s.n, count, "duration count of %s %d", s.method, s.status)
		sum, _ := sumOf(samples, "traces_span_metrics_duration_milliseconds_sum", labels)
		serverSum += sum
		// Every request took at most clientMax on the client: the bucket
		// holding clientMax holds them all.
		le := bucketAtLeast(t, samples, labels, clientMax)
		inLE, _ := sumOf(samples, "traces_span_metrics_duration_milliseconds_bucket", with(labels, "le", le))
		assert.EqualValues(t, s.n, inLE, "%s %d requests with le=%s (client max %.2f ms)", s.method, s.status, le, clientMax)
	}
	// The server's time is inside the client's: more than nothing, at most
	// what curl measured around the same requests.
	t.Logf("duration sum: server %.2f ms, curl %.2f ms over %d requests", serverSum, clientSum, wantTotal)
	assert.Greater(t, serverSum, 0.0, "server duration sum")
	assert.LessOrEqual(t, serverSum, clientSum, "server duration sum exceeds curl's time_total sum")
	// No series names a requested path: at most its route (/status/* from
	// the routes heuristic), never /status/200.
	for _, s := range samples {
		for _, v := range s.labels {
			assert.NotRegexp(t, `/status/[0-9]`, v, "a label carries a path: %v", s)
		}
	}
	if t.Failed() {
		t.Logf("metrics:\n%s", scrapeText(t, metricsURL))
	}
}

// promSample is one line of the Prometheus text format.
type promSample struct {
	name   string
	labels map[string]string
	value  float64
}

func scrapeText(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, resp.StatusCode, "%s", b)
	return string(b)
}

// scrape reads url's Prometheus text exposition.
func scrape(t *testing.T, url string) []promSample {
	t.Helper()
	var out []promSample
	sc := bufio.NewScanner(strings.NewReader(scrapeText(t, url)))
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		s, err := parsePromLine(line)
		require.NoError(t, err, "line %q", line)
		out = append(out, s)
	}
	return out
}

// parsePromLine parses `name{a="x",b="y"} value [timestamp]`.
func parsePromLine(line string) (promSample, error) {
	s := promSample{labels: map[string]string{}}
	i := strings.IndexAny(line, "{ ")
	if i < 0 {
		return s, fmt.Errorf("no value")
	}
	s.name, line = line[:i], line[i:]
	if strings.HasPrefix(line, "{") {
		line = line[1:]
		for !strings.HasPrefix(line, "}") {
			eq := strings.Index(line, `="`)
			if eq < 0 {
				return s, fmt.Errorf("bad labels")
			}
			name := strings.TrimPrefix(line[:eq], ",")
			line = line[eq+2:]
			var v strings.Builder
			for {
				if line == "" {
					return s, fmt.Errorf("unterminated label value")
				}
				c := line[0]
				line = line[1:]
				if c == '\\' && line != "" {
					switch line[0] {
					case 'n':
						v.WriteByte('\n')
					default:
						v.WriteByte(line[0])
					}
					line = line[1:]
					continue
				}
				if c == '"' {
					break
				}
				v.WriteByte(c)
			}
			s.labels[name] = v.String()
			line = strings.TrimPrefix(line, ",")
		}
		line = line[1:]
	}
	f := strings.Fields(line)
	if len(f) == 0 {
		return s, fmt.Errorf("no value")
	}
	v, err := strconv.ParseFloat(f[0], 64)
	s.value = v
	return s, err
}

// sumOf adds the values of the samples of metric name whose labels include
// want; ok is false when none matched.
func sumOf(samples []promSample, name string, want map[string]string) (sum float64, ok bool) {
next:
	for _, s := range samples {
		if s.name != name {
			continue
		}
		for k, v := range want {
			if s.labels[k] != v {
				continue next
			}
		}
		sum += s.value
		ok = true
	}
	return sum, ok
}

func with(m map[string]string, k, v string) map[string]string {
	out := map[string]string{k: v}
	for a, b := range m {
		out[a] = b
	}
	return out
}

// bucketAtLeast is the le label of the smallest histogram bucket of the
// series labels whose bound is >= ms.
func bucketAtLeast(t *testing.T, samples []promSample, labels map[string]string, ms float64) string {
	t.Helper()
	var bounds []float64
	for _, s := range samples {
		if s.name != "traces_span_metrics_duration_milliseconds_bucket" {
			continue
		}
		if _, ok := sumOf([]promSample{s}, s.name, labels); !ok {
			continue
		}
		b, err := strconv.ParseFloat(s.labels["le"], 64)
		require.NoError(t, err, "le %q", s.labels["le"])
		bounds = append(bounds, b)
	}
	require.NotEmpty(t, bounds, "no buckets for %v", labels)
	slices.Sort(bounds)
	for _, b := range bounds {
		if b >= ms {
			if math.IsInf(b, 1) {
				return "+Inf"
			}
			return strconv.FormatFloat(b, 'f', -1, 64)
		}
	}
	return "+Inf"
}
