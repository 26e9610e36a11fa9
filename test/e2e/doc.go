// Package e2e holds the end-to-end tests of the ebpf_tracing receiver: they
// start real servers in four languages and the real collector distribution
// (_build/otelcol-ebpf, built by `make distro`), send HTTP traffic with curl
// and a Go client, and check the spans that reach an OTLP/HTTP sink.
//
// The tests that load eBPF programs are tagged `linux && privileged` and run
// as root:
//
//	make distro
//	go test -tags privileged -count=1 -v ./test/e2e/
//
// Without the tag only TestAppsServe and the sink's unit tests run; they need
// python3, node, java/javac and go on PATH but no privileges.
//
// E2E_OTELCOL_BIN, when set, replaces _build/otelcol-ebpf. A missing distro
// fails the tests; it never skips them.
//
// The helpers (apps.go, sink.go, collector.go) are ordinary files tagged
// `linux` so that benchmarks can reuse them: StartApp, StartSink (an OTLP/HTTP
// sink with WaitForSpans and a flat Span view), StartCollector (writes the
// config, starts the distro, waits for "Everything is ready" and the
// health_check extension, Stop sends SIGTERM), RunDistro (a run expected to
// end), Curl, Pipeline and FreePorts. Every process they start runs in its
// own process group, killed when the test ends, and its output is logged when
// the test fails.
//
// # What the privileged tests expect of spans
//
// Attribute names follow the HTTP semantic conventions: http.request.method,
// url.path (without the query), url.query (without "?"),
// http.response.status_code, server.port, network.peer.address on SERVER
// spans; url.full and server.port on CLIENT spans; service.name (from the
// process's OTEL_SERVICE_NAME) and process.pid on the resource. Status is
// Error for a 5xx SERVER response and Unset otherwise.
//
// Each test starts the apps before the collector, then sends GET
// /status/200?e2e_warmup=N every 250 ms until a span of each app arrives, so
// it does not race the discovery of running processes; no assertion counts
// those requests. TestProcessStartedAfterCollector has no warm-up: it starts
// the app after the collector, waits 1.5 s and expects the first request's
// span.
//
// # Test apps
//
// apps/python/server.py, apps/node/server.js, apps/java/Server.java and
// apps/go/main.go use only their standard library (Java is compiled once with
// javac and Go built once, cached under $TMPDIR/ebpftracing-e2e by source
// hash), listen on
// 127.0.0.1:<port from argv[1] or $PORT>, speak HTTP/1.1 with keep-alive and
// print "ready" on stdout once listening. Every app serves:
//
//	GET  /hello         200 "hello"
//	GET  /status/<code> that status (200..599), empty body
//	POST /echo          200 {"len": N, "sha256": "<hex of body>", "traceparent": ...}
//	GET  /call?url=<u>  one outbound GET to u with the language's standard
//	                    client, on the serving thread where the language has
//	                    one; 200 {"status": <downstream status>,
//	                    "body": "<downstream body>", "traceparent": ...}
//	                    (502 {"error": ...} when the call fails)
//	GET  /headers       200 {"headers": {lowercase name: value, repeated
//	                    values joined by ", "}, "sha256": <digest>, "traceparent": ...}
//
// Every response carries X-Received-Traceparent with the incoming traceparent
// header (empty when there was none); "traceparent" in the JSON bodies is the
// same value. The /headers digest is the hex SHA-256 of the received header
// fields written as "lowercase-name: value\n" lines, one per field value,
// sorted bytewise and concatenated, so it is the same in every language.
package e2e
