// Command proxy is the middle tier of the bench's proxy workloads
// (wrk → proxy → backend): plain net/http, standard library only.
//
// Usage: proxy [-new-conn] <port> <backend port>
//
//	GET /hello        one GET http://127.0.0.1:<backend port>/hello; 200 with
//	                  the backend's body (text/plain, Content-Length set), 502
//	                  when the backend fails or answers other than 200
//	POST /close-idle  closes the idle connections to the backend; 204
//	anything else     404
//
// It listens on 127.0.0.1:<port> and prints "ready" on stdout once listening.
//
// By default the outgoing client keeps its connections to the backend alive,
// one idle connection kept per concurrent request (up to 1024), as a
// net/http service calling another one usually does. The receiver injects
// traceparent only on connections that a traced process opened after the
// collector started (bpf/ctxprop's sockops adds a socket to its sockhash when
// it connects), so the bench calls POST /close-idle before every run, while
// no collector runs: each run then opens its own backend connections, under
// that run's collector if any.
//
// With -new-conn the client opens a NEW connection to the backend for every
// request (Transport.DisableKeepAlives): a TCP handshake and teardown per
// request on loopback, which the connection-level programs (sockops, the
// socket state tracepoints) pay for per request instead of per run.
package main

import (
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"time"
)

func main() {
	newConn := flag.Bool("new-conn", false, "open a new backend connection per request (no keep-alive)")
	flag.Usage = func() { fmt.Fprintln(os.Stderr, "usage: proxy [-new-conn] <port> <backend port>") }
	flag.Parse()
	if flag.NArg() != 2 {
		flag.Usage()
		os.Exit(2)
	}
	backendURL := "http://" + net.JoinHostPort("127.0.0.1", flag.Arg(1)) + "/hello"
	ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", flag.Arg(0)))
	if err != nil {
		fmt.Fprintln(os.Stderr, "listen:", err)
		os.Exit(1)
	}
	transport := &http.Transport{
		Proxy:               nil, // never an HTTP_PROXY from the environment
		DisableKeepAlives:   *newConn,
		MaxIdleConnsPerHost: 1024, // the default 2 would close most connections under wrk -c32
	}
	client := &http.Client{Transport: transport, Timeout: 10 * time.Second}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /hello", func(w http.ResponseWriter, r *http.Request) {
		req, err := http.NewRequestWithContext(r.Context(), http.MethodGet, backendURL, nil)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		resp, err := client.Do(req)
		if err != nil {
			http.Error(w, "backend: "+err.Error(), http.StatusBadGateway)
			return
		}
		body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusOK {
			http.Error(w, fmt.Sprintf("backend: %s %v", resp.Status, err), http.StatusBadGateway)
			return
		}
		w.Header().Set("Content-Type", "text/plain")
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		_, _ = w.Write(body)
	})
	mux.HandleFunc("POST /close-idle", func(w http.ResponseWriter, _ *http.Request) {
		transport.CloseIdleConnections()
		w.WriteHeader(http.StatusNoContent)
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	fmt.Println("ready")
	if err := srv.Serve(ln); err != nil {
		fmt.Fprintln(os.Stderr, "serve:", err)
		os.Exit(1)
	}
}
