package verbs

import (
	"errors"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/gobps/gobps/internal/scenario"
	"github.com/gobps/gobps/proto"
)

// TestProtocolScenarios runs the scripts in testdata/*.txt against the
// protocol machine alone (no driver, no emulation): one command per line,
// '#' starts a comment, and a command that returns something must state it
// after "->" ("panic: ..." for the driver's misuse, "error: ..." for a
// message of the peer's that the protocol does not allow).
//
//	new depth=D eager=E ctl=C         a fresh machine: SendDepth D, E eager
//	                                  buffers, C control slots, eager
//	                                  messages up to eagerBytes
//	token | eager | ctl               take one -> ok | N (the index) | wait
//	put-token | put-eager N | put-ctl N
//	fail                              -> first | again
//
// Sending (frames of op OP, key K, N bytes):
//
//	route OP key=K len=N              -> eager | rendezvous | stable id=I
//	take-credit OP key=K              -> ok | wait (the grant of (OP, K))
//	return-credit OP key=K
//	open OP key=K len=N [stable]      -> sid=S | failed (stable: with the
//	                                  credit taken of (OP, K)'s grant)
//	cts S len=N [slot=X] [refused] [stable=I] -> ok | error: ...
//	posted S | not-posted S           the write is about to be / was not posted
//	wrote S [err]                     -> wake S | none
//	close S                           -> writing | done
//	credit I                          -> ok | error: ...
//	grant OP key=K                    -> id=I len=N owed|held|taken | none
//
// Receiving:
//
//	rts OP key=K len=N                -> ok | error: ...
//	ask OP key=K [stable-receiver]    -> yes | no
//	decline OP key=K
//	need-page                         -> yes | no
//	add-page P                        a registered page of header slots named P
//	give OP key=K len=N reg=R         -> stable id=I page=P off=O
//	slot OP key=K len=N reg=R         -> slot=S
//	land S len=N                      -> OP key=K reg=R | error: ... [release R]
//	land-stable I len=N               -> OP key=K | error: ...
//	header I OP key=K len=N           -> ok | error: ... (the header in I's slot)
//	release OP key=K                  -> credit I | none
//	teardown                          -> release R ... | none
//
// Registrations are names (R, P): the machine keeps them and hands them
// back; the runner checks that each is handed back at most once.
func TestProtocolScenarios(t *testing.T) {
	scenario.Files(t, filepath.Join("testdata", "*.txt"), func(*testing.T) scenario.Step {
		sc := &protoScenario{}
		return sc.run
	})
}

// protoScenario is the state of one script.
type protoScenario struct {
	p        *protocol
	released map[string]bool // registrations handed back
}

// run runs one command; a panic of the machine's is its result.
func (sc *protoScenario) run(args []string) (got string, err error) {
	defer func() {
		if r := recover(); r != nil {
			got = fmt.Sprintf("panic: %v", r)
		}
	}()
	return sc.step(args)
}

// parseOp returns the op named s ("push", "pull-resp", ...).
func parseOp(s string) (proto.Op, error) {
	for o := proto.Op(0); o < 64; o++ {
		if o.Valid() && o.String() == s {
			return o, nil
		}
	}
	return 0, fmt.Errorf("no op %q", s)
}

