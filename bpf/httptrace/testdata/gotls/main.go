// Command gotls is built by httptrace's Go TLS tests: an HTTPS server and
// client on Go's crypto/tls, HTTP/1.1 unless "h2" is given (ALPN h2, Go's
// default over TLS).
//
//	gotls server <port> <cert> <key> [h2]   GET /hello: 200 "ok", else 404
//	gotls client <url> <n> [h2]             after a line on stdin, n GETs on
//	                                        one keep-alive connection, then
//	                                        prints "done <status>"
//	gotls loop <port> <cert> <key> <n>      n 1-byte Writes and Reads of one
//	                                        TLS connection to itself, timed
package main

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"time"
)

func main() {
	h2 := len(os.Args) > 4 && os.Args[len(os.Args)-1] == "h2"
	switch os.Args[1] {
	case "server":
		serve(os.Args[2], os.Args[3], os.Args[4], h2)
	case "client":
		n, _ := strconv.Atoi(os.Args[3])
		get(os.Args[2], n, h2)
	case "loop":
		n, _ := strconv.Atoi(os.Args[5])
		loop(os.Args[2], os.Args[3], os.Args[4], n)
	}
}

func serve(port, cert, key string, h2 bool) {
	srv := &http.Server{Addr: "127.0.0.1:" + port, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/hello" {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Length", "3")
		_, _ = w.Write([]byte("ok\n"))
	})}
	if !h2 {
		srv.TLSNextProto = map[string]func(*http.Server, *tls.Conn, http.Handler){}
	}
	ln, err := net.Listen("tcp", srv.Addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Println("ready")
	fmt.Fprintln(os.Stderr, srv.ServeTLS(ln, cert, key))
	os.Exit(1)
}

func get(url string, n int, h2 bool) {
	tr := &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, ForceAttemptHTTP2: h2}
	if !h2 {
		tr.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
	}
	c := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	_, _ = bufio.NewReader(os.Stdin).ReadString('\n')
	status := 0
	for i := 0; i < n; i++ {
		resp, err := c.Get(url)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		status = resp.StatusCode
	}
	fmt.Println("done", status)
}

// loop times n rounds of a 1-byte Write and a 1-byte Read on a TLS
// connection to an echo server in the same process, after a line on stdin,
// and prints the nanoseconds per round; again for each further line.
func loop(port, cert, key string, n int) {
	kp, err := tls.LoadX509KeyPair(cert, key)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:"+port, &tls.Config{Certificates: []tls.Certificate{kp}})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	go func() {
		s, err := ln.Accept()
		if err != nil {
			return
		}
		_, _ = io.Copy(s, s)
	}()
	c, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Println("ready")
	in := bufio.NewScanner(os.Stdin)
	b := make([]byte, 1)
	for in.Scan() {
		start := time.Now()
		for i := 0; i < n; i++ {
			if _, err := c.Write(b); err != nil {
				os.Exit(1)
			}
			if _, err := io.ReadFull(c, b); err != nil {
				os.Exit(1)
			}
		}
		fmt.Println(time.Since(start).Nanoseconds() / int64(n))
	}
}
