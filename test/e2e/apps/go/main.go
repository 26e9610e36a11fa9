// Command goapp is the Go end-to-end test app: a net/http HTTP/1.1 server.
//
// Usage: goapp <port>   (or PORT in the environment)
//
// With TLS_CERT and TLS_KEY (PEM files) it serves HTTPS, HTTP/1.1 only
// unless TLS_H2=1 (then HTTP/2 by ALPN, Go's default). Outbound https calls
// accept any certificate and speak HTTP/1.1.
//
// A goroutine per connection, keep-alive on, outbound calls with a net/http
// client, each on a new connection (DisableKeepAlives), or on pooled
// keep-alive connections with pooled=1, from the last of a chain of nest=<n>
// goroutines (see nested; held=1: no goroutine of the chain exits before the
// call is done). Endpoints are the same in every language; see
// test/e2e/doc.go.
package main

import (
	"bytes"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"
)

func main() {
	port := os.Getenv("PORT")
	if len(os.Args) > 1 {
		port = os.Args[1]
	}
	host := os.Getenv("BIND_HOST")
	if host == "" {
		host = "127.0.0.1"
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(host, port))
	if err != nil {
		fmt.Fprintln(os.Stderr, "listen:", err)
		os.Exit(1)
	}
	srv := &http.Server{Handler: http.HandlerFunc(handle), ReadHeaderTimeout: 30 * time.Second}
	cert, key := os.Getenv("TLS_CERT"), os.Getenv("TLS_KEY")
	if cert != "" && os.Getenv("TLS_H2") != "1" {
		srv.TLSNextProto = map[string]func(*http.Server, *tls.Conn, http.Handler){}
	}
	fmt.Println("ready")
	serve := func() error { return srv.Serve(ln) }
	if cert != "" {
		serve = func() error { return srv.ServeTLS(ln, cert, key) }
	}
	if err := serve(); err != nil {
		fmt.Fprintln(os.Stderr, "serve:", err)
		os.Exit(1)
	}
}

// client opens a new connection per call: no pooled keep-alive connection.
var client = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true, TLSClientConfig: insecure}}

// pooledClient keeps connections alive: calls reuse them (pooled=1), so the
// transport's writeLoop goroutine writes requests of many callers.
var pooledClient = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 64, TLSClientConfig: insecure}}

// insecure accepts the tests' self-signed certificates for https targets;
// with a TLSClientConfig of its own a Transport speaks HTTP/1.1 over TLS.
var insecure = &tls.Config{InsecureSkipVerify: true}

// nested runs f in the depth-th goroutine of a chain started by the caller:
// the goroutines in between do no I/O and wait for their child, except the
// last one, which exits as soon as it has started f's goroutine (f's parent
// has exited when f runs) unless held. depth <= 1 runs f in a goroutine of
// the caller's.
func nested(depth int, held bool, f func()) {
	done := make(chan struct{})
	var level func(d int)
	level = func(d int) {
		switch {
		case d >= depth:
			f()
			close(done)
		case d == depth-1 && !held:
			go level(d + 1) // and exit
		default:
			child := make(chan struct{})
			go func() { level(d + 1); close(child) }()
			<-child
			<-done
		}
	}
	go level(1)
	<-done
}

// pattern is the first n bytes of 0123456789 repeated: /call's pad and body.
func pattern(n int) []byte {
	if n <= 0 {
		return nil
	}
	return bytes.Repeat([]byte("0123456789"), n/10+1)[:n]
}

// call sends /call's outbound request: to the url query parameter, with
// method (GET), traceparent, pad (an X-Pad header of that many bytes) and body
// (a POST body of that many bytes) from the other parameters.
func call(q url.Values) (*http.Response, error) {
	method := q.Get("method")
	if method == "" {
		method = http.MethodGet
	}
	var body io.Reader
	if method == http.MethodPost {
		n, _ := strconv.Atoi(q.Get("body"))
		body = bytes.NewReader(pattern(n))
	}
	req, err := http.NewRequest(method, q.Get("url"), body)
	if err != nil {
		return nil, err
	}
	if tp := q.Get("traceparent"); tp != "" {
		req.Header.Set("traceparent", tp)
	}
	if n, _ := strconv.Atoi(q.Get("pad")); n > 0 {
		req.Header.Set("X-Pad", string(pattern(n)))
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/octet-stream")
	}
	c := client
	if q.Get("pooled") == "1" {
		c = pooledClient
	}
	depth, _ := strconv.Atoi(q.Get("nest"))
	if depth <= 0 {
		return c.Do(req)
	}
	var resp *http.Response
	nested(depth, q.Get("held") == "1", func() {
		resp, err = c.Do(req)
		if err == nil {
			// Read here: the body is the nested goroutine's I/O too.
			var b []byte
			b, err = io.ReadAll(resp.Body)
			resp.Body.Close()
			resp.Body = io.NopCloser(bytes.NewReader(b))
		}
	})
	return resp, err
}

