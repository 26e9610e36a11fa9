// Command gosender is the Go sender of TestHeaderBlocks (see pySender in
// headers_privileged_test.go for the protocol): POST /send?port=N&wait=F
// writes the raw request with net.Conn writes at the cut offsets, or with
// lib=1 sends it with a net/http client (its header lines set in
// Request.Header) and answers with the bytes the transport wrote.
package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

// recConn records what is written to it.
type recConn struct {
	net.Conn
	mu   sync.Mutex
	sent bytes.Buffer
}

func (c *recConn) Write(b []byte) (int, error) {
	c.mu.Lock()
	c.sent.Write(b)
	c.mu.Unlock()
	return c.Conn.Write(b)
}

// raw writes buf in pieces [0,cuts[0]) [cuts[0],cuts[1]) ... with 5 ms
// between, from the handler's goroutine.
func raw(port string, cuts []int, buf []byte) (string, []byte, error) {
	c, err := net.Dial("tcp", "127.0.0.1:"+port)
	if err != nil {
		return "", nil, err
	}
	defer c.Close()
	prev := 0
	for _, cut := range append(cuts, len(buf)) {
		if _, err := c.Write(buf[prev:cut]); err != nil {
			return "", nil, err
		}
		prev = cut
		time.Sleep(5 * time.Millisecond)
	}
	resp, err := io.ReadAll(c)
	if err != nil {
		return "", nil, err
	}
	status, _, _ := bytes.Cut(resp, []byte("\r\n"))
	return string(status), buf, nil
}

// lib sends the request of buf with net/http: a new connection, written by
// the transport's goroutines through a 4 KiB buffer.
func lib(port string, buf []byte) (string, []byte, error) {
	r, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(buf)))
	if err != nil {
		return "", nil, err
	}
	req, err := http.NewRequest(r.Method, "http://127.0.0.1:"+port+r.RequestURI, nil)
	if err != nil {
		return "", nil, err
	}
	req.Host = r.Host
	req.Header = r.Header
	var conn *recConn
	tr := &http.Transport{DisableKeepAlives: true, DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		conn = &recConn{Conn: c}
		return conn, nil
	}}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Do(req)
	if err != nil {
		return "", nil, err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	conn.mu.Lock()
	defer conn.mu.Unlock()
	return "HTTP/1.1 " + resp.Status, bytes.Clone(conn.sent.Bytes()), nil
}

func send(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	q := r.URL.Query()
	line, buf, _ := bytes.Cut(body, []byte("\n"))
	var cuts []int
	for _, c := range strings.Split(string(line), ",") {
		if n, err := strconv.Atoi(c); err == nil {
			cuts = append(cuts, n)
		}
	}
	for {
		if _, err := os.Stat(q.Get("wait")); err == nil {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	var status string
	var sent []byte
	if q.Get("lib") == "1" {
		status, sent, err = lib(q.Get("port"), buf)
	} else {
		status, sent, err = raw(q.Get("port"), cuts, buf)
	}
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	out := append([]byte(status+"\n"), sent...)
	w.Header().Set("Content-Length", strconv.Itoa(len(out)))
	_, _ = w.Write(out)
}

func main() {
	ln, err := net.Listen("tcp", "127.0.0.1:"+os.Args[1])
	if err != nil {
		panic(err)
	}
	fmt.Println("ready")
	panic(http.Serve(ln, http.HandlerFunc(send)))
}
