// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
#pragma once

// Goroutine tracking for Go processes (bpf/goruntime fills go_procs). In a
// Go process the trace context belongs to the goroutine, not to the thread:
// goroutines move between threads. The current goroutine is read from the
// thread's TLS where the Go runtime keeps it, and its ancestry from the g
// itself (goid, parentGoid): nothing follows the scheduler or goroutine
// creation, so a Go server pays no uprobe.

// What the programs need to know of one Go executable, per process.
struct go_proc {
	__u64 allgs;      // run-time address of runtime.allgs (a []*g), 0 if unknown
	__u64 write_loop; // run-time g.startpc of a net/http writeLoop goroutine (its go wrapper), 0 if none
	__u32 goid_off;   // offsets in runtime.g; goid_off 0: unknown, goroutines
	__u32 parent_off; // are then keyed by g address, without ancestry
	__u32 startpc_off;
	__u32 writech_off; // net/http.persistConn.writech, 0 if unknown
	__u32 recvq_off;   // runtime.hchan.recvq, 0 if unknown
	__u32 _pad;
};

// Go processes whose goroutines are tracked: tgid -> what to read.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, struct go_proc);
} go_procs SEC(".maps");

struct go_key {
	__u32 tgid;
	__u32 _pad;
	__u64 g; // the goid, or the g address when go_proc.goid_off is 0
};

// (tgid, goid) -> context of the request the goroutine serves (set by
// httptrace when it reads one), or handed to it for one outgoing request
// (thread_ctx.inherited, by goruntime), or blocked: the goroutine has no
// context and must not take its ancestors'.
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct go_key);
	__type(value, struct thread_ctx);
} go_ctxs SEC(".maps");

// (tgid, goid) -> parentGoid of goroutines found in the runtime's goroutine
// table: the ancestry of goroutines that did no I/O, kept after they exit.
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct go_key);
	__type(value, __u64);
} go_parents SEC(".maps");

#define GO_MAX_DEPTH 8      // ancestors looked at for a context
#define GO_MAX_ALLGS 65536  // goroutine table entries scanned per ancestor

// The goroutine (runtime.g address) the current thread runs, 0 if none. On
// amd64 Go keeps it in TLS at fsbase-8, with and without cgo.
static __always_inline __u64 current_g(void)
{
#if defined(__TARGET_ARCH_x86)
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	__u64 fsbase = BPF_CORE_READ(task, thread.fsbase);
	__u64 g = 0;
	if (!fsbase || bpf_probe_read_user(&g, sizeof(g), (void *)(fsbase - 8)))
		return 0;
	return g;
#else
	return 0;
#endif
}

static __always_inline __u64 read_u64(__u64 addr)
{
	__u64 v = 0;
	if (bpf_probe_read_user(&v, sizeof(v), (void *)addr))
		return 0;
	return v;
}

// The key of goroutine g in go_ctxs.
static __always_inline __u64 go_id(struct go_proc *p, __u64 g)
{
	return p->goid_off ? read_u64(g + p->goid_off) : g;
}

// The id under which the current goroutine keeps its context, 0 if the
// process is not a tracked Go process or the thread runs no goroutine.
static __always_inline __u64 current_go_id(__u32 tgid, bool *is_go)
{
	struct go_proc *p = bpf_map_lookup_elem(&go_procs, &tgid);
	*is_go = p != 0;
	if (!p)
		return 0;
	__u64 g = current_g();
	return g ? go_id(p, g) : 0;
}

// The walk up a goroutine's ancestry, one bpf_loop iteration per step: a
// step looks at the context and the known parent of ancestor anc, or scans
// one entry of the goroutine table for it (last entries first: new
// goroutines are appended). g structs are never freed: an exited goroutine
// keeps its goid and parentGoid until its g is reused, and a reused g has a
// new goid, so a match is never another goroutine. Parents found in the
// table are remembered in go_parents, ancestors not in it as parentless.
struct go_walk {
	__u64 anc;   // the ancestor looked at
	__u64 found; // result: the ancestor whose context applies, 0 if none
	__u64 allgs; // the table's array and length, read at the first scan
	__u64 len;
	__u64 scan;  // entries of the table looked at for anc + 1, 0: not scanning
	__u64 table; // run-time address of runtime.allgs, 0 if unknown
	__u32 depth; // ancestors looked at
	__u32 tgid;
	__u32 goid_off;
	__u32 parent_off;
};

// The walk's state lives in a per-CPU map, not on the stack: the verifier
// does not track map contents, so the callback is verified once instead of
// once per value of the counters.
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct go_walk);
} go_walk_state SEC(".maps");

struct go_walk_ctx {
	struct go_walk *w;
};

