// Command proxy is the middle tier of the bench's proxy workload
// (wrk → proxy → backend): plain net/http, standard library only.
//
// Usage: proxy <port> <backend port>
//
//	GET /hello  one GET http://127.0.0.1:<backend port>/hello; 200 with the
//	            backend's body (text/plain, Content-Length set), 502 when the
//	            backend fails or answers other than 200
//	anything else 404
//
// It listens on 127.0.0.1:<port> and prints "ready" on stdout once listening.
//
// The outgoing client opens a NEW connection to the backend for every
// request (Transport.DisableKeepAlives). The receiver injects traceparent
// only on connections that a traced process opened after the collector
// started (bpf/ctxprop's sockops adds a socket to its sockhash when it
// connects); a keep-alive pool would carry connections opened during a
// WITHOUT run, or under an earlier collector, into the next WITH run and
// those would never be injected. Fresh connections per request also mean no
// connection outlives a collector restart. The cost is a TCP handshake per
// request on loopback, the same in WITHOUT and WITH runs.
package main

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"time"
)

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: proxy <port> <backend port>")
		os.Exit(2)
	}
	backendURL := "http://" + net.JoinHostPort("127.0.0.1", os.Args[2]) + "/hello"
	ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", os.Args[1]))
	if err != nil {
		fmt.Fprintln(os.Stderr, "listen:", err)
		os.Exit(1)
	}
	client := &http.Client{
		Transport: &http.Transport{
			Proxy:             nil, // never an HTTP_PROXY from the environment
			DisableKeepAlives: true,
		},
		Timeout: 10 * time.Second,
	}
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
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	fmt.Println("ready")
	if err := srv.Serve(ln); err != nil {
		fmt.Fprintln(os.Stderr, "serve:", err)
		os.Exit(1)
	}
}