func (sc *protoScenario) step(args []string) (string, error) {
	cmd := args[0]
	kv, pos := map[string]string{}, []string(nil)
	flags := map[string]bool{}
	for _, a := range args[1:] {
		if k, v, ok := strings.Cut(a, "="); ok {
			kv[k] = v
		} else {
			pos = append(pos, a)
			flags[a] = true
		}
	}
	num := func(k string) (uint32, error) {
		v, ok := kv[k]
		if !ok {
			return 0, fmt.Errorf("missing %s=", k)
		}
		n, err := strconv.ParseUint(v, 10, 32)
		return uint32(n), err
	}
	posNum := func(i int) (uint32, error) {
		if len(pos) <= i {
			return 0, fmt.Errorf("missing argument %d", i+1)
		}
		n, err := strconv.ParseUint(pos[i], 10, 32)
		return uint32(n), err
	}
	// hdr parses "OP key=K [len=N]" with OP at pos[i].
	hdr := func(i int) (proto.Header, error) {
		if len(pos) <= i {
			return proto.Header{}, errors.New("missing op")
		}
		op, err := parseOp(pos[i])
		if err != nil {
			return proto.Header{}, err
		}
		k, err := num("key")
		if err != nil {
			return proto.Header{}, err
		}
		h := proto.Header{Op: op, Key: proto.Key(k)}
		if _, ok := kv["len"]; ok {
			if h.Length, err = num("len"); err != nil {
				return proto.Header{}, err
			}
		}
		return h, nil
	}
	result := func(err error) string {
		if err != nil {
			if !errors.Is(err, proto.ErrBadFrame) {
				return "error (not a bad frame): " + err.Error()
			}
			return "error: " + err.Error()
		}
		return "ok"
	}
	if cmd == "new" {
		d, err := num("depth")
		if err != nil {
			return "", err
		}
		e, err := num("eager")
		if err != nil {
			return "", err
		}
		c, err := num("ctl")
		if err != nil {
			return "", err
		}
		sc.p = newProtocol(protoConfig{sendDepth: int(d), eagerBufs: int(e), ctlSlots: int(c), eagerMax: eagerBytes})
		sc.released = map[string]bool{}
		return "", nil
	}
	p := sc.p
	if p == nil {
		return "", errors.New("no machine yet: new first")
	}
	took := func(i int, ok bool) string {
		if !ok {
			return "wait"
		}
		return strconv.Itoa(i)
	}
	switch cmd {
	case "token":
		if p.takeToken() {
			return "ok", nil
		}
		return "wait", nil
	case "put-token":
		p.putToken()
	case "eager":
		return took(p.takeEager()), nil
	case "ctl":
		return took(p.takeCtl()), nil
	case "put-eager", "put-ctl":
		n, err := posNum(0)
		if err != nil {
			return "", err
		}
		if cmd == "put-eager" {
			p.putEager(int(n))
		} else {
			p.putCtl(int(n))
		}
	case "fail":
		if p.fail() {
			return "first", nil
		}
		return "again", nil

	case "route":
		h, err := hdr(0)
		if err != nil {
			return "", err
		}
		switch r, g := p.route(&h); r {
		case routeEager:
			return "eager", nil
		case routeRendezvous:
			return "rendezvous", nil
		default:
			return fmt.Sprintf("stable id=%d", g.id), nil
		}
	case "take-credit", "return-credit", "grant":
		h, err := hdr(0)
		if err != nil {
			return "", err
		}
		g := p.grants[stableKey{h.Op, h.Key}]
		switch {
		case cmd == "grant" && g == nil:
			return "none", nil
		case cmd == "grant":
			return fmt.Sprintf("id=%d len=%d %s", g.id, g.n, g.credit), nil
		case g == nil:
			return "", fmt.Errorf("no grant for %s %s", h.Op, h.Key)
		case cmd == "take-credit":
			if p.takeCredit(g) {
				return "ok", nil
			}
			return "wait", nil
		default:
			p.returnCredit(g)
		}
	case "open":
		h, err := hdr(0)
		if err != nil {
			return "", err
		}
		var g *grant
		if flags["stable"] {
			if g = p.grants[stableKey{h.Op, h.Key}]; g == nil {
				return "", fmt.Errorf("no grant for %s %s", h.Op, h.Key)
			}
		}
		sid, ok := p.openSend(&h, g, fmt.Sprintf("S%d", p.nextSID+1))
		if !ok {
			return "failed", nil
		}
		return fmt.Sprintf("sid=%d", sid), nil
	case "cts":
		sid, err := posNum(0)
		if err != nil {
			return "", err
		}
		m := cts{sid: sid, refused: flags["refused"]}
		if m.n, err = num("len"); err != nil && !m.refused {
			return "", err
		}
		if _, ok := kv["slot"]; ok {
			if m.slot, err = num("slot"); err != nil {
				return "", err
			}
		}
		if _, ok := kv["stable"]; ok {
			if m.id, err = num("stable"); err != nil {
				return "", err
			}
			m.stable = true
		}
		w, err := p.cts(&m)
		if err == nil && w != fmt.Sprintf("S%d", sid) {
			return "", fmt.Errorf("cts woke %v, want S%d", w, sid)
		}
		return result(err), nil
	case "posted", "not-posted", "wrote", "close":
		sid, err := posNum(0)
		if err != nil {
			return "", err
		}
		switch cmd {
		case "posted":
			p.writePosted(sid)
		case "not-posted":
			p.writeNotPosted(sid)
		case "wrote":
			if w := p.wrote(sid, !flags["err"]); w != nil {
				return fmt.Sprintf("wake %v", w), nil
			}
			return "none", nil
		case "close":
			if p.closeSend(sid) {
				return "writing", nil
			}
			return "done", nil
		}
	case "credit":
		id, err := posNum(0)
		if err != nil {
			return "", err
		}
		return result(p.credit(id)), nil

	case "rts":
		h, err := hdr(0)
		if err != nil {
			return "", err
		}
		return result(p.rts(&h)), nil
	case "ask":
		h, err := hdr(0)
		if err != nil {
			return "", err
		}
		if p.askStable(&h, flags["stable-receiver"]) {
			return "yes", nil
		}
		return "no", nil
	case "decline":
		h, err := hdr(0)
		if err != nil {
			return "", err
		}
		p.declineStable(&h)
	case "need-page":
		if p.needHdrPage() {
			return "yes", nil
		}
		return "no", nil
	case "add-page":
		if len(pos) < 1 {
			return "", errors.New("add-page NAME")
		}
		p.addHdrPage(pos[0])
	case "give", "slot":
		h, err := hdr(0)
		if err != nil {
			return "", err
		}
		reg, ok := kv["reg"]
		if !ok {
			return "", errors.New("missing reg=")
		}
		buf := make([]byte, h.Length)
		if cmd == "slot" {
			return fmt.Sprintf("slot=%d", p.openSlot(&h, buf, reg)), nil
		}
		d := p.grantStable(&h, buf, reg)
		return fmt.Sprintf("stable id=%d page=%v off=%d", d.id, d.page, d.hdrOff), nil
	case "land", "land-stable":
		id, err := posNum(0)
		if err != nil {
			return "", err
		}
		n, err := num("len")
		if err != nil {
			return "", err
		}
		if cmd == "land-stable" {
			d, err := p.landStable(id, n)
			if err != nil {
				return result(err), nil
			}
			return fmt.Sprintf("%s key=%d", d.sk.op, d.sk.key), nil
		}
		s, err := p.landSlot(id, n)
		if s == nil {
			return result(err), nil
		}
		if err := sc.handBack(s.reg); err != nil {
			return "", err
		}
		if err != nil {
			return fmt.Sprintf("%s release %v", result(err), s.reg), nil
		}
		return fmt.Sprintf("%s key=%d reg=%v", s.hdr.Op, s.hdr.Key, s.reg), nil
	case "header":
		id, err := posNum(0)
		if err != nil {
			return "", err
		}
		h, err := hdr(1)
		if err != nil {
			return "", err
		}
		if int(id) >= len(p.stableByID) {
			return "", fmt.Errorf("no stable destination %d", id)
		}
		return result(p.stableByID[id].check(&h)), nil
	case "release":
		h, err := hdr(0)
		if err != nil {
			return "", err
		}
		if id, ok := p.release(stableKey{h.Op, h.Key}); ok {
			return fmt.Sprintf("credit %d", id), nil
		}
		return "none", nil
	case "teardown":
		regs := p.teardown()
		if len(regs) == 0 {
			return "none", nil
		}
		var names []string
		for _, r := range regs {
			if err := sc.handBack(r); err != nil {
				return "", err
			}
			names = append(names, fmt.Sprint(r))
		}
		// Open slots come back in map order.
		slices.Sort(names)
		return "release " + strings.Join(names, " "), nil
	default:
		return "", fmt.Errorf("unknown command %q", cmd)
	}
	return "", nil
}

