//go:build linux

package tc

import (
	"errors"
	"fmt"
	"runtime"
	"sort"
	"strings"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// Backends: how the programs attach (ebpf.traffic_control_backend).
const (
	// BackendAuto picks tcx where the kernel has it (6.6+), tc otherwise:
	// found by attaching, not from the kernel version.
	BackendAuto = "auto"
	// BackendTCX attaches tcx links (kernel 6.6+), first in the chain.
	BackendTCX = "tcx"
	// BackendTC adds cls_bpf filters (direct action) to a clsact qdisc,
	// created when the interface has none.
	BackendTC = "tc"
)

// Our tc filters: this priority and handle, on both clsact hooks. A filter
// of someone else is never replaced (it is added with NLM_F_EXCL) nor
// deleted; one with our priority, handle and program name is ours, left by
// an earlier run that could not clean up (kill -9), and is replaced.
const (
	FilterPriority = 3
	FilterHandle   = 0xeb7c
)

// Program names, as the kernel reports them: how our programs are
// recognised on an interface.
const (
	progEgress  = "tc_ipopt_out"
	progIngress = "tc_ipopt_in"
)

// Maps are the carrier maps of httptrace (bpf/include/maps/carrier.h).
type Maps struct {
	CarrierOut *ebpf.Map
	CarrierIn  *ebpf.Map
}

// Options configure Load and Start.
type Options struct {
	// Backend is BackendAuto (""), BackendTCX or BackendTC.
	Backend string
	// Netns are network namespaces by path (/proc/<pid>/ns/net,
	// /run/netns/<name>) whose interfaces get the programs; empty: the
	// caller's namespace only (the host's, for a hostNetwork collector).
	Netns []string
	// KeepOption leaves the option in received packets (default: removed
	// after it is read, so the stack and other programs see the packet as
	// it was sent).
	KeepOption bool
	// Logger gets one line per decision: the backend and why, and per
	// interface the foreign programs found and stale ones removed.
	Logger *zap.Logger
}

// Counters are the kernel counters, summed over CPUs.
type Counters struct {
	Written, Parsed, NoRoom, Stripped, StripFailed uint64
}

// Carrier is the loaded carrier; Start attaches it.
type Carrier struct {
	objs    tcObjects
	opts    Options
	log     *zap.Logger
	backend string // resolved by Start

	mu     sync.Mutex
	scopes []*scope
	done   chan struct{}
	wg     sync.WaitGroup
}

// scope is one network namespace and the interfaces we attached in it.
type scope struct {
	path   string         // "" for the caller's namespace
	ns     netns.NsHandle // -1 for the caller's namespace
	h      *netlink.Handle
	ifaces map[int]*iface
	// Set by the subscription goroutine only.
	updates chan netlink.LinkUpdate
}

type iface struct {
	name    string
	links   []link.Link          // tcx
	filters []*netlink.BpfFilter // tc
	clsact  bool                 // we created the clsact qdisc
}

// Load loads the programs with httptrace's carrier maps. On a verifier
// refusal the error carries the verifier log.
func Load(maps Maps, opts Options) (*Carrier, error) {
	spec, err := loadTc()
	if err != nil {
		return nil, fmt.Errorf("load tc spec: %w", err)
	}
	if opts.KeepOption {
		if err := spec.Variables["keep_option"].Set(uint8(1)); err != nil {
			return nil, fmt.Errorf("set keep_option: %w", err)
		}
	}
	repl := map[string]*ebpf.Map{}
	if maps.CarrierOut != nil {
		repl["carrier_out"] = maps.CarrierOut
	}
	if maps.CarrierIn != nil {
		repl["carrier_in"] = maps.CarrierIn
	}
	c := &Carrier{opts: opts, log: opts.Logger}
	if c.log == nil {
		c.log = zap.NewNop()
	}
	if err := spec.LoadAndAssign(&c.objs, &ebpf.CollectionOptions{MapReplacements: repl}); err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			return nil, fmt.Errorf("load tc programs: %w\n%+v", err, ve)
		}
		return nil, fmt.Errorf("load tc programs: %w", err)
	}
	return c, nil
}

