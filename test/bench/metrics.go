//go:build linux

package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
)

type promSamples map[string]float64 // full series text → value

// scrape reads the collector's Prometheus endpoint.
func scrape(ctx context.Context, port int) (promSamples, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("http://127.0.0.1:%d/metrics", port), nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("scrape collector metrics: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("scrape collector metrics: %s", resp.Status)
	}
	out := promSamples{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			continue
		}
		out[line[:i]] = v
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("scrape collector metrics: %w", err)
	}
	if len(out) == 0 {
		return nil, errors.New("scrape collector metrics: no samples")
	}
	return out, nil
}

// sum adds the samples whose metric name contains every one of parts; 0
// when there are none (the SDK exports a counter only once it has been added
// to).
func (p promSamples) sum(parts ...string) float64 {
	var t float64
	for series, v := range p {
		metric, _, _ := strings.Cut(series, "{")
		if containsAll(metric, parts) {
			t += v
		}
	}
	return t
}

// has reports whether a metric whose name contains every one of parts was
// exported.
func (p promSamples) has(parts ...string) bool {
	for series := range p {
		metric, _, _ := strings.Cut(series, "{")
		if containsAll(metric, parts) {
			return true
		}
	}
	return false
}

func containsAll(s string, parts []string) bool {
	for _, part := range parts {
		if !strings.Contains(s, part) {
			return false
		}
	}
	return true
}
