// Command gosdk is the end-to-end test app instrumented with the
// OpenTelemetry Go SDK: a net/http HTTP/1.1 server wrapped in
// otelhttp.NewHandler whose outbound calls go through otelhttp.NewTransport,
// so it makes its own SERVER and CLIENT spans and writes its own traceparent
// (W3C TraceContext propagator). It exports them with OTLP/HTTP to
// $OTEL_EXPORTER_OTLP_ENDPOINT, service.name from $OTEL_SERVICE_NAME, in
// batches of at most 100 ms.
//
// Usage: gosdk <port>   (or PORT in the environment)
//
// It lives in its own module so the receiver's go.mod does not depend on the
// SDK. Endpoints are those of the other test apps (see test/e2e/doc.go)
// except that /call takes only url=: the SDK writes the traceparent.
package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "gosdk:", err)
		os.Exit(1)
	}
}

func run() error {
	port := os.Getenv("PORT")
	if len(os.Args) > 1 {
		port = os.Args[1]
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	// The exporter reads OTEL_EXPORTER_OTLP_ENDPOINT (http:// means no TLS).
	exp, err := otlptracehttp.New(ctx)
	if err != nil {
		return fmt.Errorf("otlp exporter: %w", err)
	}
	tp := sdktrace.NewTracerProvider(
		sdktrace.WithBatcher(exp, sdktrace.WithBatchTimeout(100*time.Millisecond)),
		sdktrace.WithResource(resource.Default()), // reads OTEL_SERVICE_NAME
	)
	otel.SetTracerProvider(tp)
	otel.SetTextMapPropagator(propagation.TraceContext{})

	// A new connection per call: no pooled keep-alive connection.
	client := &http.Client{
		Timeout:   10 * time.Second,
		Transport: otelhttp.NewTransport(&http.Transport{DisableKeepAlives: true}),
	}
	ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", port))
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	srv := &http.Server{
		Handler:           otelhttp.NewHandler(handler(client), "server"),
		ReadHeaderTimeout: 30 * time.Second,
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	fmt.Println("ready")

	select {
	case err = <-served:
		err = fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
		err = nil
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return errors.Join(err, srv.Shutdown(sctx), tp.Shutdown(sctx))
}

func handler(client *http.Client) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
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
			target := r.URL.Query().Get("url")
			if target == "" {
				reply(w, http.StatusBadRequest, "missing url")
				return
			}
			fail := func(err error) {
				replyJSON(w, http.StatusBadGateway, map[string]any{"error": err.Error(), "traceparent": traceparent, "traceparent_count": count})
			}
			// The request's context holds the SERVER span: the CLIENT span
			// is its child and its ids go into the outbound traceparent.
			req, err := http.NewRequestWithContext(r.Context(), http.MethodGet, target, nil)
			if err != nil {
				fail(err)
				return
			}
			resp, err := client.Do(req)
			if err != nil {
				fail(err)
				return
			}
			down, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil {
				fail(err)
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
		default:
			reply(w, http.StatusNotFound, "not found")
		}
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