func handle(w http.ResponseWriter, r *http.Request) {
	traceparent := r.Header.Get("traceparent")
	count := len(r.Header.Values("Traceparent"))
	w.Header().Set("X-Received-Traceparent", traceparent)
	body, err := io.ReadAll(r.Body)
	if err != nil {
		reply(w, http.StatusBadRequest, "read body: "+err.Error())
		return
	}
	switch {
	case r.Method == http.MethodGet && r.URL.Path == "/hello":
		reply(w, http.StatusOK, "hello")
	case r.Method == http.MethodGet && strings.HasPrefix(r.URL.Path, "/status/"):
		code, err := strconv.Atoi(strings.TrimPrefix(r.URL.Path, "/status/"))
		if err != nil || code < 200 || code > 599 {
			reply(w, http.StatusBadRequest, "bad status code")
			return
		}
		reply(w, code, "")
	case r.Method == http.MethodGet && r.URL.Path == "/call":
		q := r.URL.Query()
		if q.Get("url") == "" {
			reply(w, http.StatusBadRequest, "missing url")
			return
		}
		resp, err := call(q)
		if err != nil {
			replyJSON(w, http.StatusBadGateway, map[string]any{"error": err.Error(), "traceparent": traceparent, "traceparent_count": count})
			return
		}
		down, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			replyJSON(w, http.StatusBadGateway, map[string]any{"error": err.Error(), "traceparent": traceparent, "traceparent_count": count})
			return
		}
		replyJSON(w, http.StatusOK, map[string]any{"status": resp.StatusCode, "body": string(down), "traceparent": traceparent, "traceparent_count": count})
	case r.Method == http.MethodGet && r.URL.Path == "/headers":
		// net/http moves Host out of the header map; put it back so the
		// digest covers what was on the wire, as in the other apps.
		all := r.Header.Clone()
		all["Host"] = []string{r.Host}
		merged := map[string]string{}
		var lines []string
		for name, values := range all {
			key := strings.ToLower(name)
			for _, v := range values {
				lines = append(lines, key+": "+v+"\n")
			}
			merged[key] = strings.Join(values, ", ")
		}
		sort.Strings(lines)
		sum := sha256.Sum256([]byte(strings.Join(lines, "")))
		replyJSON(w, http.StatusOK, map[string]any{"headers": merged, "sha256": hex.EncodeToString(sum[:]), "traceparent": traceparent, "traceparent_count": count})
	case r.Method == http.MethodPost && r.URL.Path == "/echo":
		sum := sha256.Sum256(body)
		replyJSON(w, http.StatusOK, map[string]any{"len": len(body), "sha256": hex.EncodeToString(sum[:]), "traceparent": traceparent, "traceparent_count": count})
	case r.Method == http.MethodPost && r.URL.Path == "/mirror":
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		w.WriteHeader(http.StatusOK)
		w.Write(body)
	case r.Method == http.MethodPost && r.URL.Path == "/relay":
		relay(w, r, body)
	default:
		reply(w, http.StatusNotFound, "not found")
	}
}

// relay answers POST /relay?url=U[&n=N]: it POSTs the body to U N times
// (default 1) on one keep-alive connection of its own and answers with the
// last response's body, byte for byte; 502 when that status is not 200. No
// traceparent is forwarded: the receiver propagates one.
func relay(w http.ResponseWriter, r *http.Request, body []byte) {
	q := r.URL.Query()
	n := 1
	if v := q.Get("n"); v != "" {
		n, _ = strconv.Atoi(v)
	}
	tr := &http.Transport{MaxIdleConnsPerHost: 1, TLSClientConfig: insecure}
	defer tr.CloseIdleConnections()
	c := &http.Client{Timeout: 10 * time.Second, Transport: tr}
	status, out := 0, []byte(nil)
	for i := 0; i < n; i++ {
		req, err := http.NewRequest(http.MethodPost, q.Get("url"), bytes.NewReader(body))
		if err != nil {
			replyJSON(w, http.StatusBadGateway, map[string]any{"error": err.Error()})
			return
		}
		req.Header.Set("Content-Type", "application/octet-stream")
		resp, err := c.Do(req)
		if err != nil {
			replyJSON(w, http.StatusBadGateway, map[string]any{"error": err.Error()})
			return
		}
		out, err = io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			replyJSON(w, http.StatusBadGateway, map[string]any{"error": err.Error()})
			return
		}
		status = resp.StatusCode
	}
	code := http.StatusOK
	if status != http.StatusOK {
		code = http.StatusBadGateway
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Length", strconv.Itoa(len(out)))
	w.WriteHeader(code)
	w.Write(out)
}

func reply(w http.ResponseWriter, code int, body string) {
	if code != http.StatusNoContent && code != http.StatusNotModified {
		w.Header().Set("Content-Type", "text/plain")
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	}
	w.WriteHeader(code)
	if code != http.StatusNoContent && code != http.StatusNotModified {
		io.WriteString(w, body)
	}
}

func replyJSON(w http.ResponseWriter, code int, v map[string]any) {
	buf, err := json.Marshal(v)
	if err != nil {
		reply(w, http.StatusInternalServerError, err.Error())
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(buf)))
	w.WriteHeader(code)
	w.Write(buf)
}
