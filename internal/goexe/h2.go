package goexe

import (
	"debug/elf"
	"errors"
	"fmt"
)

// H2Copy is one copy of Go's HTTP/2 in a program: the standard library's
// bundled one (net/http, names prefixed http2) or golang.org/x/net/http2.
type H2Copy struct {
	// Name: "net/http" or "golang.org/x/net/http2".
	Name string
	// Probe sites (file offsets of the entries), 0 if that side is absent.
	RunHandler, HandlerDone                     uint64 // server
	EncodeHeaders, WriteHeaders, HandleResponse uint64 // client
	HasServer, HasClient                        bool
	Offsets                                     H2CopyOffsets
}

// H2CopyOffsets are one copy's struct offsets, from DWARF.
type H2CopyOffsets struct {
	SCConn    uint64 // serverConn.conn (net.Conn)
	RWRws     uint64 // responseWriter.rws
	RwsStream uint64 // responseWriterState.stream
	RwsStatus uint64 // responseWriterState.status (int)
	StreamID  uint64 // stream.id (uint32)
	CSCC      uint64 // clientStream.cc
	CCTconn   uint64 // ClientConn.tconn (net.Conn)
	MHFFields uint64 // MetaHeadersFrame.Fields ([]hpack.HeaderField)
	HFValue   uint64 // hpack.HeaderField.Value
}

// H2Offsets are the offsets both copies share (net/http.Request, net/url,
// net), from DWARF.
type H2Offsets struct {
	ReqMethod, ReqURL, ReqHost, ReqURI uint64
	URLPath, URLQuery, URLHost         uint64
	ConnFD, FDLaddr, FDRaddr           uint64
	TCPAddrIP, TCPAddrPort             uint64
	ReqHeader                          uint64 // net/http.Request.Header (a map)
	// MapDirPtr, MapDirLen: internal/runtime/maps.Map.dirPtr, .dirLen,
	// where the programs read a small map's one group (the traceparent
	// header); MapOK is false where absent (Go before 1.24).
	MapDirPtr, MapDirLen uint64
	MapOK                bool
}

// H2Info is what InspectH2 found.
type H2Info struct {
	Copies      []H2Copy // those present, with both or one side
	Offsets     H2Offsets
	TCPConnItab uint64 // link-time *net.TCPConn net.Conn itab, 0 if unknown
	PIE         bool
}

// ErrNoH2 is returned by InspectH2 for a Go program without either copy
// of Go's HTTP/2 server or client.
var ErrNoH2 = errors.New("no Go HTTP/2 (net/http bundled or golang.org/x/net/http2) client or server")

// ErrNoH2Offsets is returned for an HTTP/2 program without DWARF.
var ErrNoH2Offsets = errors.New("HTTP/2 struct offsets unknown (stripped binary: no DWARF)")

// h2CopyNames are the two copies: package, the prefix of its type names
// (the bundled copy prefixes every name with http2), and its hpack.
var h2CopyNames = []struct{ pkg, prefix, hpack string }{
	{"net/http", "http2", "vendor/golang.org/x/net/http2/hpack"},
	{"golang.org/x/net/http2", "", "golang.org/x/net/http2/hpack"},
}

// H2Func is the symbol of method meth of type typ (unprefixed, e.g.
// "serverConn") in copy i (0 bundled, 1 x/net).
func H2Func(i int, typ, meth string) string {
	c := h2CopyNames[i]
	return fmt.Sprintf("%s.(*%s%s).%s", c.pkg, c.prefix, typ, meth)
}

var h2Methods = [][2]string{
	{"serverConn", "runHandler"}, {"responseWriter", "handlerDone"},
	{"clientStream", "encodeAndWriteHeaders"}, {"ClientConn", "writeHeaders"},
	{"clientConnReadLoop", "handleResponse"},
}

// mapStruct is the runtime's map header (Go 1.24 and later).
const mapStruct = "internal/runtime/maps.Map"

// H2TCPConnItab names the itab of *net.TCPConn as a net.Conn.
const H2TCPConnItab = "go:itab.*net.TCPConn,net.Conn"

