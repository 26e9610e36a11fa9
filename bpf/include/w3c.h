// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//
// W3C Trace Context in an HTTP/1.x header block: the line scanner that walks
// a request's header block (in chunks of a larger read, and across reads),
// the traceparent parser (Level 1 and 2) and the streaming tracestate
// validator (Level 2). Shared by httptrace.c and the test-only program that
// runs the same code on table cases (bpf/httptrace/w3ctest).
//
// The includer defines BUF_SIZE (a power of two), BUF_MASK and BUF_PAD (the
// scan buffer is BUF_SIZE + BUF_PAD bytes, BUF_PAD >= 64) and
// W3C_READ(dst, n, src), which copies n more bytes of the data into the scan
// buffer (bpf_probe_read_user in httptrace).
#pragma once

#include "http.h"
#include "swar.h"

#define HDR_BLOCK_MAX 16384 // header block bytes scanned per request
#define W3C_STEPS 2048      // bpf_loop iterations per scan: a line or 256 bytes each
#define W3C_LINE_MIN 96     // a header line is classified with this many bytes in the buffer
#define W3C_HOST_MAX 64
#define TRACEPARENT_LEN 55
#define W3C_TS_MAX 512      // tracestate bytes kept (truncated at member boundaries)
#define W3C_TS_MEMBERS 32   // list members allowed
#define W3C_TS_LONG 128     // members longer than this are dropped first
#define W3C_TS_KEY_MAX 256
#define W3C_TS_TENANT_MAX 241
#define W3C_TS_SYSTEM_MAX 14
#define W3C_TS_VALUE_MAX 256

#define LINE_WORDS 32 // 8-byte words searched for '\n' per iteration

static __always_inline __u8 at(const __u8 *buf, __u64 i)
{
	return buf[i & BUF_MASK];
}

#define TP_RAW 64 // traceparent bytes kept: 55, OWS, the line end

static __always_inline __u8 at_raw(const __u8 *raw, __u64 i)
{
	return raw[i & (TP_RAW - 1)];
}

static __always_inline __u64 load8(const __u8 *buf, __u64 i)
{
	__u64 v;
	__builtin_memcpy(&v, buf + (i & BUF_MASK), 8);
	return v;
}

static __always_inline __u32 load4(const __u8 *buf, __u64 i)
{
	__u32 v;
	__builtin_memcpy(&v, buf + (i & BUF_MASK), 4);
	return v;
}

// Length of the token at i: up to the first ' ', '\r' or '\n', at most
// words * 8 (returned when none is found).
static __always_inline __u32 token_len(const __u8 *buf, __u64 i, const int words)
{
#pragma unroll
	for (int k = 0; k < words; k++) {
		__u64 w = load8(buf, i + 8 * k);
		__u64 m = bytes_eq(w, ' ') | bytes_eq(w, '\r') | bytes_eq(w, '\n');
		if (m)
			return 8 * k + first_byte(m);
	}
	return words * 8;
}

// Skips optional whitespace (SP, HTAB), at most 8 bytes of it.
static __always_inline __u64 skip_ows(const __u8 *buf, __u64 i)
{
#pragma unroll
	for (int k = 0; k < 8; k++) {
		__u8 c = at(buf, i);
		if (c != ' ' && c != '\t')
			break;
		i++;
	}
	return i;
}

static __always_inline int hexval(__u8 c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1; // upper case is invalid per W3C trace context
}

// True if only optional whitespace follows i up to the end of the line (or
// of the data, at end).
static __always_inline __u64 skip_ows_raw(const __u8 *raw, __u64 i)
{
#pragma unroll
	for (int k = 0; k < 8; k++) {
		__u8 c = at_raw(raw, i);
		if (c != ' ' && c != '\t')
			break;
		i++;
	}
	return i;
}

static __always_inline bool ows_to_eol(const __u8 *buf, __u64 i, __u64 end)
{
	i = skip_ows_raw(buf, i);
	if (i >= end)
		return true;
	__u8 c = at_raw(buf, i);
	return c == '\r' || c == '\n';
}

