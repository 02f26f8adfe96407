package lifecycle

import (
	"errors"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/gobps/gobps/internal/scenario"
	"github.com/gobps/gobps/proto"
)

// TestScenarios runs the scripts in testdata/*.txt, one command per line
// ('#' starts a comment); a command that produces effects or a result must
// state them after "->", effects in the order the machine returned them,
// joined by "; " ("none" for none):
//
//	config credit=B servers=S         start over with a new Machine
//	start OP parts=K@S[/L],... [bytes=N] [pull] [avg] [localonly] [local=1,0,...]
//	      [stagein] [stageout] [round=R] [prio=P]
//	                                  Start; part i has key K on server S
//	                                  (lane L, default 0), N bytes each (8)
//	sending T -> ok|skip              Sending (T is OP.i)
//	sent T [err=E]                    Sent
//	dest T [piece=P] [len=N] [round=R] -> ok [first] | refused: ...
//	                                  AnswerDest for T's request (whole
//	                                  answer unless piece=; len defaults to
//	                                  the part's, or to one piece)
//	in T N                            AnswerIn of N bytes
//	answer T                          dest (whole) and in, in one step
//	refused T|req=N E -> true|false   AnswerFailed
//	lane-closed S L E, server-failed S E, stop E
//	local-in T [err=E], reduced T [err=E], result T [err=E],
//	published T [err=E], local-out T [err=E], divided T [err=E]
//	staged-in OP [err=E], staged-out OP [err=E]
//	state T -> STATE                  the task's stage and flags
//	check -> live=N inflight=B        Live and InFlight
//
// Errors E are one word, or several in double quotes. After every command
// the checker (invariants_test.go) checks what must always hold: a handle
// completes once, nothing touches a buffer after its handle completed, the
// credit is returned exactly once.
func TestScenarios(t *testing.T) {
	scenario.Files(t, filepath.Join("testdata", "*.txt"), func(*testing.T) scenario.Step {
		sc := &script{}
		return func(args []string) (string, error) {
			got, err := sc.step(args)
			if err == nil && sc.chk != nil {
				if ierr := sc.chk.err(); ierr != nil {
					err = fmt.Errorf("invariant broken: %w", ierr)
				}
			}
			return got, err
		}
	})
}

// script is the state of one script.
type script struct {
	m   *Machine
	chk *checker
	ops map[string]*Op
	cfg Config
}