// Start attaches both programs to every interface of the namespaces
// (loopback included: same-host calls go over lo) and follows interfaces
// created later (a container's veth) through a netlink link subscription.
// It fails if an interface that exists now cannot take them.
func (c *Carrier) Start() (err error) {
	c.done = make(chan struct{})
	c.backend = c.opts.Backend
	if c.backend == "" {
		c.backend = BackendAuto
	}
	paths := c.opts.Netns
	if len(paths) == 0 {
		paths = []string{""}
	}
	for _, p := range paths {
		s, err := openScope(p)
		if err != nil {
			return err
		}
		c.mu.Lock()
		c.scopes = append(c.scopes, s)
		c.mu.Unlock()
		// Subscribe before listing: a link created in between is seen
		// by both, and attached once.
		opts := netlink.LinkSubscribeOptions{ErrorCallback: func(error) {}}
		if s.path != "" {
			opts.Namespace = &s.ns
		}
		s.updates = make(chan netlink.LinkUpdate, 64)
		if err := netlink.LinkSubscribeWithOptions(s.updates, c.done, opts); err != nil {
			return fmt.Errorf("subscribe to links of %s: %w", s.name(), err)
		}
		links, err := s.h.LinkList()
		if err != nil {
			return fmt.Errorf("list links of %s: %w", s.name(), err)
		}
		for _, l := range links {
			if err := c.attach(s, l); err != nil {
				return err
			}
		}
		c.wg.Add(1)
		go c.follow(s)
	}
	return nil
}

// Backend is the backend in use ("auto" before the first attach).
func (c *Carrier) Backend() string { return c.backend }

// Interfaces returns "netns/name" of the interfaces with our programs.
func (c *Carrier) Interfaces() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	for _, s := range c.scopes {
		for _, i := range s.ifaces {
			out = append(out, s.name()+"/"+i.name)
		}
	}
	sort.Strings(out)
	return out
}

func (s *scope) name() string {
	if s.path == "" {
		return "own netns"
	}
	return s.path
}

func openScope(path string) (*scope, error) {
	s := &scope{path: path, ns: netns.None(), ifaces: map[int]*iface{}}
	var err error
	if path == "" {
		s.h, err = netlink.NewHandle()
	} else {
		if s.ns, err = netns.GetFromPath(path); err != nil {
			return nil, fmt.Errorf("open network namespace %s: %w", path, err)
		}
		s.h, err = netlink.NewHandleAt(s.ns)
	}
	if err != nil {
		if s.ns.IsOpen() {
			_ = s.ns.Close()
		}
		return nil, fmt.Errorf("netlink handle in %s: %w", s.name(), err)
	}
	return s, nil
}

func (s *scope) close() {
	s.h.Close()
	if s.ns.IsOpen() {
		_ = s.ns.Close()
	}
}

// in runs f with the calling thread in the scope's namespace (ifindexes of
// tcx attach and query are resolved there).
func (s *scope) in(f func() error) error {
	if s.path == "" {
		return f()
	}
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("get own network namespace: %w", err)
	}
	defer orig.Close()
	if err := netns.Set(s.ns); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("enter network namespace %s: %w", s.path, err)
	}
	ferr := f()
	if err := netns.Set(orig); err != nil {
		// The thread stays locked, and Go ends it with this goroutine.
		return errors.Join(ferr, fmt.Errorf("leave network namespace %s: %w", s.path, err))
	}
	runtime.UnlockOSThread()
	return ferr
}

// follow attaches to links created after Start and forgets removed ones.
func (c *Carrier) follow(s *scope) {
	defer c.wg.Done()
	for {
		select {
		case <-c.done:
			return
		case u, ok := <-s.updates:
			if !ok {
				return
			}
			idx := int(u.Index)
			if u.Header.Type == unix.RTM_DELLINK {
				c.mu.Lock()
				if i, ok := s.ifaces[idx]; ok {
					// The kernel removed the programs with the device.
					for _, l := range i.links {
						_ = l.Close()
					}
					delete(s.ifaces, idx)
				}
				c.mu.Unlock()
				continue
			}
			if err := c.attach(s, u.Link); err != nil {
				c.log.Warn("IPv4-option carrier not attached to a new interface: its TLS requests carry no context",
					zap.String("netns", s.name()), zap.String("interface", u.Link.Attrs().Name), zap.Error(err))
			}
		}
	}
}