// handBack notes that the machine handed back registration r: a second
// time is an error.
func (sc *protoScenario) handBack(r any) error {
	name := fmt.Sprint(r)
	if sc.released[name] {
		return fmt.Errorf("registration %s handed back twice", name)
	}
	sc.released[name] = true
	return nil
}

// TestProtocolIDsWrap: slot ids wrap from stableBit-1 to 1 (never 0, never
// a stable immediate) and send ids from 2^32-1 to 0, both skipping ids that
// are still open, so that no message in flight finds another frame under
// its id.
func TestProtocolIDsWrap(t *testing.T) {
	p := newProtocol(protoConfig{sendDepth: 4, eagerBufs: 1, ctlSlots: 4, eagerMax: eagerBytes})
	h := proto.Header{Op: proto.OpPush, Length: 8}
	first := p.openSlot(&h, make([]byte, 8), "r1")
	p.nextSlot = stableBit - 3
	var got []uint32
	for i := range 4 {
		got = append(got, p.openSlot(&h, make([]byte, 8), fmt.Sprint("w", i)))
	}
	if want := []uint32{stableBit - 2, stableBit - 1, 2, 3}; first != 1 || !slices.Equal(got, want) {
		t.Errorf("slot ids %d then %v, want 1 then %v (1 is open)", first, got, want)
	}
	if _, err := p.landSlot(stableBit, 8); err == nil {
		t.Error("a write with the stable bit alone landed in a slot")
	}

	p.nextSID = 1<<32 - 3
	s0, _ := p.openSend(&h, nil, "a")
	p.nextSID = 1<<32 - 2
	var sids []uint32
	for i := range 3 {
		sid, ok := p.openSend(&h, nil, fmt.Sprint("b", i))
		if !ok {
			t.Fatal("openSend failed")
		}
		sids = append(sids, sid)
	}
	if want := []uint32{1<<32 - 1, 0, 1}; s0 != 1<<32-2 || !slices.Equal(sids, want) {
		t.Errorf("send ids %d then %v, want %d then %v", s0, sids, uint32(1<<32-2), want)
	}
	p.nextSID = 1<<32 - 3 // the next, 1<<32-2, is open
	if sid, _ := p.openSend(&h, nil, "c"); sid != 2 {
		t.Errorf("send id %d after skipping the open ones, want 2", sid)
	}
}