// Parses the traceparent value at off, whose line ends before end:
// "vv-<32 hex>-<16 hex>-<2 hex>", lower-case hex, version ff invalid, zero
// ids invalid. Version 00 is exactly 55 characters (then optional
// whitespace and the end of the line); a later version is parsed by its first
// 55 characters, which are followed by '-' or the end. Returns true if valid.
static __always_inline bool parse_traceparent(const __u8 buf[TP_RAW], __u64 off, __u64 end,
					      __u8 trace_id[16], __u8 parent_id[8], __u8 *flags)
{
	if (off + TRACEPARENT_LEN > end)
		return false;
	int v1 = hexval(at_raw(buf, off)), v0 = hexval(at_raw(buf, off + 1));
	if (v1 < 0 || v0 < 0 || (v1 == 15 && v0 == 15))
		return false;
	if (at_raw(buf, off + 2) != '-' || at_raw(buf, off + 35) != '-' || at_raw(buf, off + 52) != '-')
		return false;
	__u64 rest = off + TRACEPARENT_LEN;
	bool future = v1 != 0 || v0 != 0;
	if (!ows_to_eol(buf, rest, end) && !(future && at_raw(buf, rest) == '-'))
		return false;
	__u8 any = 0;
#pragma unroll
	for (int k = 0; k < 16; k++) {
		int hi = hexval(at_raw(buf, off + 3 + 2 * k));
		int lo = hexval(at_raw(buf, off + 4 + 2 * k));
		if (hi < 0 || lo < 0)
			return false;
		trace_id[k] = (hi << 4) | lo;
		any |= trace_id[k];
	}
	if (!any)
		return false;
	any = 0;
#pragma unroll
	for (int k = 0; k < 8; k++) {
		int hi = hexval(at_raw(buf, off + 36 + 2 * k));
		int lo = hexval(at_raw(buf, off + 37 + 2 * k));
		if (hi < 0 || lo < 0)
			return false;
		parent_id[k] = (hi << 4) | lo;
		any |= parent_id[k];
	}
	if (!any)
		return false;
	int fh = hexval(at_raw(buf, off + 53)), fl = hexval(at_raw(buf, off + 54));
	if (fh < 0 || fl < 0)
		return false;
	*flags = (fh << 4) | fl;
	return true;
}

// --- tracestate -----------------------------------------------------------

// Same layout as struct tracestate (maps/tracestate.h).
struct w3c_tracestate {
	__u16 len;
	__u8 _pad[6];
	char data[W3C_TS_MAX];
};

enum ts_phase {
	TS_PRE = 0, // before a member: OWS, empty members
	TS_KEY = 1,
	TS_VAL = 2,
	TS_POST = 3, // after a value: OWS until ',' or the end
};

enum ts_flag {
	TS_INVALID = 1, // the list is invalid: dropped whole
	TS_A_OVER = 2,  // the whole list does not fit: a is abandoned, b is used
	TS_B_FULL = 4,  // b stopped (truncation keeps a prefix)
	TS_AT = 8,      // the current key has '@' (multi-tenant)
	TS_DIGIT = 16,  // the current key starts with a digit
};

// Validator state of the tracestate of one header block, fed byte by byte.
// Members are written, without whitespace, to a (the whole list) and to b
// (members of at most W3C_TS_LONG bytes only), tentatively until the member
// ends valid. If the list exceeds W3C_TS_MAX, b is the truncated result:
// the long members removed first, then members from the end.
struct ts_head {
	__u64 hash;    // FNV-1a of the current key
	__u16 a_start; // offset of the current member in a
	__u16 b_start;
	__u16 m_len;   // bytes of the current member so far
	__u16 key_len; // key bytes (the tenant part with '@')
	__u16 sys_len; // system bytes after '@'
	__u16 val_len; // value bytes, trailing spaces included
	__u16 trim;    // trailing spaces of the value
	__u8 phase;
	__u8 members;
	__u8 flags;
	__u8 _pad[7];
};

struct ts_scan {
	struct ts_head h;
	__u64 hashes[W3C_TS_MEMBERS]; // key hashes of the members so far
	struct w3c_tracestate a;
	struct w3c_tracestate b;
};

#define FNV_OFFSET 0xcbf29ce484222325ull
#define FNV_PRIME 0x100000001b3ull

