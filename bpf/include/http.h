// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
// HTTP/1.x and W3C trace-context helpers shared by the programs.
#pragma once

// Length of the method if buf starts a request line ("GET /..."), else 0.
static __always_inline __u32 request_method_len(const __u8 *b)
{
	switch (b[0]) {
	case 'G':
		return (b[1] == 'E' && b[2] == 'T' && b[3] == ' ') ? 3 : 0;
	case 'P':
		if (b[1] == 'U' && b[2] == 'T' && b[3] == ' ')
			return 3;
		if (b[1] == 'O' && b[2] == 'S' && b[3] == 'T' && b[4] == ' ')
			return 4;
		if (b[1] == 'A' && b[2] == 'T' && b[3] == 'C' && b[4] == 'H' && b[5] == ' ')
			return 5;
		return 0;
	case 'H':
		return (b[1] == 'E' && b[2] == 'A' && b[3] == 'D' && b[4] == ' ') ? 4 : 0;
	case 'D':
		return (b[1] == 'E' && b[2] == 'L' && b[3] == 'E' && b[4] == 'T' && b[5] == 'E' &&
			b[6] == ' ')
			       ? 6
			       : 0;
	case 'O':
		return (b[1] == 'P' && b[2] == 'T' && b[3] == 'I' && b[4] == 'O' && b[5] == 'N' &&
			b[6] == 'S' && b[7] == ' ')
			       ? 7
			       : 0;
	case 'C':
		return (b[1] == 'O' && b[2] == 'N' && b[3] == 'N' && b[4] == 'E' && b[5] == 'C' &&
			b[6] == 'T' && b[7] == ' ')
			       ? 7
			       : 0;
	case 'T':
		return (b[1] == 'R' && b[2] == 'A' && b[3] == 'C' && b[4] == 'E' && b[5] == ' ') ? 5
											     : 0;
	}
	return 0;
}

#define W4(a, b, c, d) ((__u32)(a) | (__u32)(b) << 8 | (__u32)(c) << 16 | (__u32)(d) << 24)
// OR-ing 0x20 into each byte lower-cases ASCII letters (and keeps '-', ':').
#define LOWER4 0x20202020u
#define LOWER8 0x2020202020202020ull
#define W8(a, b, c, d, e, f, g, h) ((__u64)W4(a, b, c, d) | (__u64)W4(e, f, g, h) << 32)

static __always_inline bool same_trace(const __u8 *a, const __u8 *b)
{
	__u64 a0, a1, b0, b1;
	__builtin_memcpy(&a0, a, 8);
	__builtin_memcpy(&a1, a + 8, 8);
	__builtin_memcpy(&b0, b, 8);
	__builtin_memcpy(&b1, b + 8, 8);
	return a0 == b0 && a1 == b1;
}

static __always_inline bool same_span(const __u8 *a, const __u8 *b)
{
	__u64 x, y;
	__builtin_memcpy(&x, a, 8);
	__builtin_memcpy(&y, b, 8);
	return x == y;
}

static __always_inline void random_id(__u8 *id, int words)
{
	__u32 any = 0;
	for (int k = 0; k < words; k++) {
		__u32 r = bpf_get_prandom_u32();
		any |= r;
		__builtin_memcpy(id + 4 * k, &r, 4);
	}
	if (!any)
		id[0] = 1;
}