static long go_walk_cb(__u64 i, void *data)
{
	struct go_walk *w = ((struct go_walk_ctx *)data)->w;
	struct go_key k = {.tgid = w->tgid, .g = w->anc};
	if (!w->scan) {
		if (!w->anc || w->depth >= GO_MAX_DEPTH)
			return 1;
		struct thread_ctx *t = bpf_map_lookup_elem(&go_ctxs, &k);
		if (t) {
			// A blocked or handed context is not passed on.
			w->found = t->blocked || t->inherited ? 0 : w->anc;
			return 1;
		}
		__u64 *known = bpf_map_lookup_elem(&go_parents, &k);
		if (known) {
			w->anc = *known;
			w->depth++;
			return 0;
		}
		if (!w->table)
			return 1;
		if (!w->allgs) {
			w->allgs = read_u64(w->table);
			w->len = read_u64(w->table + 8);
			if (w->len > GO_MAX_ALLGS)
				w->len = GO_MAX_ALLGS;
			if (!w->allgs || !w->len)
				return 1;
		}
		w->scan = 1;
		return 0;
	}
	if (w->scan > w->len) {
		// Not in the table: its g was reused, and a goid is never seen
		// again. Remembered as parentless, so no later walk scans for it.
		__u64 none = 0;
		bpf_map_update_elem(&go_parents, &k, &none, BPF_ANY);
		return 1;
	}
	__u64 g = read_u64(w->allgs + 8 * (w->len - w->scan));
	w->scan++;
	if (!g || read_u64(g + w->goid_off) != w->anc)
		return 0;
	__u64 parent = read_u64(g + w->parent_off);
	bpf_map_update_elem(&go_parents, &k, &parent, BPF_ANY);
	w->anc = parent;
	w->depth++;
	w->scan = 0;
	return 0;
}

// The goid of the nearest ancestor (up to GO_MAX_DEPTH) of goroutine g of
// process tgid that has a context it passes on (not blocked, not handed),
// 0 if none. A global function: verified once, whatever its callers.
__noinline __u64 go_ancestor(__u32 tgid, __u64 g)
{
	struct go_proc *p = bpf_map_lookup_elem(&go_procs, &tgid);
	if (!p || !g)
		return 0;
	__u32 zero = 0;
	struct go_walk *w = bpf_map_lookup_elem(&go_walk_state, &zero);
	if (!w)
		return 0;
	__builtin_memset(w, 0, sizeof(*w));
	w->anc = read_u64(g + p->parent_off);
	w->table = p->allgs;
	w->tgid = tgid;
	w->goid_off = p->goid_off;
	w->parent_off = p->parent_off;
	struct go_walk_ctx wc = {.w = w};
	bpf_loop(GO_MAX_DEPTH * (GO_MAX_ALLGS + 2), go_walk_cb, &wc, 0);
	return w->found;
}

// The context the current thread works under: its goroutine's, or the
// nearest ancestor's in a tracked Go process (never the thread's: a
// goroutine without known ancestry has none), else the thread's. id
// receives the goroutine's key (0 if none).
static __always_inline struct thread_ctx *current_ctx(__u64 pid_tgid, __u64 *id)
{
	*id = 0;
	__u32 tgid = pid_tgid >> 32;
	struct go_proc *p = bpf_map_lookup_elem(&go_procs, &tgid);
	if (!p) {
		struct thread_ctx *t = bpf_map_lookup_elem(&thread_ctxs, &pid_tgid);
		return t && !t->ambiguous ? t : 0;
	}
	__u64 g = current_g();
	if (!g)
		return 0;
	*id = go_id(p, g);
	struct go_key k = {.tgid = tgid, .g = *id};
	struct thread_ctx *t = bpf_map_lookup_elem(&go_ctxs, &k);
	if (t)
		return t->blocked ? 0 : t;
	if (!p->goid_off || !*id)
		return 0;
	// The transport's writeLoop writes the requests of every caller: it
	// only ever works under a context handed to it (goruntime).
	if (p->write_loop && p->startpc_off && read_u64(g + p->startpc_off) == p->write_loop)
		return 0;
	k.g = go_ancestor(tgid, g);
	return k.g ? bpf_map_lookup_elem(&go_ctxs, &k) : 0;
}

// Ends a handed (one-shot) context after its first outgoing request: the
// goroutine is blocked from then on, rather than left to its ancestry.
static __always_inline void end_inherited(__u64 pid_tgid, __u64 id)
{
	if (id) {
		struct go_key k = {.tgid = pid_tgid >> 32, .g = id};
		struct thread_ctx none = {.blocked = 1};
		bpf_map_update_elem(&go_ctxs, &k, &none, BPF_ANY);
	} else {
		bpf_map_delete_elem(&thread_ctxs, &pid_tgid);
	}
}
