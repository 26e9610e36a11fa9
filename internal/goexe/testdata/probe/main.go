// Command probe is built by goexe's tests with and without symbols, and by
// each Go release for the offset table: a net/http client and server.
package main

import (
	"fmt"
	"net/http"
	"os"
)

func main() {
	if len(os.Args) > 1 {
		resp, err := http.Get(os.Args[1])
		if err == nil {
			resp.Body.Close()
		}
		return
	}
	fmt.Println("ready")
	var block chan struct{}
	<-block
}