static __always_inline void ts_reset(struct ts_scan *ts)
{
	__builtin_memset(&ts->h, 0, sizeof(ts->h));
	ts->a.len = 0;
	ts->b.len = 0;
}

// Writes c at i of t, if inside. The barrier keeps the mask the verifier
// needs (clang drops it after the bounds check otherwise).
static __always_inline void ts_store(struct w3c_tracestate *t, __u64 i, __u8 c)
{
	if (i >= W3C_TS_MAX)
		return;
	barrier_var(i);
	t->data[i & (W3C_TS_MAX - 1)] = c;
}

static __always_inline void ts_put(struct ts_scan *ts, __u8 c)
{
	ts_store(&ts->a, (__u64)ts->h.a_start + ts->h.m_len, c);
	ts_store(&ts->b, (__u64)ts->h.b_start + ts->h.m_len, c);
	if (ts->h.m_len < 0xffff)
		ts->h.m_len++;
}

static __always_inline void ts_member_start(struct ts_scan *ts)
{
	__u32 a = ts->a.len, b = ts->b.len;
	if (a)
		ts_store(&ts->a, a, ',');
	if (b)
		ts_store(&ts->b, b, ',');
	ts->h.a_start = a ? a + 1 : 0;
	ts->h.b_start = b ? b + 1 : 0;
	ts->h.m_len = 0;
	ts->h.key_len = 0;
	ts->h.sys_len = 0;
	ts->h.val_len = 0;
	ts->h.trim = 0;
	ts->h.hash = FNV_OFFSET;
	ts->h.flags &= ~(TS_AT | TS_DIGIT);
}

static __always_inline void ts_member_end(struct ts_scan *ts)
{
	__u32 vlen = ts->h.val_len - ts->h.trim;
	if (vlen == 0) {
		ts->h.flags |= TS_INVALID;
		return;
	}
	__u32 n = ts->h.members;
	if (n >= W3C_TS_MEMBERS) {
		ts->h.flags |= TS_INVALID;
		return;
	}
#pragma unroll
	for (int k = 0; k < W3C_TS_MEMBERS; k++) {
		if (k < n && ts->hashes[k] == ts->h.hash) {
			ts->h.flags |= TS_INVALID; // duplicate key
			return;
		}
	}
	ts->hashes[n & (W3C_TS_MEMBERS - 1)] = ts->h.hash;
	ts->h.members = n + 1;
	__u32 mlen = ts->h.m_len - ts->h.trim;
	if (!(ts->h.flags & TS_A_OVER)) {
		if (ts->h.a_start + mlen <= W3C_TS_MAX)
			ts->a.len = ts->h.a_start + mlen;
		else
			ts->h.flags |= TS_A_OVER;
	}
	if (!(ts->h.flags & TS_B_FULL) && mlen <= W3C_TS_LONG) {
		if (ts->h.b_start + mlen <= W3C_TS_MAX)
			ts->b.len = ts->h.b_start + mlen;
		else
			ts->h.flags |= TS_B_FULL;
	}
}

static __always_inline bool ts_lcalpha(__u8 c)
{
	return c >= 'a' && c <= 'z';
}

static __always_inline bool ts_digit(__u8 c)
{
	return c >= '0' && c <= '9';
}

static __always_inline bool ts_keychar(__u8 c)
{
	return ts_lcalpha(c) || ts_digit(c) || c == '_' || c == '-' || c == '*' || c == '/';
}