// InspectH2 finds the HTTP/2 probe sites of the Go executable at path
// (amd64) in each copy it has. Offsets come from DWARF only.
func InspectH2(path string) (*H2Info, error) {
	var names []string
	for i := range h2CopyNames {
		for _, m := range h2Methods {
			names = append(names, H2Func(i, m[0], m[1]))
		}
	}
	gi, err := Inspect(path, names...)
	if err != nil {
		return nil, err
	}
	f, err := elf.Open(path)
	if err != nil {
		return nil, fmt.Errorf("parse executable: %w", err)
	}
	defer f.Close()
	if f.Machine != elf.EM_X86_64 {
		return nil, fmt.Errorf("HTTP/2 probes on %s: amd64 only", f.Machine)
	}
	info := &H2Info{PIE: f.Type == elf.ET_DYN}
	type found struct {
		idx  int
		fns  [5]Func
		srv  bool
		clnt bool
	}
	var present []found
	for i := range h2CopyNames {
		var fd found
		fd.idx = i
		var ok [5]bool
		for j, m := range h2Methods {
			fd.fns[j], ok[j] = gi.Funcs[H2Func(i, m[0], m[1])]
		}
		fd.srv = ok[0] && ok[1]
		fd.clnt = ok[2] && ok[3] && ok[4]
		if fd.srv || fd.clnt {
			present = append(present, fd)
		}
	}
	if len(present) == 0 {
		return nil, ErrNoH2
	}
	d, err := f.DWARF()
	if err != nil {
		return nil, ErrNoH2Offsets
	}
	want := map[string][]string{
		"net/http.Request": {"Method", "URL", "Host", "RequestURI", "Header"},
		mapStruct:          {"dirPtr", "dirLen"},
		"net/url.URL":      {"Path", "RawQuery", "Host"},
		"net.conn":         {"fd"},
		"net.netFD":        {"laddr", "raddr"},
		"net.TCPAddr":      {"IP", "Port"},
	}
	for _, fd := range present {
		c := h2CopyNames[fd.idx]
		t := c.pkg + "." + c.prefix
		want[t+"serverConn"] = []string{"conn"}
		want[t+"responseWriter"] = []string{"rws"}
		want[t+"responseWriterState"] = []string{"stream", "status"}
		want[t+"stream"] = []string{"id"}
		want[t+"clientStream"] = []string{"cc"}
		want[t+"ClientConn"] = []string{"tconn"}
		want[t+"MetaHeadersFrame"] = []string{"Fields"}
		want[c.hpack+".HeaderField"] = []string{"Name", "Value"}
	}
	fields := structFields(d, want)
	var missing error
	get := func(st, field string) uint64 {
		v, ok := fields[st][field]
		if !ok {
			missing = errors.Join(missing, fmt.Errorf("%s.%s", st, field))
		}
		return v
	}
	info.Offsets = H2Offsets{
		ReqMethod: get("net/http.Request", "Method"), ReqURL: get("net/http.Request", "URL"),
		ReqHost: get("net/http.Request", "Host"), ReqURI: get("net/http.Request", "RequestURI"),
		URLPath: get("net/url.URL", "Path"), URLQuery: get("net/url.URL", "RawQuery"), URLHost: get("net/url.URL", "Host"),
		ConnFD: get("net.conn", "fd"), FDLaddr: get("net.netFD", "laddr"), FDRaddr: get("net.netFD", "raddr"),
		TCPAddrIP: get("net.TCPAddr", "IP"), TCPAddrPort: get("net.TCPAddr", "Port"),
		ReqHeader: get("net/http.Request", "Header"),
	}
	if m := fields[mapStruct]; len(m) == 2 {
		info.Offsets.MapDirPtr, info.Offsets.MapDirLen, info.Offsets.MapOK = m["dirPtr"], m["dirLen"], true
	}
	for _, fd := range present {
		c := h2CopyNames[fd.idx]
		t := c.pkg + "." + c.prefix
		cp := H2Copy{Name: c.pkg, HasServer: fd.srv, HasClient: fd.clnt}
		if fd.srv {
			cp.Offsets.SCConn = get(t+"serverConn", "conn")
			cp.Offsets.RWRws = get(t+"responseWriter", "rws")
			cp.Offsets.RwsStream = get(t+"responseWriterState", "stream")
			cp.Offsets.RwsStatus = get(t+"responseWriterState", "status")
			cp.Offsets.StreamID = get(t+"stream", "id")
		}
		if fd.clnt {
			cp.Offsets.CSCC = get(t+"clientStream", "cc")
			cp.Offsets.CCTconn = get(t+"ClientConn", "tconn")
			cp.Offsets.MHFFields = get(t+"MetaHeadersFrame", "Fields")
			cp.Offsets.HFValue = get(c.hpack+".HeaderField", "Value")
			if get(c.hpack+".HeaderField", "Name") != 0 {
				missing = errors.Join(missing, fmt.Errorf("%s.HeaderField.Name not at offset 0", c.hpack))
			}
		}
		sites := [5]*uint64{&cp.RunHandler, &cp.HandlerDone, &cp.EncodeHeaders, &cp.WriteHeaders, &cp.HandleResponse}
		for j, m := range h2Methods {
			if (j < 2 && !fd.srv) || (j >= 2 && !fd.clnt) {
				continue
			}
			if *sites[j], err = ProbeSite(f, H2Func(fd.idx, m[0], m[1]), fd.fns[j]); err != nil {
				return nil, err
			}
		}
		info.Copies = append(info.Copies, cp)
	}
	if missing != nil {
		return nil, fmt.Errorf("HTTP/2 struct fields not in DWARF: %w", missing)
	}
	if syms, err := f.Symbols(); err == nil {
		for _, s := range syms {
			if s.Name == H2TCPConnItab {
				info.TCPConnItab = s.Value
			}
		}
	}
	return info, nil
}
