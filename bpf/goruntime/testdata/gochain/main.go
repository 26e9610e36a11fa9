// Command gochain is driven by goruntime's privileged tests, one command per
// stdin line, one reply per stdout line:
//
//	(start)      "ready <g> <goid>": the main goroutine's runtime.g address
//	             and goid
//	chain <n>    starts a chain of n goroutines, each started by the one
//	             before; the last replies "chained <g> <goid> <parent goid>
//	             <grandparent goid>" and waits for "release"
//	release      ends the chain; replies "released"
//	get <url>    one GET with a keep-alive net/http client; "got <status>"
package main

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net/http"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
)

var outMu sync.Mutex

func reply(format string, args ...any) {
	outMu.Lock()
	defer outMu.Unlock()
	fmt.Printf(format+"\n", args...)
}

// goid parses the current goroutine's id from its stack trace header.
func goid() uint64 {
	buf := make([]byte, 64)
	buf = buf[:runtime.Stack(buf, false)]
	f := bytes.Fields(buf)
	id, _ := strconv.ParseUint(string(f[1]), 10, 64)
	return id
}

func main() {
	reply("ready %d %d", getg(), goid())
	release := make(chan struct{})
	released := make(chan struct{})
	client := &http.Client{}
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		f := strings.Fields(in.Text())
		if len(f) == 0 {
			continue
		}
		switch f[0] {
		case "chain":
			n, _ := strconv.Atoi(f[1])
			ids := make([]uint64, n+1)
			ids[0] = goid()
			var level func(d int)
			level = func(d int) {
				ids[d] = goid()
				if d < n {
					go level(d + 1)
					return
				}
				reply("chained %d %d %d %d", getg(), ids[d], ids[d-1], ids[d-2])
				<-release
				released <- struct{}{}
			}
			go level(1)
		case "release":
			release <- struct{}{}
			<-released
			reply("released")
		case "get":
			resp, err := client.Get(f[1])
			if err != nil {
				reply("got 0")
				continue
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			reply("got %d", resp.StatusCode)
		}
	}
}
