// Command gochain is driven by goruntime's privileged tests, one command per
// stdin line, one reply per stdout line:
//
//	(start)      "ready <tid>": goroutine P is locked to thread tid and waits
//	ping         P wakes (runtime.execute on tid) and replies "pong"
//	chain        P starts G2, G2 starts G3; G3 locks its thread and replies
//	             "locked <tid>", then waits
//	wake         G3 wakes (runtime.execute on its thread), replies "woke",
//	             and waits again
//	done         G3 unlocks its thread and exits (G2 has exited already);
//	             replies "done"
//	churn <ms>   P starts GOMAXPROCS workers that start goroutines for ms
//	             milliseconds; "churned <n>"
//	pingpong <ms>  with GOMAXPROCS=1, two goroutines hand a token back and
//	             forth for ms milliseconds; "pingpong <round trips>"
package main

import (
	"bufio"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

var outMu sync.Mutex

func reply(format string, args ...any) {
	outMu.Lock()
	defer outMu.Unlock()
	fmt.Printf(format+"\n", args...)
}

func main() {
	pcmds := make(chan string)
	wake := make(chan struct{})
	done := make(chan struct{})
	g3exited := make(chan struct{})
	go func() { // P
		runtime.LockOSThread()
		reply("ready %d %d", syscall.Gettid(), getg())
		for cmd := range pcmds {
			f := strings.Fields(cmd)
			switch f[0] {
			case "churn":
				reply("churned %d", churn(millis(f)))
			case "ping":
				reply("pong")
			case "chain":
				go func() { // G2
					go func() { // G3
						runtime.LockOSThread()
						reply("locked %d %d", syscall.Gettid(), getg())
						<-wake
						reply("woke")
						<-done
						runtime.UnlockOSThread()
						g3exited <- struct{}{}
					}()
				}()
			}
		}
	}()
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		f := strings.Fields(in.Text())
		if len(f) == 0 {
			continue
		}
		switch f[0] {
		case "ping", "chain", "churn":
			pcmds <- in.Text()
		case "wake":
			wake <- struct{}{}
		case "done":
			done <- struct{}{}
			<-g3exited
			reply("done")
		case "pingpong":
			reply("pingpong %d", pingpong(millis(f)))
		}
	}
}

func millis(f []string) time.Duration {
	if len(f) < 2 {
		return time.Second
	}
	ms, _ := strconv.Atoi(f[1])
	return time.Duration(ms) * time.Millisecond
}

// churn starts short goroutines from GOMAXPROCS workers, in batches.
func churn(d time.Duration) int64 {
	var n atomic.Int64
	deadline := time.Now().Add(d)
	var workers sync.WaitGroup
	for range runtime.GOMAXPROCS(0) {
		workers.Go(func() {
			var sink atomic.Int64
			for time.Now().Before(deadline) {
				var wg sync.WaitGroup
				for range 100 {
					wg.Go(func() { sink.Add(1) })
				}
				wg.Wait()
				n.Add(100)
			}
		})
	}
	workers.Wait()
	return n.Load()
}

// pingpong counts round trips of a token between two goroutines on one P:
// each round trip is two goroutine switches, two runtime.execute calls.
func pingpong(d time.Duration) int64 {
	prev := runtime.GOMAXPROCS(1)
	defer runtime.GOMAXPROCS(prev)
	ping, pong := make(chan struct{}), make(chan struct{})
	go func() {
		for range ping {
			pong <- struct{}{}
		}
	}()
	var n int64
	deadline := time.Now().Add(d)
	for ; n%1024 != 0 || time.Now().Before(deadline); n++ {
		ping <- struct{}{}
		<-pong
	}
	close(ping)
	return n
}
