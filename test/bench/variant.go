//go:build linux

package main

import (
	"errors"
	"fmt"
	"strings"
)

// variant is one collector set-up the floor and with runs of a round repeat
// for, so set-ups are compared within one invocation, alternated (-variant).
// The zero variant (no -variant flag) is the bench's plain collector.
type variant struct {
	name      string
	collector string   // binary; "" for -collector
	env       []string // extra environment, K=V
	ebpf      []string // extra receiver ebpf settings, k=v (after -ebpf)
	exporter  []string // extra otlp_http settings, k=v ("::" nests)
	processor []string // extra batch processor settings, k=v ("::" nests)
	// noBatch drops the batch processor: the receiver's batches go to the
	// exporter as they are.
	noBatch     bool
	compression string // "" for -compression
	telemetry   string // service.telemetry.metrics.level; "" for -telemetry-level
}

// variantList is the repeatable -variant flag:
// NAME:key=value;key=value, keys collector, env.K, ebpf.K, exporter.K,
// processor.K, processors (batch or none), compression, telemetry.
type variantList []variant

func (l *variantList) String() string {
	var s []string
	for _, v := range *l {
		s = append(s, v.name)
	}
	return strings.Join(s, ",")
}

func (l *variantList) Set(s string) error {
	name, rest, ok := strings.Cut(s, ":")
	if !ok || name == "" || strings.ContainsAny(name, " /") {
		return fmt.Errorf("want NAME:key=value;…, got %q", s)
	}
	for _, v := range *l {
		if v.name == name {
			return fmt.Errorf("variant %q given twice", name)
		}
	}
	v := variant{name: name}
	for _, kv := range strings.Split(rest, ";") {
		if kv == "" {
			continue
		}
		k, val, ok := strings.Cut(kv, "=")
		if !ok || k == "" || strings.Contains(val, "\n") {
			return fmt.Errorf("variant %s: want key=value, got %q", name, kv)
		}
		switch {
		case k == "collector":
			v.collector = val
		case k == "compression":
			v.compression = val
		case k == "telemetry":
			if val != "none" && val != "basic" && val != "normal" && val != "detailed" {
				return fmt.Errorf("variant %s: telemetry=%q; want none, basic, normal or detailed", name, val)
			}
			v.telemetry = val
		case k == "processors":
			switch val {
			case "batch":
			case "none":
				v.noBatch = true
			default:
				return fmt.Errorf("variant %s: processors=%q; want batch or none", name, val)
			}
		case strings.HasPrefix(k, "env."):
			v.env = append(v.env, strings.TrimPrefix(k, "env.")+"="+val)
		case strings.HasPrefix(k, "ebpf."):
			if k == "ebpf.context_propagation" {
				return errors.New("context_propagation is set per run: use -modes")
			}
			v.ebpf = append(v.ebpf, strings.TrimPrefix(k, "ebpf.")+"="+val)
		case strings.HasPrefix(k, "exporter."):
			v.exporter = append(v.exporter, strings.TrimPrefix(k, "exporter.")+"="+val)
		case strings.HasPrefix(k, "processor."):
			v.processor = append(v.processor, strings.TrimPrefix(k, "processor.")+"="+val)
		default:
			return fmt.Errorf("variant %s: unknown key %q; want collector, compression, telemetry, processors, env.K, ebpf.K, exporter.K or processor.K", name, k)
		}
	}
	*l = append(*l, v)
	return nil
}

func (v variant) desc() string {
	var parts []string
	if v.collector != "" {
		parts = append(parts, "collector "+v.collector)
	}
	if v.compression != "" {
		parts = append(parts, "compression "+v.compression)
	}
	if v.noBatch {
		parts = append(parts, "no batch processor")
	}
	if v.telemetry != "" {
		parts = append(parts, "telemetry "+v.telemetry)
	}
	for _, l := range [][]string{v.env, v.ebpf, v.exporter, v.processor} {
		parts = append(parts, l...)
	}
	return v.name + ": " + strings.Join(parts, ", ")
}
