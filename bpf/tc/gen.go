// Package tc is the IPv4-option packet carrier of the trace context of TLS
// requests (ebpf.packet_carrier: ip_option): a TC egress program writes the
// context httptrace left in carrier_out into an IPv4 option of the
// connection's data segments, and a TC ingress program reads it on the
// receiving host into carrier_in. Both attach to every interface of the
// selected network namespaces with tcx links or with clsact qdisc filters,
// next to the programs already there.
package tc

//go:generate go tool bpf2go -tags linux -cc clang -cflags "-O2 -g -Wall -Werror -Wpadded -I/usr/include/x86_64-linux-gnu -I/usr/include/aarch64-linux-gnu" -target amd64,arm64 -type tc_counter tc tc.c -- -I../include
