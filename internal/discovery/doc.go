//go:build linux

// Package discovery finds the processes the receiver instruments by reading
// /proc, and NETLINK_SOCK_DIAG for listening sockets: no shell commands, no
// cgo.
//
// A [Watcher] scans /proc every interval (and on [Watcher.Nudge]) and reports
// the processes that match any [Criteria] as added, and the selected ones
// that exit as removed. A selected process stays selected until it exits
// (or becomes a zombie, or its pid is reused); it is never un-instrumented
// because it closed its port or exec'd.
//
// # Cost
//
// The watcher keeps a small record per pid. In the steady state a scan is
// one getdents pass over /proc, one poll(2) over the pidfds of the selected
// processes (exit, zombie and pid reuse are exact, with no reads), and, only
// when some Criteria has an ExeGlob, a readlink of /proc/<pid>/exe for a
// quarter of the unselected processes (exec and pid reuse show as another
// exe; each pid is checked every fourth scan). Kernel threads, zombies and
// unreadable processes cost nothing after their first scan. The rest is read
// once per process:
//
//   - /proc/<pid>/exe, when the pid is first seen.
//   - For the port criteria, the listening TCP sockets (IPv4 and IPv6), once
//     per scan per distinct network namespace (deduped by /proc/<pid>/ns/net)
//     that holds an unselected process still waiting on a port criterion.
//     They are dumped with NETLINK_SOCK_DIAG (inet_diag, TCPF_LISTEN only),
//     which walks only the kernel's listening hash: about 25 µs per family
//     (diag.go). The watcher keeps one sock_diag socket per namespace while
//     the namespace has a waiting process, so a namespace costs one setns
//     round trip, on a locked thread, when first read (none for the
//     watcher's own namespace); the sockets are closed once the namespace
//     has no waiting process, and on Close, since a socket keeps its
//     namespace alive.
//   - When netlink fails for a namespace (setns needs CAP_SYS_ADMIN;
//     seccomp; no inet_diag), /proc/<pid>/net/tcp and tcp6 instead, for the
//     next 256 scans before netlink is tried again; the first failure is
//     logged at Debug. The kernel lists the listening hash before the
//     established one, so the parser stops at the first line that is not
//     LISTEN and never formats the (possibly huge) established table; but
//     the kernel still walks the empty buckets of its established hash to
//     find that line or the end: about 2.5 ms per table on a host with a
//     262144-bucket hash, whatever the socket count.
//   - /proc/<pid>/fd, for a waiting process when it is first seen or
//     exec'd, and for all waiting processes only when a listening socket on a
//     wanted port appeared since the previous scan.
//   - cmdline, environ, cgroup, stat and the executable (internal/procres:
//     the resource attributes), once, on selection.
//
// pidfds are used when ProcRoot shows the caller's pid namespace (its
// "self" link is os.Getpid()); otherwise a selected process's stat start
// time (field 22) is read each scan instead.
//
// Limitations: a listening socket handed to an already running process over
// a unix socket, with no new listener on a wanted port appearing anywhere,
// is not noticed. A pid that was a kernel thread, zombie or unreadable and
// is reused within one interval (a full wrap of pid_max) is not noticed.
// Selection races pid reuse between the scan and pidfd_open.
package discovery
