package scheduler

import (
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/gobps/gobps/internal/scenario"
	"github.com/gobps/gobps/proto"
)

// TestScenarios runs the scripts in testdata/*.txt. A script is a sequence
// of commands, one per line; '#' starts a comment, blank lines are ignored:
//
//	credit N                         start over with New(N)
//	push key=K prio=P bytes=B [id=S] Push; K is the raw uint64, id becomes Value
//	next -> key=K prio=P bytes=B [id=S]
//	next -> none                     Next, and what it must return
//	done B                           Done(B)
//	state -> queued=N inflight=B     Len() and InFlight()
//
// Any command may instead end in "-> panic" to say that it must panic. A
// mismatch fails the script with its file:line (internal/scenario runs the
// scripts).
func TestScenarios(t *testing.T) {
	scenario.Files(t, filepath.Join("testdata", "*.txt"), func(*testing.T) scenario.Step {
		var q *Queue[string]
		return func(args []string) (string, error) { return step(&q, args) }
	})
}

// step runs one command against *q and returns its result as the script
// writes it: "" for commands that have none, "panic" if the command
// panicked. The error is for malformed scripts.
func step(q **Queue[string], args []string) (got string, err error) {
	cmd, args := args[0], args[1:]
	if cmd != "credit" && *q == nil {
		return "", fmt.Errorf("no queue yet: start the script with credit N")
	}
	var run func() string
	switch cmd {
	case "credit":
		n, err := oneInt(args)
		if err != nil {
			return "", err
		}
		run = func() string { *q = New[string](n); return "" }
	case "push":
		it, err := parseItem(args)
		if err != nil {
			return "", err
		}
		run = func() string { (*q).Push(it); return "" }
	case "next":
		if len(args) != 0 {
			return "", fmt.Errorf("takes no arguments")
		}
		run = func() string {
			it, ok := (*q).Next()
			if !ok {
				return "none"
			}
			return formatItem(it)
		}
	case "done":
		n, err := oneInt(args)
		if err != nil {
			return "", err
		}
		run = func() string { (*q).Done(n); return "" }
	case "state":
		if len(args) != 0 {
			return "", fmt.Errorf("takes no arguments")
		}
		run = func() string { return fmt.Sprintf("queued=%d inflight=%d", (*q).Len(), (*q).InFlight()) }
	default:
		return "", fmt.Errorf("unknown command")
	}
	defer func() {
		if recover() != nil {
			got = "panic"
		}
	}()
	return run(), nil
}

func oneInt(args []string) (int, error) {
	if len(args) != 1 {
		return 0, fmt.Errorf("want one integer argument, got %q", args)
	}
	return strconv.Atoi(args[0])
}

func parseItem(args []string) (Item[string], error) {
	var it Item[string]
	seen := map[string]bool{}
	for _, a := range args {
		k, v, ok := strings.Cut(a, "=")
		if !ok || seen[k] {
			return it, fmt.Errorf("bad or repeated argument %q", a)
		}
		seen[k] = true
		var err error
		switch k {
		case "key":
			var u uint64
			u, err = strconv.ParseUint(v, 10, 64)
			it.Key = proto.Key(u)
		case "prio":
			it.Priority, err = strconv.Atoi(v)
		case "bytes":
			it.Bytes, err = strconv.Atoi(v)
		case "id":
			it.Value = v
		default:
			err = fmt.Errorf("unknown argument %q", k)
		}
		if err != nil {
			return it, err
		}
	}
	for _, k := range []string{"key", "prio", "bytes"} {
		if !seen[k] {
			return it, fmt.Errorf("missing %s=", k)
		}
	}
	return it, nil
}

func formatItem(it Item[string]) string {
	s := fmt.Sprintf("key=%d prio=%d bytes=%d", it.Key, it.Priority, it.Bytes)
	if it.Value != "" {
		s += " id=" + it.Value
	}
	return s
}