func (sc *script) step(args []string) (string, error) {
	cmd := args[0]
	kv, pos := scenario.Args(args[1:])
	errArg := func() error {
		if e, ok := kv["err"]; ok {
			return errors.New(e)
		}
		return nil
	}
	if cmd == "config" {
		credit, err := strconv.Atoi(kv["credit"])
		if err != nil {
			return "", fmt.Errorf("credit: %v", err)
		}
		servers, err := strconv.Atoi(kv["servers"])
		if err != nil {
			return "", fmt.Errorf("servers: %v", err)
		}
		sc.cfg = Config{Credit: credit, Servers: servers}
		sc.m = New(sc.cfg)
		sc.chk = newChecker(sc.m)
		sc.ops = map[string]*Op{}
		return "", nil
	}
	if sc.m == nil {
		return "", errors.New("no config yet")
	}
	m := sc.m
	switch cmd {
	case "start":
		if len(pos) < 1 {
			return "", errors.New("start OP parts=...")
		}
		spec, err := sc.spec(pos[0], pos[1:], kv)
		if err != nil {
			return "", err
		}
		op := m.Start(spec)
		sc.ops[pos[0]] = op
		sc.chk.started(op)
	case "sending", "sent", "dest", "in", "answer", "local-in", "reduced", "result", "published", "local-out", "divided", "state":
		if len(pos) < 1 {
			return "", fmt.Errorf("%s TASK", cmd)
		}
		t, err := sc.task(pos[0])
		if err != nil {
			return "", err
		}
		switch cmd {
		case "sending":
			ok := m.Sending(t)
			sc.chk.sending(t, ok)
			return sc.result(map[bool]string{true: "ok", false: "skip"}[ok]), nil
		case "sent":
			m.Sent(t, errArg())
			sc.chk.sent(t)
		case "dest", "answer":
			h := proto.Header{Op: proto.OpPullResp, Key: t.Part.Key, Round: t.Round, ReqID: t.ReqID, DType: t.Op.Spec.DType, Length: uint32(t.Part.Len)}
			if v, ok := kv["piece"]; ok {
				p, err := strconv.Atoi(v)
				if err != nil {
					return "", err
				}
				h.Flags, h.Piece = proto.FlagPiece, uint32(p)
				h.Length = uint32(min(proto.PieceBytes, t.Part.Len-p*proto.PieceBytes))
			}
			if v, ok := kv["len"]; ok {
				n, err := strconv.Atoi(v)
				if err != nil {
					return "", err
				}
				h.Length = uint32(n)
			}
			if v, ok := kv["round"]; ok {
				r, err := strconv.ParseUint(v, 10, 64)
				if err != nil {
					return "", err
				}
				h.Round = r
			}
			if v, ok := kv["req"]; ok {
				r, err := strconv.ParseUint(v, 10, 64)
				if err != nil {
					return "", err
				}
				h.ReqID = r
			}
			dst, first, err := m.AnswerDest(&h)
			if err != nil {
				sc.chk.refusedDest(t)
				return sc.result("refused: " + err.Error()), nil
			}
			sc.chk.dest(t, dst)
			if cmd == "answer" {
				m.AnswerIn(h.ReqID, len(dst))
				sc.chk.in(t)
				return sc.result(""), nil
			}
			s := "ok"
			if first {
				s += " first"
			}
			return sc.result(s), nil
		case "in":
			if len(pos) < 2 {
				return "", errors.New("in TASK N")
			}
			n, err := strconv.Atoi(pos[1])
			if err != nil {
				return "", err
			}
			m.AnswerIn(t.ReqID, n)
			sc.chk.in(t)
		case "local-in":
			m.LocalInDone(t, errArg())
			sc.chk.ended(t)
		case "reduced":
			var sum []byte
			if errArg() == nil {
				sum = make([]byte, len(t.Buf))
			}
			m.Reduced(t, sum, errArg())
			sc.chk.ended(t)
		case "result":
			var res []byte
			if errArg() == nil {
				res = make([]byte, len(t.Buf))
			}
			m.ResultReady(t, res, errArg())
			sc.chk.ended(t)
		case "published":
			m.Published(t, errArg())
			sc.chk.ended(t)
		case "local-out":
			m.LocalOutDone(t, errArg())
			sc.chk.ended(t)
		case "divided":
			m.Divided(t, errArg())
			sc.chk.ended(t)
		case "state":
			return t.State(), nil
		}
	case "refused":
		var id uint64
		if v, ok := kv["req"]; ok && len(pos) == 1 {
			n, err := strconv.ParseUint(v, 10, 64)
			if err != nil {
				return "", err
			}
			id = n
		} else if len(pos) == 2 {
			t, err := sc.task(pos[0])
			if err != nil {
				return "", err
			}
			id = t.ReqID
		} else {
			return "", errors.New("refused TASK|req=N ERR")
		}
		ok := m.AnswerFailed(id, errors.New(pos[len(pos)-1]))
		return sc.result(strconv.FormatBool(ok)), nil
	case "lane-closed":
		if len(pos) < 3 {
			return "", errors.New("lane-closed S L ERR")
		}
		s, _ := strconv.Atoi(pos[0])
		l, _ := strconv.Atoi(pos[1])
		m.LaneClosed(s, l, errors.New(pos[2]))
		sc.chk.laneClosed(s, l)
	case "server-failed":
		if len(pos) < 2 {
			return "", errors.New("server-failed S ERR")
		}
		s, _ := strconv.Atoi(pos[0])
		m.ServerFailed(s, errors.New(pos[1]))
	case "stop":
		if len(pos) < 1 {
			return "", errors.New("stop ERR")
		}
		m.Stop(errors.New(pos[0]))
	case "staged-in", "staged-out":
		if len(pos) < 1 {
			return "", fmt.Errorf("%s OP", cmd)
		}
		op := sc.ops[pos[0]]
		if op == nil {
			return "", fmt.Errorf("no op %q", pos[0])
		}
		if cmd == "staged-in" {
			m.StagedIn(op, nil, errArg())
			sc.chk.stagedIn(op)
		} else {
			m.StagedOut(op, errArg())
			sc.chk.stagedOut(op)
		}
	case "check":
		return fmt.Sprintf("live=%d inflight=%d", m.Live(), m.InFlight()), nil
	default:
		return "", fmt.Errorf("unknown command %q", cmd)
	}
	return sc.result(""), nil
}

