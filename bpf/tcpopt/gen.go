// Package tcpopt loads and attaches the default packet-level carrier of the
// trace context of TLS requests: a sockops program on the cgroup v2 root
// that writes the context httptrace put in carrier_out as a TCP header
// option (kind 253, RFC 6994 ExID 0x7c00/0x7c01, 28 bytes) on the first
// segments of each request, and parses it on the receiving side into
// carrier_in. It shares traced_pids, carrier_out and carrier_in with
// httptrace.
package tcpopt

//go:generate go tool bpf2go -tags linux -cc clang -cflags "-O2 -g -Wall -Werror -Wpadded" -target amd64,arm64 -type tcpopt_counter -type tcpopt_carrier tcpopt tcpopt.c -- -I../include
