// Command goh2c is the end-to-end test app for HTTP/2 over cleartext (h2c,
// prior knowledge) in Go, with either copy of Go's HTTP/2: the standard
// library's bundled one (http.Server and http.Transport with Protocols set
// to unencrypted HTTP/2 only) or the module proxy's golang.org/x/net/http2
// (http2.Server.ServeConn and http2.Transport with AllowHTTP).
//
// Usage:
//
//	goh2c <port>
//	    an h2c server on 127.0.0.1:<port>. GOH2C_COPY is "std" (default)
//	    or "xnet". GET /leaf answers 200 "leaf", other paths 404. With
//	    GOH2C_TARGET=host:port, GET /call?path=P&... makes one h2c GET
//	    http://target/P?... (the same query) from the handler's goroutine
//	    with the same copy's client and answers with its status code.
//
// It prints "ready" once it listens. It lives in its own module so the
// receiver's go.mod does not depend on golang.org/x/net directly.
package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"syscall"
	"time"

	"golang.org/x/net/http2"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "goh2c:", err)
		os.Exit(1)
	}
}

func run() error {
	if len(os.Args) != 2 {
		return fmt.Errorf("usage: goh2c <port>")
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	xnet := os.Getenv("GOH2C_COPY") == "xnet"
	var rt http.RoundTripper
	if xnet {
		rt = &http2.Transport{AllowHTTP: true, DialTLSContext: func(ctx context.Context, network, addr string, _ *tls.Config) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, addr)
		}}
	} else {
		var p http.Protocols
		p.SetUnencryptedHTTP2(true)
		rt = &http.Transport{Protocols: &p}
	}
	hc := &http.Client{Transport: rt, Timeout: 5 * time.Second}
	target := os.Getenv("GOH2C_TARGET")

	mux := http.NewServeMux()
	mux.HandleFunc("/leaf", func(w http.ResponseWriter, r *http.Request) {
		if r.ProtoMajor != 2 {
			http.Error(w, "not HTTP/2", http.StatusHTTPVersionNotSupported)
			return
		}
		fmt.Fprintln(w, "leaf")
	})
	mux.HandleFunc("/call", func(w http.ResponseWriter, r *http.Request) {
		if target == "" {
			http.Error(w, "no GOH2C_TARGET", http.StatusInternalServerError)
			return
		}
		q := r.URL.Query()
		path := q.Get("path")
		q.Del("path")
		u := url.URL{Scheme: "http", Host: target, Path: path, RawQuery: q.Encode()}
		req, err := http.NewRequestWithContext(r.Context(), http.MethodGet, u.String(), nil)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		resp, err := hc.Do(req)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		fmt.Fprintln(w, resp.StatusCode, resp.Proto)
	})

	ln, err := net.Listen("tcp", "127.0.0.1:"+os.Args[1])
	if err != nil {
		return err
	}
	go func() {
		<-ctx.Done()
		ln.Close()
	}()
	fmt.Println("ready")
	if xnet {
		s := &http2.Server{}
		for {
			c, err := ln.Accept()
			if err != nil {
				if ctx.Err() != nil {
					return nil
				}
				return err
			}
			go s.ServeConn(c, &http2.ServeConnOpts{Context: ctx, Handler: mux})
		}
	}
	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	srv := &http.Server{Handler: mux, Protocols: &p}
	if err := srv.Serve(ln); err != http.ErrServerClosed && ctx.Err() == nil {
		return err
	}
	return nil
}