// result is what a command returns: its own result, then the effects it
// produced, each checked against the invariants.
func (sc *script) result(own string) string {
	effs := sc.m.AppendEffects(nil)
	var parts []string
	if own != "" {
		parts = append(parts, own)
	}
	for _, e := range effs {
		sc.chk.effect(e)
		parts = append(parts, sc.describe(e))
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, "; ")
}

func (sc *script) name(op *Op) string {
	for n, o := range sc.ops {
		if o == op {
			return n
		}
	}
	return op.Spec.Name
}

func (sc *script) describe(e Effect) string {
	var s string
	if e.Task != nil {
		s = fmt.Sprintf("%s %s.%d", e.Kind, sc.name(e.Task.Op), e.Task.Index)
		if e.Kind == Send {
			s += fmt.Sprintf(" req=%d", e.Task.ReqID)
		}
	} else {
		s = fmt.Sprintf("%s %s", e.Kind, sc.name(e.Op))
	}
	if e.Err != nil {
		s += " (" + e.Err.Error() + ")"
	}
	return s
}

func (sc *script) task(name string) (*Task, error) {
	opName, idx, ok := strings.Cut(name, ".")
	op := sc.ops[opName]
	if !ok || op == nil {
		return nil, fmt.Errorf("no task %q", name)
	}
	i, err := strconv.Atoi(idx)
	if err != nil || i < 0 || i >= len(op.Tasks) {
		return nil, fmt.Errorf("no task %q", name)
	}
	return op.Tasks[i], nil
}

func (sc *script) spec(name string, flags []string, kv map[string]string) (OpSpec, error) {
	spec := OpSpec{Name: name, DType: proto.Uint8, Push: true}
	size := 8
	if v, ok := kv["bytes"]; ok {
		n, err := strconv.Atoi(v)
		if err != nil {
			return spec, err
		}
		size = n
	}
	for _, p := range strings.Split(kv["parts"], ",") {
		ks, loc, ok := strings.Cut(p, "@")
		if !ok {
			return spec, fmt.Errorf("part %q: want KEY@SERVER[/LANE]", p)
		}
		srv, lane, _ := strings.Cut(loc, "/")
		k, err1 := strconv.ParseUint(ks, 10, 64)
		s, err2 := strconv.Atoi(srv)
		l := 0
		var err3 error
		if lane != "" {
			l, err3 = strconv.Atoi(lane)
		}
		if err := errors.Join(err1, err2, err3); err != nil {
			return spec, fmt.Errorf("part %q: %v", p, err)
		}
		spec.Parts = append(spec.Parts, Part{Key: proto.Key(k), Off: len(spec.Parts) * size, Len: size, Server: s, Lane: l})
	}
	spec.Buf = make([]byte, len(spec.Parts)*size)
	for _, f := range flags {
		switch f {
		case "pull":
			spec.Push = false
		case "avg":
			spec.Average = true
		case "localonly":
			spec.LocalOnly = true
		case "stagein":
			spec.StageIn = true
		case "stageout":
			spec.StageOut = true
		default:
			return spec, fmt.Errorf("unknown flag %q", f)
		}
	}
	if v, ok := kv["local"]; ok {
		for _, o := range strings.Split(v, ",") {
			spec.Local = append(spec.Local, o == "1")
		}
	}
	if v, ok := kv["round"]; ok {
		r, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			return spec, err
		}
		spec.Round = r
	}
	if v, ok := kv["prio"]; ok {
		p, err := strconv.Atoi(v)
		if err != nil {
			return spec, err
		}
		spec.Priority = p
	}
	return spec, nil
}
