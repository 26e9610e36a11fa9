//go:build linux

package e2e

import (
	"bufio"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const testTraceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

// get sends GET url with extra headers and returns status, headers and body.
func get(t *testing.T, c *http.Client, u string, hdr map[string]string) (int, http.Header, []byte) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, u, nil)
	require.NoError(t, err)
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := c.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, resp.Header, body
}

// rawRequest writes req on a new connection to addr and reads one response.
func rawRequest(t *testing.T, addr, req string) PipelinedResponse {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	require.NoError(t, err)
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(30 * time.Second))
	_, err = io.WriteString(conn, req)
	require.NoError(t, err)
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return PipelinedResponse{Status: resp.StatusCode, Header: resp.Header, Body: body}
}

// callChain GETs a chain of /call requests (see ChainURL) and returns its
// hops, sending the extra headers hdr and requiring n hops, each /call answered 200 with a 200 downstream.
func callChain(t *testing.T, c *http.Client, u string, hdr map[string]string, n int) []Hop {
	t.Helper()
	code, _, body := get(t, c, u, hdr)
	require.Equal(t, 200, code, "%s", body)
	hops, err := ParseChain(string(body))
	require.NoError(t, err, "%s", body)
	require.Len(t, hops, n, "%s", body)
	for i, hop := range hops[:n-1] {
		require.Equal(t, 200, hop.Status, "hop %d: %s", i, body)
	}
	return hops
}