// TestProtocolStablePages: every 64 grants need a new page of header
// slots; ids are dense from 0 and stop at maxStableGrants, after which
// frames keep the per-frame path.
func TestProtocolStablePages(t *testing.T) {
	p := newProtocol(protoConfig{sendDepth: 4, eagerBufs: 1, ctlSlots: 4, eagerMax: eagerBytes})
	for i := range maxStableGrants {
		h := proto.Header{Op: proto.OpPush, Key: proto.Key(i), Length: 16}
		if !p.askStable(&h, true) {
			t.Fatalf("grant %d not asked for", i)
		}
		if need := p.needHdrPage(); need != (i%stableHdrPage == 0) {
			t.Fatalf("grant %d: needs a page: %v", i, need)
		}
		if i%stableHdrPage == 0 {
			p.addHdrPage(i / stableHdrPage)
		}
		d := p.grantStable(&h, make([]byte, 16), i)
		if d.id != uint32(i) || d.page != i/stableHdrPage || d.hdrOff != (i%stableHdrPage)*stableHdrBytes {
			t.Fatalf("grant %d: id %d in page %v at %d", i, d.id, d.page, d.hdrOff)
		}
	}
	if p.askStable(&proto.Header{Op: proto.OpPush, Key: proto.Key(maxStableGrants), Length: 16}, true) {
		t.Error("asked for a grant past maxStableGrants")
	}
	if regs := p.teardown(); len(regs) != maxStableGrants+maxStableGrants/stableHdrPage {
		t.Errorf("teardown handed back %d registrations", len(regs))
	}
}

// TestProtocolIsPure: protocol.go does no I/O and keeps no time: it
// imports nothing but fmt and proto, and has no goroutine, channel or
// select.
func TestProtocolIsPure(t *testing.T) {
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, "protocol.go", nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	allowed := map[string]bool{`"fmt"`: true, `"github.com/gobps/gobps/proto"`: true}
	for _, imp := range f.Imports {
		if !allowed[imp.Path.Value] {
			t.Errorf("protocol.go imports %s", imp.Path.Value)
		}
	}
	ast.Inspect(f, func(n ast.Node) bool {
		var what string
		switch n := n.(type) {
		case *ast.GoStmt:
			what = "a go statement"
		case *ast.ChanType:
			what = "a channel type"
		case *ast.SelectStmt:
			what = "a select"
		case *ast.SendStmt:
			what = "a channel send"
		case *ast.UnaryExpr:
			if n.Op == token.ARROW {
				what = "a channel receive"
			}
		}
		if what != "" {
			t.Errorf("%s: %s in the protocol machine", fset.Position(n.Pos()), what)
		}
		return true
	})
}
