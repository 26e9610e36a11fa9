// Command server is the benchmark's HTTP server: plain net/http, keep-alive,
// one route.
//
// Usage: server [-stats] [-tls] <port>
//
//	GET /hello  200 "hello\n" (text/plain, Content-Length set)
//	GET /stats  with -stats only: 200 {"requests": N, "with_traceparent": M}
//	anything else 404
//
// It listens on 127.0.0.1:<port> and prints "ready" on stdout once listening.
// With -tls it serves HTTPS (crypto/tls, HTTP/1.1 only) with
// net/http/httptest's built-in certificate.
// It is kept smaller than test/e2e/apps/go (no header echo, no body read) so
// the baseline measures net/http itself and does not change when the
// end-to-end app does.
//
// With -stats (the proxy workload's backend) it counts the requests it
// serves, except those to /stats, and how many of them carried a
// traceparent header, so the bench can tell how many requests the collector
// injected a header into on their way from the proxy. Without -stats the
// handler is exactly the one above, with no counting.
package main

import (
	"flag"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"sync/atomic"
	"time"
)

var hello = []byte("hello\n")

func main() {
	stats := flag.Bool("stats", false, "count requests and traceparent headers, served on GET /stats")
	useTLS := flag.Bool("tls", false, "serve HTTPS (HTTP/1.1) with httptest's certificate")
	flag.Usage = func() { fmt.Fprintln(os.Stderr, "usage: server [-stats] <port>") }
	flag.Parse()
	if flag.NArg() != 1 {
		flag.Usage()
		os.Exit(2)
	}
	ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", flag.Arg(0)))
	if err != nil {
		fmt.Fprintln(os.Stderr, "listen:", err)
		os.Exit(1)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /hello", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		w.Header().Set("Content-Length", "6")
		_, _ = w.Write(hello)
	})
	var h http.Handler = mux
	if *stats {
		var requests, withTP atomic.Int64
		mux.HandleFunc("GET /stats", func(w http.ResponseWriter, _ *http.Request) {
			// Read withTP first: a request counted in it is already
			// counted in requests, so the share never exceeds 1.
			m := withTP.Load()
			n := requests.Load()
			b := []byte(`{"requests": ` + strconv.FormatInt(n, 10) + `, "with_traceparent": ` + strconv.FormatInt(m, 10) + "}\n")
			w.Header().Set("Content-Type", "application/json")
			w.Header().Set("Content-Length", strconv.Itoa(len(b)))
			_, _ = w.Write(b)
		})
		h = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path != "/stats" {
				requests.Add(1)
				if len(r.Header.Values("Traceparent")) > 0 {
					withTP.Add(1)
				}
			}
			mux.ServeHTTP(w, r)
		})
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	if *useTLS {
		ts := httptest.NewUnstartedServer(h)
		ts.Listener.Close()
		ts.Listener = ln
		ts.Config = srv
		ts.StartTLS() // EnableHTTP2 unset: ALPN offers http/1.1 only
		fmt.Println("ready")
		select {}
	}
	fmt.Println("ready")
	if err := srv.Serve(ln); err != nil {
		fmt.Fprintln(os.Stderr, "serve:", err)
		os.Exit(1)
	}
}