// TestAppsServe starts every test app and checks every endpoint, so the
// privileged tests can trust the apps. It needs no privileges.
func TestAppsServe(t *testing.T) {
	ports := FreePorts(t, len(AllLangs()))
	apps := map[Lang]*App{}
	for i, l := range AllLangs() {
		apps[l] = StartApp(t, l, ports[i], DefaultService(l))
		t.Logf("%s app ready in %v (pid %d)", l, apps[l].StartUp.Round(time.Millisecond), apps[l].PID)
	}
	t.Run("chain", func(t *testing.T) {
		chain := []*App{apps[Python], apps[Node], apps[Java], apps[Go]}
		c := NewClient(t)
		hops := callChain(t, c, ChainURL(chain, "/headers", "chain", "x"), map[string]string{"traceparent": testTraceparent}, len(chain))
		assert.Equal(t, testTraceparent, hops[0].Traceparent)
		assert.Equal(t, 1, hops[0].TraceparentCount)
		for i, h := range hops[1:] {
			// Nothing propagates the context without the collector.
			assert.Equal(t, 0, h.TraceparentCount, "hop %d", i+1)
			assert.Empty(t, h.Traceparent, "hop %d", i+1)
		}
		last := hops[len(hops)-1]
		assert.Equal(t, apps[Go].Addr(), last.Headers["host"])
	})
	for i, l := range AllLangs() {
		app := apps[l]
		other := apps[AllLangs()[(i+1)%len(AllLangs())]]
		t.Run(string(l), func(t *testing.T) {
			c := NewClient(t)

			t.Run("hello", func(t *testing.T) {
				code, hdr, body := get(t, c, app.URL("/hello"), nil)
				assert.Equal(t, 200, code)
				assert.Equal(t, "hello", string(body))
				assert.Contains(t, hdr, "X-Received-Traceparent")
				assert.Empty(t, hdr.Get("X-Received-Traceparent"))

				code, hdr, _ = get(t, c, app.URL("/hello?i=7"), map[string]string{"traceparent": testTraceparent})
				assert.Equal(t, 200, code)
				assert.Equal(t, testTraceparent, hdr.Get("X-Received-Traceparent"))
			})

			t.Run("status", func(t *testing.T) {
				for _, want := range []int{200, 201, 204, 404, 503} {
					code, hdr, _ := get(t, c, app.URL(fmt.Sprintf("/status/%d", want)), map[string]string{"traceparent": testTraceparent})
					assert.Equal(t, want, code)
					assert.Equal(t, testTraceparent, hdr.Get("X-Received-Traceparent"), "status %d", want)
				}
			})

			t.Run("echo", func(t *testing.T) {
				body := make([]byte, 1<<20)
				_, _ = rand.Read(body)
				sum := sha256.Sum256(body)
				req, err := http.NewRequest(http.MethodPost, app.URL("/echo"), strings.NewReader(string(body)))
				require.NoError(t, err)
				req.Header.Set("traceparent", testTraceparent)
				resp, err := c.Do(req)
				require.NoError(t, err)
				defer resp.Body.Close()
				require.Equal(t, 200, resp.StatusCode)
				var got struct {
					Len         int    `json:"len"`
					SHA256      string `json:"sha256"`
					Traceparent string `json:"traceparent"`
				}
				require.NoError(t, json.NewDecoder(resp.Body).Decode(&got))
				assert.Equal(t, len(body), got.Len)
				assert.Equal(t, hex.EncodeToString(sum[:]), got.SHA256)
				assert.Equal(t, testTraceparent, got.Traceparent)
				assert.Equal(t, testTraceparent, resp.Header.Get("X-Received-Traceparent"))
			})

			t.Run("echo with curl", func(t *testing.T) {
				// The privileged TestLargeBody posts this way; curl may send
				// Expect: 100-continue, which every app must answer at once.
				file := filepath.Join(t.TempDir(), "body")
				body := make([]byte, 1<<20)
				_, _ = rand.Read(body)
				require.NoError(t, os.WriteFile(file, body, 0o600))
				sum := sha256.Sum256(body)
				start := time.Now()
				out := Curl(t, "--fail", "--data-binary", "@"+file, "-H", "Content-Type: application/octet-stream", app.URL("/echo"))
				assert.Less(t, time.Since(start), 900*time.Millisecond, "curl waited for 100 Continue?")
				var got struct {
					Len    int    `json:"len"`
					SHA256 string `json:"sha256"`
				}
				require.NoError(t, json.Unmarshal([]byte(out), &got), out)
				assert.Equal(t, len(body), got.Len)
				assert.Equal(t, hex.EncodeToString(sum[:]), got.SHA256)
			})

			t.Run("call", func(t *testing.T) {
				for _, tc := range []struct {
					path     string
					status   int
					body     string
					withBody bool
				}{
					{"/hello", 200, "hello", true},
					{"/status/503", 503, "", false},
				} {
					target := other.URL(tc.path)
					code, hdr, body := get(t, c, app.URL("/call?url="+url.QueryEscape(target)), map[string]string{"traceparent": testTraceparent})
					require.Equal(t, 200, code, "%s", body)
					assert.Equal(t, testTraceparent, hdr.Get("X-Received-Traceparent"))
					var got struct {
						Status      int    `json:"status"`
						Body        string `json:"body"`
						Traceparent string `json:"traceparent"`
					}
					require.NoError(t, json.Unmarshal(body, &got), "%s", body)
					assert.Equal(t, tc.status, got.Status, "call %s", target)
					if tc.withBody {
						assert.Equal(t, tc.body, got.Body)
					}
					assert.Equal(t, testTraceparent, got.Traceparent)
				}
				code, _, body := get(t, c, app.URL("/call?url="+url.QueryEscape("http://127.0.0.1:1/hello")), nil)
				assert.Equal(t, 502, code, "%s", body)
			})

			t.Run("headers", func(t *testing.T) {
				// A raw request, so the test knows every header field sent.
				sent := [][2]string{
					{"Host", app.Addr()},
					{"User-Agent", "e2e-headers"},
					{"X-Test-One", "1"},
					{"X-Test-Two", "two words, and a comma"},
					{"traceparent", testTraceparent},
				}
				var lines []string
				var req strings.Builder
				req.WriteString("GET /headers HTTP/1.1\r\n")
				for _, h := range sent {
					req.WriteString(h[0] + ": " + h[1] + "\r\n")
					lines = append(lines, strings.ToLower(h[0])+": "+h[1]+"\n")
				}
				req.WriteString("\r\n")
				sort.Strings(lines)
				wantSum := sha256.Sum256([]byte(strings.Join(lines, "")))

				conn, err := net.Dial("tcp", app.Addr())
				require.NoError(t, err)
				defer conn.Close()
				_, err = io.WriteString(conn, req.String())
				require.NoError(t, err)
				resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
				require.NoError(t, err)
				defer resp.Body.Close()
				require.Equal(t, 200, resp.StatusCode)
				var got struct {
					Headers     map[string]string `json:"headers"`
					SHA256      string            `json:"sha256"`
					Traceparent string            `json:"traceparent"`
				}
				require.NoError(t, json.NewDecoder(resp.Body).Decode(&got))
				for _, h := range sent {
					assert.Equal(t, h[1], got.Headers[strings.ToLower(h[0])], h[0])
				}
				assert.Len(t, got.Headers, len(sent), "%v", got.Headers)
				assert.Equal(t, hex.EncodeToString(wantSum[:]), got.SHA256)
				assert.Equal(t, testTraceparent, got.Traceparent)
			})

			t.Run("traceparent_count", func(t *testing.T) {
				const second = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
				for _, tc := range []struct {
					sent  []string
					first string
				}{
					{nil, ""},
					{[]string{testTraceparent}, testTraceparent},
					{[]string{testTraceparent, second}, testTraceparent},
				} {
					var req strings.Builder
					req.WriteString("GET /headers HTTP/1.1\r\nHost: " + app.Addr() + "\r\n")
					for _, tp := range tc.sent {
						req.WriteString("traceparent: " + tp + "\r\n")
					}
					req.WriteString("Connection: close\r\n\r\n")
					resp := rawRequest(t, app.Addr(), req.String())
					require.Equal(t, 200, resp.Status, "%s", resp.Body)
					hops, err := ParseChain(string(resp.Body))
					require.NoError(t, err)
					assert.Equal(t, len(tc.sent), hops[0].TraceparentCount, "%s", resp.Body)
					assert.Equal(t, tc.first, hops[0].Traceparent, "%s", resp.Body)
					assert.Equal(t, tc.first, resp.Header.Get("X-Received-Traceparent"))
				}
			})

			t.Run("call options", func(t *testing.T) {
				// traceparent=: the app sets the header itself.
				hops := callChain(t, c, app.CallURL(other.URL("/headers"), "traceparent", testTraceparent), nil, 2)
				assert.Equal(t, 0, hops[0].TraceparentCount)
				assert.Equal(t, testTraceparent, hops[1].Traceparent)
				assert.Equal(t, 1, hops[1].TraceparentCount)
				assert.Equal(t, testTraceparent, hops[1].Headers["traceparent"])

				// pad=: an X-Pad header of that many bytes; no traceparent.
				for _, n := range []int{2000, 8000} {
					hops = callChain(t, c, app.CallURL(other.URL("/headers"), "pad", fmt.Sprint(n)), nil, 2)
					assert.Equal(t, string(Pattern(n)), hops[1].Headers["x-pad"], "pad=%d", n)
					assert.Equal(t, other.Addr(), hops[1].Headers["host"])
					assert.Equal(t, 0, hops[1].TraceparentCount)
					assert.NotContains(t, hops[1].Headers, "traceparent")
				}

				// method=POST&body=: a body of that many bytes.
				const n = 1 << 20
				sum := sha256.Sum256(Pattern(n))
				hops = callChain(t, c, app.CallURL(other.URL("/echo"), "method", "POST", "body", fmt.Sprint(n)), nil, 2)
				assert.Equal(t, n, hops[1].Len)
				assert.Equal(t, hex.EncodeToString(sum[:]), hops[1].SHA256)
			})

			t.Run("call opens a new connection", func(t *testing.T) {
				var mu sync.Mutex
				conns, closes := 0, 0
				down := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					_, _ = io.Copy(io.Discard, r.Body)
					mu.Lock()
					if r.Close {
						closes++
					}
					mu.Unlock()
					fmt.Fprint(w, "hello")
				}))
				down.Config.ConnState = func(_ net.Conn, st http.ConnState) {
					if st == http.StateNew {
						mu.Lock()
						conns++
						mu.Unlock()
					}
				}
				down.Start()
				t.Cleanup(down.Close)
				for i := range 3 {
					params := []string{"i", fmt.Sprint(i)}
					if i == 2 {
						params = append(params, "method", "POST", "body", "10")
					}
					code, _, body := get(t, c, app.CallURL(down.URL+"/hello", params...), nil)
					require.Equal(t, 200, code, "%s", body)
				}
				mu.Lock()
				defer mu.Unlock()
				assert.Equal(t, 3, conns, "connections opened for 3 calls")
				assert.Equal(t, 3, closes, "requests with Connection: close")
			})

			t.Run("keep-alive", func(t *testing.T) {
				kc := NewClient(t)
				reused := 0
				for i := range 4 {
					req, err := http.NewRequest(http.MethodGet, app.URL(fmt.Sprintf("/hello?ka=%d", i)), nil)
					require.NoError(t, err)
					req = req.WithContext(httptrace.WithClientTrace(req.Context(), &httptrace.ClientTrace{
						GotConn: func(info httptrace.GotConnInfo) {
							if info.Reused {
								reused++
							}
						},
					}))
					resp, err := kc.Do(req)
					require.NoError(t, err)
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					require.Equal(t, 200, resp.StatusCode)
				}
				assert.Equal(t, 3, reused, "connection reuse")
			})

			t.Run("pipelining", func(t *testing.T) {
				resps := Pipeline(t, app.Addr(), []string{"/hello", "/status/201", "/status/202"})
				require.Len(t, resps, 3)
				assert.Equal(t, 200, resps[0].Status)
				assert.Equal(t, "hello", string(resps[0].Body))
				assert.Equal(t, 201, resps[1].Status)
				assert.Equal(t, 202, resps[2].Status)
			})
		})
	}
}
