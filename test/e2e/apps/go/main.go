// Command goapp is the Go end-to-end test app: a net/http HTTP/1.1 server.
//
// Usage: goapp <port>   (or PORT in the environment)
//
// A goroutine per connection, keep-alive on, outbound calls with the default
// net/http client. Endpoints are the same in every language; see
// test/e2e/doc.go.
package main

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
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
	ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", port))
	if err != nil {
		fmt.Fprintln(os.Stderr, "listen:", err)
		os.Exit(1)
	}
	srv := &http.Server{Handler: http.HandlerFunc(handle), ReadHeaderTimeout: 30 * time.Second}
	fmt.Println("ready")
	if err := srv.Serve(ln); err != nil {
		fmt.Fprintln(os.Stderr, "serve:", err)
		os.Exit(1)
	}
}

var client = &http.Client{Timeout: 10 * time.Second}

func handle(w http.ResponseWriter, r *http.Request) {
	traceparent := r.Header.Get("traceparent")
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
		target := r.URL.Query().Get("url")
		if target == "" {
			reply(w, http.StatusBadRequest, "missing url")
			return
		}
		resp, err := client.Get(target)
		if err != nil {
			replyJSON(w, http.StatusBadGateway, map[string]any{"error": err.Error(), "traceparent": traceparent})
			return
		}
		down, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			replyJSON(w, http.StatusBadGateway, map[string]any{"error": err.Error(), "traceparent": traceparent})
			return
		}
		replyJSON(w, http.StatusOK, map[string]any{"status": resp.StatusCode, "body": string(down), "traceparent": traceparent})
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
		replyJSON(w, http.StatusOK, map[string]any{"headers": merged, "sha256": hex.EncodeToString(sum[:]), "traceparent": traceparent})
	case r.Method == http.MethodPost && r.URL.Path == "/echo":
		sum := sha256.Sum256(body)
		replyJSON(w, http.StatusOK, map[string]any{"len": len(body), "sha256": hex.EncodeToString(sum[:]), "traceparent": traceparent})
	default:
		reply(w, http.StatusNotFound, "not found")
	}
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
