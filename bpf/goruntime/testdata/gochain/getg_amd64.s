#include "textflag.h"

// func getg() uintptr: the current goroutine's runtime.g address, read from
// TLS as the runtime does (what the tracer reads at fsbase-8).
TEXT ·getg(SB),NOSPLIT,$0-8
	MOVQ (TLS), AX
	MOVQ AX, ret+0(FP)
	RET
