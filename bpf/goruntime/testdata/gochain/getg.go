//go:build amd64

package main

// getg returns the address of the calling goroutine's runtime.g.
func getg() uintptr