// carries tells whether the link has an Ethernet header (what the
// programs parse): Ethernet devices, veth, bridges, and loopback.
func carries(l netlink.Link) bool {
	switch l.Attrs().EncapType {
	case "ether", "loopback":
		return true
	}
	return false
}

// attach puts both programs on l, once.
func (c *Carrier) attach(s *scope, l netlink.Link) error {
	a := l.Attrs()
	if !carries(l) {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	select {
	case <-c.done:
		return nil // closing
	default:
	}
	if _, ok := s.ifaces[a.Index]; ok {
		return nil
	}
	i := &iface{name: a.Name}
	foreign, stale, err := c.survey(s, l)
	if err != nil {
		return err
	}
	if c.backend == BackendAuto {
		err := s.in(func() error { return c.attachTCX(i, a.Index) })
		switch {
		case err == nil:
			c.backend = BackendTCX
			c.log.Info("IPv4-option carrier backend: tcx (auto: the kernel has tcx links)")
		case errors.Is(err, ebpf.ErrNotSupported):
			c.backend = BackendTC
			c.log.Info("IPv4-option carrier backend: tc (auto: no tcx links on this kernel)", zap.Error(err))
		default:
			return fmt.Errorf("attach to %s in %s: %w", a.Name, s.name(), err)
		}
	}
	if len(i.links) == 0 {
		switch c.backend {
		case BackendTCX:
			err = s.in(func() error { return c.attachTCX(i, a.Index) })
		case BackendTC:
			err = c.attachTC(s, i, a.Index)
		default:
			err = fmt.Errorf("unknown backend %q", c.backend)
		}
		if err != nil {
			c.detach(s, i, a.Index)
			return fmt.Errorf("attach to %s in %s: %w", a.Name, s.name(), err)
		}
	}
	s.ifaces[a.Index] = i
	if len(foreign) > 0 || stale > 0 {
		c.log.Info("IPv4-option carrier attached next to other TC programs",
			zap.String("netns", s.name()), zap.String("interface", a.Name),
			zap.String("backend", c.backend), zap.Strings("foreign", foreign), zap.Int("stale_removed", stale))
	}
	return nil
}

func (c *Carrier) attachTCX(i *iface, ifindex int) error {
	for _, p := range []struct {
		prog   *ebpf.Program
		attach ebpf.AttachType
	}{
		{c.objs.TcIpoptIn, ebpf.AttachTCXIngress},
		{c.objs.TcIpoptOut, ebpf.AttachTCXEgress},
	} {
		// First in the chain, so a foreign program that ends it (TC_ACT_OK)
		// does not hide packets from us; ours always goes on (TCX_NEXT).
		l, err := link.AttachTCX(link.TCXOptions{Interface: ifindex, Program: p.prog, Attach: p.attach, Anchor: link.Head()})
		if err != nil {
			for _, l := range i.links {
				_ = l.Close()
			}
			i.links = nil
			return fmt.Errorf("attach tcx link: %w", err)
		}
		i.links = append(i.links, l)
	}
	return nil
}

func (c *Carrier) attachTC(s *scope, i *iface, ifindex int) error {
	qdiscs, err := s.h.QdiscList(&netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Index: ifindex}})
	if err != nil {
		return fmt.Errorf("list qdiscs: %w", err)
	}
	have := false
	for _, q := range qdiscs {
		if q.Type() == "clsact" {
			have = true
		}
	}
	if !have {
		q := &netlink.GenericQdisc{QdiscAttrs: netlink.QdiscAttrs{
			LinkIndex: ifindex, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT,
		}, QdiscType: "clsact"}
		if err := s.h.QdiscAdd(q); err != nil {
			return fmt.Errorf("add clsact qdisc: %w", err)
		}
		i.clsact = true
	}
	for _, p := range []struct {
		prog   *ebpf.Program
		parent uint32
		name   string
	}{
		{c.objs.TcIpoptIn, netlink.HANDLE_MIN_INGRESS, progIngress},
		{c.objs.TcIpoptOut, netlink.HANDLE_MIN_EGRESS, progEgress},
	} {
		f := &netlink.BpfFilter{
			FilterAttrs: netlink.FilterAttrs{
				LinkIndex: ifindex, Parent: p.parent, Handle: FilterHandle,
				Priority: FilterPriority, Protocol: unix.ETH_P_ALL,
			},
			Fd: p.prog.FD(), Name: p.name, DirectAction: true,
		}
		// FilterAdd is NLM_F_CREATE|NLM_F_EXCL: never replaces a filter.
		if err := s.h.FilterAdd(f); err != nil {
			return fmt.Errorf("add tc filter %s (prio %d handle %#x): %w", p.name, FilterPriority, FilterHandle, err)
		}
		i.filters = append(i.filters, f)
	}
	return nil
}

