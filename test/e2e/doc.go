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
// Error for a 5xx SERVER response and Unset otherwise. SERVER spans carry
// http.route from the default routes heuristic (GET /status/503 is named
// "GET /status/*"); resource_privileged_test.go checks the resource
// attributes (apps moved into container-style cgroup v2 directories, which
// it creates under the v2 mount and removes) and route patterns.
//
// Each test starts the apps before the collector, then sends GET
// /status/200?e2e_warmup=N every 250 ms until a span of each app arrives, so
// it does not race the discovery of running processes; no assertion counts
// those requests. TestProcessStartedAfterCollector has no warm-up: it starts
// the app after the collector, waits 1.5 s and expects the first request's
// span.
//
// # Context propagation
//
// propagation_privileged_test.go runs the collector with
// ebpf.context_propagation: all (disabled in TestPropagationDisabled) and
// sends chains of /call requests, Python → Node → Java → Go /headers and the
// like. ChainURL builds the nested URL with a chain=<tag> parameter on every
// hop, so each SERVER span (url.query) and CLIENT span (url.full) names its
// chain; the parameter sorts before url=, so a truncated url.query keeps it.
// ParseChain decodes the nested JSON answer into one Hop per app: the
// traceparent it received and how many. The tests check that the spans form
// one trace (every SERVER span a child of the upstream CLIENT span, every
// CLIENT span of its own SERVER span) and that each app received exactly
// 00-<trace>-<upstream CLIENT span id>-01. Every outbound /call opens a new
// connection, after the collector started: connections opened before are
// not injected.
//
// # Interoperability with the OpenTelemetry SDK
//
// interop_privileged_test.go puts apps/gosdk, a Go app instrumented with the
// OpenTelemetry SDK (otelhttp, W3C TraceContext, OTLP/HTTP export to the
// collector's otlp receiver, CollectorConfig.OTLPPort), between two traced
// Python apps and checks that its spans and ours form one trace with correct
// parents; a second run traces the SDK app too, and the header the SDK wrote
// stays the only one. The receiver's spans are told from the SDK's by their
// instrumentation scope.
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
//	GET  /call?url=<u>  one outbound request to u with the language's standard
//	                    client, on the serving thread where the language has
//	                    one, on a new connection (no pooled keep-alive
//	                    connection); 200 {"status": <downstream status>,
//	                    "body": "<downstream body>", "traceparent": ...}
//	                    (502 {"error": ...} when the call fails). Optional
//	                    parameters: traceparent=<v> sets that header on the
//	                    outbound request; pad=<n> adds an X-Pad header of n
//	                    bytes; method=POST&body=<n> posts n bytes (with
//	                    Content-Type: application/octet-stream). Pad and body
//	                    are the first n bytes of "0123456789" repeated. X-Pad
//	                    is written before traceparent (except by Go, which
//	                    sorts header names: Traceparent, then X-Pad).
//	GET  /headers       200 {"headers": {lowercase name: value, repeated
//	                    values joined by ", "}, "sha256": <digest>, "traceparent": ...}
//
// The Python and Node apps also serve, for the TLS carrier test
// (carrier_privileged_test.go), and read BIND_HOST (listening address),
// TLS_CERT and TLS_KEY (serve HTTPS; outgoing https calls accept any
// certificate) from the environment (AppOptions):
//
//	POST /mirror        200, the request body as the response body
//	POST /relay?url=<u>[&n=<n>]  POSTs the body to u n times (default 1) on
//	                    one keep-alive connection; 200 with the last
//	                    response's body, byte for byte (502 on failure)
//
// apps/gosdk (Lang GoSDK, not in AllLangs) is a module of its own, so the
// receiver's go.mod does not require the SDK; its go.sum pins the SDK
// versions, the first build downloads them through the module proxy, and the
// binary is cached like the Go app's (keyed by main.go, go.mod and go.sum).
// It serves the same endpoints, except that /call takes only url=: otelhttp
// writes the traceparent.
//
// apps/gogrpc (Lang GoGRPC, not in AllLangs) is a module of its own too,
// built against the module proxy's google.golang.org/grpc and cached the
// same way; GOGRPC_MODE=server serves grpc's health service (Check of an
// unknown service name: NOT_FOUND), GOGRPC_MODE=client with GOGRPC_TARGET
// serves GET /call?service=<name>, one unary Check from the handler's
// goroutine, answering with the code's name. grpc_privileged_test.go
// (TestGRPCGo) traces the pair: front HTTP SERVER → gRPC CLIENT → gRPC
// SERVER in one trace.
//
// Every response carries X-Received-Traceparent with the incoming traceparent
// header (the first one; empty when there was none); "traceparent" in the
// JSON bodies is the same value and "traceparent_count" the number of
// traceparent header fields received, so a duplicate shows. The /headers
// digest is the hex SHA-256 of the received header fields written as
// "lowercase-name: value\n" lines, one per field value, sorted bytewise and
// concatenated, so it is the same in every language.
package e2e
