// Package w3ctest runs the W3C trace context parser of httptrace
// (bpf/include/w3c.h) in the kernel on table cases: a test-only syscall
// program, run with BPF_PROG_TEST_RUN. Nothing else imports it.
package w3ctest

//go:generate go tool bpf2go -tags linux -cc clang -cflags "-O2 -g -Wall -Werror -Wpadded" -target amd64,arm64 -type w3c_result w3ctest w3ctest.c -- -I../../include
