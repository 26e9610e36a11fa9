//go:build linux

package main

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"
)

type wrkRunner struct {
	path, url            string
	threads, connections int
	cpus                 string // taskset -c list; "" for any CPU
}

// wrkResult is what one wrk run printed.
type wrkResult struct {
	reqPerSec float64
	requests  int64
	p50, p99  time.Duration
	sockErrs  int64 // connect+read+write+timeout
	non2xx    int64
	cpu       time.Duration // wrk's user+system time
}

func (w wrkRunner) run(ctx context.Context, d time.Duration) (wrkResult, error) {
	args := []string{
		"-t" + strconv.Itoa(w.threads), "-c" + strconv.Itoa(w.connections),
		"-d" + strconv.Itoa(int(d.Round(time.Second)/time.Second)) + "s", "--latency", w.url,
	}
	p, err := startPinned(ctx, w.cpus, "wrk", 0, nil, w.path, args...)
	if err != nil {
		return wrkResult{}, err
	}
	defer p.kill()
	select {
	case <-p.done:
	case <-ctx.Done():
		return wrkResult{}, ctx.Err()
	case <-time.After(d + 30*time.Second):
		return wrkResult{}, fmt.Errorf("wrk still running %v after its -d %v", 30*time.Second, d)
	}
	out := p.output()
	if code := exitCode(p.cmd.ProcessState); code != 0 {
		return wrkResult{}, fmt.Errorf("wrk %s exited with %d:\n%s", strings.Join(args, " "), code, out)
	}
	res, err := parseWrk(out)
	if err != nil {
		return wrkResult{}, fmt.Errorf("wrk output: %w\n%s", err, out)
	}
	res.cpu = p.cmd.ProcessState.UserTime() + p.cmd.ProcessState.SystemTime()
	return res, nil
}

var (
	wrkReqPerSecRE = regexp.MustCompile(`(?m)^Requests/sec:\s+([0-9.]+)`)
	wrkRequestsRE  = regexp.MustCompile(`(?m)^\s*(\d+) requests in `)
	wrkPctRE       = regexp.MustCompile(`(?m)^\s+(50|99)(?:\.0+)?%\s+([0-9.]+)(us|ms|s|m|h)\s*$`)
	wrkSockErrRE   = regexp.MustCompile(`Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)`)
	wrkNon2xxRE    = regexp.MustCompile(`Non-2xx or 3xx responses: (\d+)`)
)

// parseWrk reads requests/sec, the request count, errors and the 50% and
// 99% lines of --latency output. wrk prints latencies as 812.00us, 1.84ms,
// 1.02s, 1.50m or 1.00h.
func parseWrk(out []byte) (wrkResult, error) {
	var r wrkResult
	m := wrkReqPerSecRE.FindSubmatch(out)
	if m == nil {
		return r, errors.New("no Requests/sec line")
	}
	r.reqPerSec, _ = strconv.ParseFloat(string(m[1]), 64)
	if m = wrkRequestsRE.FindSubmatch(out); m == nil {
		return r, errors.New("no 'N requests in' line")
	}
	r.requests, _ = strconv.ParseInt(string(m[1]), 10, 64)
	for _, m := range wrkPctRE.FindAllSubmatch(out, -1) {
		v, err := strconv.ParseFloat(string(m[2]), 64)
		if err != nil {
			return r, fmt.Errorf("latency %q: %w", m[0], err)
		}
		unit := map[string]time.Duration{"us": time.Microsecond, "ms": time.Millisecond, "s": time.Second, "m": time.Minute, "h": time.Hour}[string(m[3])]
		d := time.Duration(v * float64(unit))
		if string(m[1]) == "50" {
			r.p50 = d
		} else {
			r.p99 = d
		}
	}
	if r.p99 == 0 {
		return r, errors.New("no 99% latency line (was --latency given?)")
	}
	if m = wrkSockErrRE.FindSubmatch(out); m != nil {
		for _, s := range m[1:] {
			n, _ := strconv.ParseInt(string(s), 10, 64)
			r.sockErrs += n
		}
	}
	if m = wrkNon2xxRE.FindSubmatch(out); m != nil {
		r.non2xx, _ = strconv.ParseInt(string(m[1]), 10, 64)
	}
	if r.requests == 0 {
		return r, errors.New("wrk completed no request")
	}
	return r, nil
}
