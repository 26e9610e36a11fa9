// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
// Types shared by ctxprop.c and, through bpf2go -type, its Go loader.
#pragma once

#define SCAN_SIZE 4096 // request prefix searched for the header block end
#define SCAN_MASK (SCAN_SIZE - 1)
#define SCAN_PAD 64
#define TP_HEADER_LEN 70 // "traceparent: 00-<32>-<16>-<2>\r\n"

enum prop_counter {
	PROP_INJECTED = 0,         // traceparent headers injected
	PROP_APP_HEADER = 1,       // request already had a traceparent: left alone
	PROP_HEADERS_TOO_LONG = 2, // header block beyond SCAN_SIZE: not injected
	PROP_PUSH_FAILED = 3,      // the kernel refused to grow the message
	PROP_COUNTER_MAX = 4,
};
