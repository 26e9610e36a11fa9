//go:build linux

// Package discovery finds the processes the receiver instruments by reading
// /proc: no shell commands, no cgo, no netlink.
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
//   - For the port criteria, /proc/<pid>/net/tcp and tcp6, once per scan per
//     distinct network namespace (deduped by /proc/<pid>/ns/net) that holds an
//     unselected process still waiting on a port criterion. The kernel lists
//     the listening hash before the established one, so the parser stops at
//     the first line that is not LISTEN and never formats the (possibly
//     huge) established table. The kernel still walks the empty buckets of
//     its established hash to find that line or the end: about 2.5 ms per
//     table on a host with a 262144-bucket hash, whatever the socket count.
//     NETLINK_SOCK_DIAG with only TCPF_LISTEN skips that walk; it would need
//     a setns per namespace.
//   - /proc/<pid>/fd, for a waiting process when it is first seen or
//     exec'd, and for all waiting processes only when a listening socket on a
//     wanted port appeared since the previous scan.
//   - cmdline and environ (for OTEL_SERVICE_NAME), once, on selection.
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
