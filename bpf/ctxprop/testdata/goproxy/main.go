// Command goproxy is a Go HTTP server whose /call?port=N makes a GET to
// 127.0.0.1:N with one shared keep-alive client, so calls after the first go
// over a pooled connection written by the transport's writeLoop goroutine.
package main

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
)

func main() {
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 1}}
	http.HandleFunc("/call", func(w http.ResponseWriter, r *http.Request) {
		resp, err := client.Get("http://127.0.0.1:" + r.URL.Query().Get("port") + "/")
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		defer resp.Body.Close()
		_, _ = io.Copy(w, resp.Body)
	})
	ln, err := net.Listen("tcp", "127.0.0.1:"+os.Args[1])
	if err != nil {
		panic(err)
	}
	fmt.Println("ready")
	panic(http.Serve(ln, nil))
}