// attached is one program on a TC hook of an interface.
type attached struct {
	desc   string             // "tcx ingress NAME (id N)", "tc egress bpf prio P handle H NAME"
	name   string             // the program's name
	filter *netlink.BpfFilter // tc: the filter, with our priority and handle only
	ours   bool
}

// list returns the programs on both TC hooks of l, tcx links and tc filters.
func (s *scope) list(l netlink.Link) ([]attached, error) {
	a := l.Attrs()
	var out []attached
	err := s.in(func() error {
		for _, at := range []struct {
			attach ebpf.AttachType
			dir    string
		}{{ebpf.AttachTCXIngress, "ingress"}, {ebpf.AttachTCXEgress, "egress"}} {
			res, err := link.QueryPrograms(link.QueryOptions{Target: a.Index, Attach: at.attach})
			if err != nil {
				continue // no tcx on this kernel: nothing attached that way
			}
			for _, p := range res.Programs {
				name := progName(p.ID)
				out = append(out, attached{desc: fmt.Sprintf("tcx %s %s (id %d)", at.dir, name, p.ID),
					name: name, ours: isOurs(name)})
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	for _, parent := range []uint32{netlink.HANDLE_MIN_INGRESS, netlink.HANDLE_MIN_EGRESS} {
		filters, err := s.h.FilterList(l, parent)
		if err != nil {
			continue // no clsact qdisc
		}
		dir := "ingress"
		if parent == netlink.HANDLE_MIN_EGRESS {
			dir = "egress"
		}
		for _, f := range filters {
			fa := f.Attrs()
			e := attached{desc: fmt.Sprintf("tc %s %s prio %d handle %#x", dir, f.Type(), fa.Priority, fa.Handle)}
			if bf, ok := f.(*netlink.BpfFilter); ok {
				e.name = progName(ebpf.ProgramID(bf.Id))
				e.desc += " " + e.name
				if bf.Priority == FilterPriority && bf.Handle == FilterHandle && (isOurs(bf.Name) || isOurs(e.name)) {
					e.ours, e.filter = true, bf
				}
			}
			out = append(out, e)
		}
	}
	return out, nil
}

// survey lists the other TC programs on the interface and removes the ones
// an earlier run of ours left behind.
func (c *Carrier) survey(s *scope, l netlink.Link) (foreign []string, stale int, err error) {
	progs, err := s.list(l)
	if err != nil {
		return nil, 0, err
	}
	var errs []error
	for _, p := range progs {
		switch {
		case !p.ours:
			foreign = append(foreign, p.desc)
		case p.filter != nil:
			if err := s.h.FilterDel(p.filter); err != nil {
				errs = append(errs, fmt.Errorf("delete stale %s: %w", p.desc, err))
			} else {
				stale++
			}
		default:
			// A tcx link dies with the process holding it: one of ours
			// here belongs to another collector that still runs. Left
			// alone.
			foreign = append(foreign, p.desc+" (held by another running process)")
		}
	}
	return foreign, stale, errors.Join(errs...)
}

// ProgramsOn describes the programs on the TC hooks of interface ifname in
// the network namespace at netnsPath ("" for the caller's), as the start-up
// log does: "tcx ingress tc_ipopt_in (id 12)", "tc egress bpf prio 3 handle
// 0xeb7c tc_ipopt_out".
func ProgramsOn(netnsPath, ifname string) ([]string, error) {
	s, err := openScope(netnsPath)
	if err != nil {
		return nil, err
	}
	defer s.close()
	l, err := s.h.LinkByName(ifname)
	if err != nil {
		return nil, fmt.Errorf("interface %s in %s: %w", ifname, s.name(), err)
	}
	progs, err := s.list(l)
	if err != nil {
		return nil, err
	}
	out := make([]string, len(progs))
	for i, p := range progs {
		out[i] = p.desc
	}
	return out, nil
}

func isOurs(name string) bool {
	return name == progEgress || name == progIngress ||
		strings.HasPrefix(name, progEgress+":") || strings.HasPrefix(name, progIngress+":")
}

func progName(id ebpf.ProgramID) string {
	p, err := ebpf.NewProgramFromID(id)
	if err != nil {
		return "?"
	}
	defer p.Close()
	info, err := p.Info()
	if err != nil {
		return "?"
	}
	return info.Name
}

// detach removes our programs from one interface; the clsact qdisc goes too
// if we created it and nothing else is on it.
func (c *Carrier) detach(s *scope, i *iface, ifindex int) error {
	var errs []error
	for _, l := range i.links {
		if err := l.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close tcx link on %s: %w", i.name, err))
		}
	}
	i.links = nil
	for _, f := range i.filters {
		if err := s.h.FilterDel(f); err != nil && !errors.Is(err, unix.ENODEV) && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("delete tc filter on %s: %w", i.name, err))
		}
	}
	i.filters = nil
	if i.clsact {
		dev := &netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Index: ifindex}}
		empty := true
		for _, parent := range []uint32{netlink.HANDLE_MIN_INGRESS, netlink.HANDLE_MIN_EGRESS} {
			if fs, err := s.h.FilterList(dev, parent); err != nil || len(fs) > 0 {
				empty = false
			}
		}
		if empty {
			q := &netlink.GenericQdisc{QdiscAttrs: netlink.QdiscAttrs{
				LinkIndex: ifindex, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT,
			}, QdiscType: "clsact"}
			if err := s.h.QdiscDel(q); err != nil && !errors.Is(err, unix.ENODEV) {
				errs = append(errs, fmt.Errorf("delete our clsact qdisc on %s: %w", i.name, err))
			}
		}
		i.clsact = false
	}
	return errors.Join(errs...)
}

