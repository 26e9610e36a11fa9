// Command server is the benchmark's HTTP server: plain net/http, keep-alive,
// one route.
//
// Usage: server <port>
//
//	GET /hello  200 "hello\n" (text/plain, Content-Length set)
//	anything else 404
//
// It listens on 127.0.0.1:<port> and prints "ready" on stdout once listening.
// It is kept smaller than test/e2e/apps/go (no header echo, no body read) so
// the baseline measures net/http itself and does not change when the
// end-to-end app does.
package main

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"time"
)

var hello = []byte("hello\n")

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: server <port>")
		os.Exit(2)
	}
	ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", os.Args[1]))
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
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	fmt.Println("ready")
	if err := srv.Serve(ln); err != nil {
		fmt.Fprintln(os.Stderr, "serve:", err)
		os.Exit(1)
	}
}
