//go:build linux

package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"time"
)

// profiler takes pprof profiles of the collector (its pprof extension)
// around one wrk run (-pprof): a CPU profile while wrk runs, and the
// allocation profile before and after, so `go tool pprof -base` shows the
// run's allocations alone.
type profiler struct {
	port   int
	prefix string
	cpu    chan error
}

func startProfiles(ctx context.Context, port int, prefix string, d time.Duration) (*profiler, error) {
	p := &profiler{port: port, prefix: prefix, cpu: make(chan error, 1)}
	if err := p.get(ctx, "allocs", prefix+"-allocs0.pb.gz"); err != nil {
		return nil, err
	}
	secs := max(1, int(d/time.Second)-1)
	go func() { p.cpu <- p.get(ctx, fmt.Sprintf("profile?seconds=%d", secs), prefix+"-cpu.pb.gz") }()
	return p, nil
}

func (p *profiler) finish(ctx context.Context) error {
	if err := <-p.cpu; err != nil {
		return err
	}
	return p.get(ctx, "allocs", p.prefix+"-allocs1.pb.gz")
}

func (p *profiler) get(ctx context.Context, what, path string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("http://127.0.0.1:%d/debug/pprof/%s", p.port, what), nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("pprof %s: %w", what, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("pprof %s: %s", what, resp.Status)
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return fmt.Errorf("pprof %s: %w", what, err)
	}
	return f.Close()
}
