// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//
// Byte search 8 bytes at a time (SWAR), shared by the header scanners of
// httptrace (w3c.h) and ctxprop.
#ifndef EBPFTRACING_SWAR_H
#define EBPFTRACING_SWAR_H

#define ONES 0x0101010101010101ull
#define HIGHS 0x8080808080808080ull

// High bit set in each byte of w equal to b; the lowest one is exact.
static __always_inline __u64 bytes_eq(__u64 w, __u8 b)
{
	__u64 x = w ^ (ONES * b);
	return (x - ONES) & ~x & HIGHS;
}

// Index of the lowest flagged byte of a non-zero bytes_eq mask.
static __always_inline __u32 first_byte(__u64 m)
{
	__u32 n = 0;
	if (!(m & 0xffffffffull)) {
		n += 4;
		m >>= 32;
	}
	if (!(m & 0xffffull)) {
		n += 2;
		m >>= 16;
	}
	if (!(m & 0xffull))
		n += 1;
	return n;
}

#endif