// Feeds one byte of a tracestate header value. A global function: verified
// once, not once per path of its callers.
__noinline int w3c_ts_char(struct ts_scan *ts, __u32 c)
{
	if (!ts || (ts->h.flags & TS_INVALID))
		return 0;
	switch (ts->h.phase) {
	case TS_PRE:
		if (c == ' ' || c == '\t' || c == ',' || c == '\r')
			return 0; // whitespace, empty member
		if (!ts_lcalpha(c) && !ts_digit(c))
			break;
		ts_member_start(ts);
		if (ts_digit(c))
			ts->h.flags |= TS_DIGIT;
		ts->h.phase = TS_KEY;
		ts->h.key_len = 1;
		ts->h.hash = (ts->h.hash ^ c) * FNV_PRIME;
		ts_put(ts, c);
		return 0;
	case TS_KEY:
		if (c == '=') {
			if (ts->h.flags & TS_AT) {
				if (ts->h.sys_len == 0)
					break;
			} else if (ts->h.flags & TS_DIGIT) {
				break; // a simple key starts with lcalpha
			}
			ts->h.phase = TS_VAL;
			ts_put(ts, c);
			return 0;
		}
		if (c == '@') {
			if (ts->h.flags & TS_AT)
				break;
			ts->h.flags |= TS_AT;
		} else if (!ts_keychar(c)) {
			break;
		} else if (ts->h.flags & TS_AT) {
			if (ts->h.sys_len == 0 && !ts_lcalpha(c))
				break;
			if (++ts->h.sys_len > W3C_TS_SYSTEM_MAX)
				break;
		} else if (++ts->h.key_len > W3C_TS_KEY_MAX) {
			break;
		}
		if ((ts->h.flags & TS_AT) && ts->h.key_len > W3C_TS_TENANT_MAX)
			break;
		ts->h.hash = (ts->h.hash ^ c) * FNV_PRIME;
		ts_put(ts, c);
		return 0;
	case TS_VAL:
		if (c == ' ') {
			ts->h.val_len++;
			ts->h.trim++;
			ts_put(ts, c);
			return 0;
		}
		if (c == '\t' || c == '\r') {
			ts->h.phase = TS_POST;
			return 0;
		}
		if (c == ',') {
			ts_member_end(ts);
			ts->h.phase = TS_PRE;
			return 0;
		}
		if (c < 0x21 || c > 0x7e || c == '=')
			break;
		ts->h.val_len++;
		ts->h.trim = 0;
		if (ts->h.val_len > W3C_TS_VALUE_MAX)
			break;
		ts_put(ts, c);
		return 0;
	case TS_POST:
		if (c == ' ' || c == '\t' || c == '\r')
			return 0;
		if (c == ',') {
			ts_member_end(ts);
			ts->h.phase = TS_PRE;
			return 0;
		}
		break;
	}
	ts->h.flags |= TS_INVALID;
	return 0;
}

// The end of one tracestate header line (several are combined with ',').
// A global function.
__noinline int w3c_ts_end(struct ts_scan *ts)
{
	if (!ts || (ts->h.flags & TS_INVALID))
		return 0;
	if (ts->h.phase == TS_KEY)
		ts->h.flags |= TS_INVALID;
	else if (ts->h.phase != TS_PRE)
		ts_member_end(ts);
	ts->h.phase = TS_PRE;
	return 0;
}

// The validated, normalized list, or 0 if invalid or empty.
static __always_inline struct w3c_tracestate *ts_result(struct ts_scan *ts)
{
	if (ts->h.flags & TS_INVALID)
		return 0;
	struct w3c_tracestate *out = (ts->h.flags & TS_A_OVER) ? &ts->b : &ts->a;
	return out->len ? out : 0;
}

// --- header block scan ----------------------------------------------------

// State of one header block scan. Offsets named "data" count from the start
// of the read; the others index the scan buffer, which holds the data from
// base on.
struct w3c_scan {
	__u64 pos;            // next byte to look at (buffer)
	__u64 end;            // end of the data in the buffer
	__u64 base;           // data offset of the buffer's first byte
	__u64 len;            // bytes of data
	__u64 src;            // address of the data (W3C_READ)
	__u64 limit;          // data offset where the header block passes HDR_BLOCK_MAX
	__u64 line_no;        // lines seen, the request line being 0
	__u64 mid_line;       // pos is inside a line longer than one step
	__u64 header_end;     // data offset just past the blank line, 0 if not seen
	__u64 content_length; // Content-Length value, 0 if none
	__u64 ts_from;        // start of the current line's tracestate bytes (buffer)
	__u8 in_ts;           // the current line is a tracestate header
	__u8 want_ts;         // capture tracestate headers
	__u8 ts_seen;         // a tracestate header was seen: ts is in use
	__u8 tp_count;        // traceparent headers seen
	__u8 tp_valid;        // the first traceparent is valid (trace_id, ...)
	__u8 trace_flags;
	__u8 over_limit;      // the block passed HDR_BLOCK_MAX: scan stopped
	__u8 minor0;          // the request line ends "HTTP/1.0"
	__u8 trace_id[16];
	__u8 parent_id[8];
	__u8 host_len;        // Host value bytes in host, 0 if none
	__u8 tp_len;          // bytes in tp_raw up to the end of the data
	__u8 _pad[6];
	char host[W3C_HOST_MAX];
	__u8 tp_raw[TP_RAW]; // the first traceparent value
};