// ReadCounters sums the per-CPU counters.
func (c *Carrier) ReadCounters() (Counters, error) {
	var out Counters
	for idx, dst := range map[tcTcCounter]*uint64{
		tcTcCounterTC_WRITTEN:      &out.Written,
		tcTcCounterTC_PARSED:       &out.Parsed,
		tcTcCounterTC_NO_ROOM:      &out.NoRoom,
		tcTcCounterTC_STRIPPED:     &out.Stripped,
		tcTcCounterTC_STRIP_FAILED: &out.StripFailed,
	} {
		var per []uint64
		if err := c.objs.TcCounters.Lookup(uint32(idx), &per); err != nil {
			return out, fmt.Errorf("read tc counter %d: %w", idx, err)
		}
		for _, v := range per {
			*dst += v
		}
	}
	return out, nil
}

// Programs returns the egress and ingress programs (for cost statistics).
func (c *Carrier) Programs() (egress, ingress *ebpf.Program) {
	return c.objs.TcIpoptOut, c.objs.TcIpoptIn
}

// Close stops following links, removes our programs from every interface
// (and a clsact qdisc we created, when nothing else is on it) and closes
// the programs and maps. Safe without Start and twice.
func (c *Carrier) Close() error {
	c.mu.Lock()
	if c.done != nil {
		select {
		case <-c.done:
		default:
			close(c.done)
		}
	}
	c.mu.Unlock()
	c.wg.Wait()
	c.mu.Lock()
	defer c.mu.Unlock()
	var errs []error
	for _, s := range c.scopes {
		for idx, i := range s.ifaces {
			errs = append(errs, c.detach(s, i, idx))
		}
		s.ifaces = map[int]*iface{}
		s.close()
	}
	c.scopes = nil
	errs = append(errs, c.objs.Close())
	return errors.Join(errs...)
}

// Maps returns the carrier maps the programs use.
func (c *Carrier) Maps() Maps {
	return Maps{CarrierOut: c.objs.CarrierOut, CarrierIn: c.objs.CarrierIn}
}
