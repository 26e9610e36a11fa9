// Package httptrace loads and attaches the HTTP/1.x tracer: a raw tracepoint
// at the exit of the socket read/write system calls that matches requests
// with responses per connection and emits one record per finished request.
// tls.go adds uprobes on OpenSSL/BoringSSL's SSL_read/SSL_write in selected
// processes: HTTPS plaintext through the same connection state.
package httptrace

//go:generate go tool bpf2go -tags linux -cc clang -cflags "-O2 -g -Wall -Werror -Wpadded" -target amd64,arm64 -type http_event -type counter -type tracestate_event -type tls_call -type go_tls_proc httptrace httptrace.c -- -I../include