// The scan buffer, as a sized type for the global functions' arguments.
struct w3c_buf {
	__u8 b[BUF_SIZE + BUF_PAD];
};

struct w3c_ctx {
	__u8 *buf; // BUF_SIZE + BUF_PAD bytes
	struct w3c_scan *st;
	struct ts_scan *ts; // 0: tracestate headers are not captured
};

struct ts_seg_ctx {
	const __u8 *buf;
	struct ts_scan *ts;
	__u64 from;
};

static long ts_byte_cb(__u64 index, void *data)
{
	struct ts_seg_ctx *sc = data;
	w3c_ts_char(sc->ts, at(sc->buf, sc->from + index));
	return 0;
}

// Feeds buffer bytes [from, to) of a tracestate line to the validator.
static __always_inline void ts_segment(struct w3c_ctx *pc, __u64 from, __u64 to)
{
	if (!pc->ts || from >= to || to - from > BUF_SIZE)
		return;
	struct ts_seg_ctx sc = {.buf = pc->buf, .ts = pc->ts, .from = from};
	bpf_loop(to - from, ts_byte_cb, &sc, 0);
}

// Parses the traceparent value header_line kept in st. A global function,
// outside the scan callbacks: its stack does not add to theirs.
__noinline int w3c_traceparent(struct w3c_scan *st)
{
	if (!st)
		return 0;
	st->tp_valid = st->tp_count == 1 && st->tp_len &&
		       parse_traceparent(st->tp_raw, 0, st->tp_len, st->trace_id, st->parent_id,
					 &st->trace_flags);
	return 0;
}

// At the start i of a header line: records the headers this tracer reads.
static __always_inline void header_line(struct w3c_ctx *pc, __u64 i)
{
	const __u8 *buf = pc->buf;
	struct w3c_scan *st = pc->st;
	__u64 w = load8(buf, i) | LOWER8;
	if (w == W8('t', 'r', 'a', 'c', 'e', 'p', 'a', 'r')) {
		if ((load4(buf, i + 8) | LOWER4) != W4('e', 'n', 't', ':'))
			return;
		if (st->tp_count < 255)
			st->tp_count++;
		if (st->tp_count == 1) {
			// Parsed after the scan (w3c_traceparent): the buffer may
			// move on, so the value is kept.
			__u64 v = skip_ows(buf, i + 12);
			__builtin_memcpy(st->tp_raw, buf + (v & BUF_MASK), TP_RAW);
			st->tp_len = v < st->end ? (st->end - v < TP_RAW ? st->end - v : TP_RAW) : 0;
		}
		return;
	}
	if (w == W8('t', 'r', 'a', 'c', 'e', 's', 't', 'a')) {
		if ((load4(buf, i + 7) | LOWER4) != W4('a', 't', 'e', ':') || !st->want_ts ||
		    !pc->ts)
			return;
		if (!st->ts_seen) {
			ts_reset(pc->ts);
			st->ts_seen = 1;
		}
		st->in_ts = 1;
		st->ts_from = i + 11;
		return;
	}
	if (w == W8('c', 'o', 'n', 't', 'e', 'n', 't', '-')) {
		if ((load4(buf, i + 8) | LOWER4) != W4('l', 'e', 'n', 'g') ||
		    (load4(buf, i + 11) | LOWER4) != W4('g', 't', 'h', ':'))
			return;
		__u64 p = skip_ows(buf, i + 15);
		__u64 v = 0;
#pragma unroll
		for (int k = 0; k < 10; k++) {
			__u8 d = at(buf, p + k);
			if (d < '0' || d > '9')
				break;
			v = v * 10 + (d - '0');
		}
		st->content_length = v;
		return;
	}
	if ((load4(buf, i) | LOWER4) == W4('h', 'o', 's', 't') && at(buf, i + 4) == ':') {
		__u64 h = skip_ows(buf, i + 5);
		__builtin_memcpy(st->host, buf + (h & BUF_MASK), W3C_HOST_MAX);
		__u64 len = token_len(buf, h, W3C_HOST_MAX / 8);
		if (h + len > st->end)
			len = h < st->end ? st->end - h : 0;
		st->host_len = len;
	}
}

// Moves the buffer to data offset base + pos: reads the next bytes of the
// data. False at the end of the data or of the header block limit.
static __always_inline bool w3c_refill(struct w3c_ctx *pc, __u64 pos)
{
	struct w3c_scan *st = pc->st;
	__u64 base = st->base + pos;
	if (base >= st->len)
		return false;
	if (base >= st->limit) {
		st->over_limit = 1;
		return false;
	}
	__u64 n = st->len - base;
	if (n > BUF_SIZE)
		n = BUF_SIZE;
	barrier_var(n);
	if (n == 0 || n > BUF_SIZE)
		return false;
	if (W3C_READ(pc->buf, n, (void *)(st->src + base)))
		return false;
	st->base = base;
	st->end = n;
	st->pos = 0;
	st->ts_from = 0;
	return true;
}

// One line per iteration (a long line: 256 bytes per iteration): at a header
// line start, look at the header; then find the line's end. The buffer is
// refilled from the data when the scan reaches its end, or when a line
// starts too close to it to be classified.
static long w3c_line_cb(__u64 index, void *data)
{
	struct w3c_ctx *pc = data;
	struct w3c_scan *st = pc->st;
	const __u8 *buf = pc->buf;
	__u64 pos = st->pos;
	bool at_start = !st->mid_line && st->line_no > 0;
	if (pos >= st->end ||
	    (at_start && st->end - pos < W3C_LINE_MIN && st->base + st->end < st->len)) {
		if (!w3c_refill(pc, pos))
			return 1;
		pos = 0;
	}
	if (at_start) {
		if (st->base + pos >= st->limit) {
			st->over_limit = 1;
			return 1;
		}
		__u8 ch = at(buf, pos);
		if (ch == '\r' || ch == '\n') {
			st->header_end = st->base + pos + (ch == '\r' ? 2 : 1);
			return 1;
		}
		header_line(pc, pos);
	}
	__u64 nl = ~0ull;
#pragma unroll
	for (int k = 0; k < LINE_WORDS; k++) {
		__u64 m = bytes_eq(load8(buf, pos + 8 * k), '\n');
		if (m) {
			nl = pos + 8 * k + first_byte(m);
			break;
		}
	}
	if (nl < st->end) {
		if (st->line_no == 0)
			st->minor0 = nl >= 2 && at(buf, nl - 2) == '0'; // "HTTP/1.0\r\n"
		if (st->in_ts) {
			ts_segment(pc, st->ts_from, nl);
			w3c_ts_end(pc->ts);
			st->in_ts = 0;
		}
		st->pos = nl + 1;
		st->line_no++;
		st->mid_line = 0;
		return 0;
	}
	__u64 stop = pos + 8 * LINE_WORDS;
	if (stop > st->end)
		stop = st->end;
	if (st->in_ts) {
		ts_segment(pc, st->ts_from, stop);
		st->ts_from = stop;
	}
	st->pos = stop;
	st->mid_line = 1;
	return 0;
}

// Scans from st->pos: the request line when st->line_no is 0, then header
// lines, until the blank line, the end of the data or the block limit. With
// steps 1, the request line only (no bpf_loop). ts may be 0. A global
// function: the callbacks are verified once.
__noinline int w3c_scan(struct w3c_scan *st, struct w3c_buf *buf, struct ts_scan *ts, __u32 loop)
{
	if (!st || !buf)
		return 0;
	struct w3c_ctx pc = {.buf = buf->b, .st = st, .ts = ts};
	if (loop)
		bpf_loop(W3C_STEPS, w3c_line_cb, &pc, 0);
	else
		w3c_line_cb(0, &pc);
	w3c_traceparent(st);
	// At the end of the header block, an unfinished tracestate line ends.
	if ((st->header_end || st->over_limit) && st->in_ts) {
		w3c_ts_end(ts);
		st->in_ts = 0;
	}
	return 0;
}
