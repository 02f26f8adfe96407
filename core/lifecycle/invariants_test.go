package lifecycle

import (
	"errors"
	"fmt"

	"github.com/gobps/gobps/proto"
)

// checker watches a Machine from the outside, as the engine sees it (the
// effects it returns, the calls made to it), and records the first broken
// invariant:
//
//   - an op completes at most once, and only when all its tasks have
//     finished and nothing runs on its buffer;
//   - a task finishes at most once;
//   - no effect that touches a buffer (Send, LocalIn, ..., StageOut) is
//     issued for a finished task, or for an op that has completed;
//   - Sending says skip for a finished task, and AnswerDest refuses it;
//   - the credit in flight is the sum of the parts that hold it, and a
//     finished task holds none.
type checker struct {
	m         *Machine
	completed map[*Op]bool
	finished  map[*Task]bool
	running   map[*Task]map[string]bool // effects and I/O in progress on the task's buffers
	staging   map[*Op]string            // "in" or "out" while a stage effect runs
	inShm     map[proto.Key]*Task       // the local round of a key that has gone into shared memory and not finished
	lastShm   map[proto.Key]uint64      // the last round of a key that went into shared memory
	broken    error
}

func newChecker(m *Machine) *checker {
	return &checker{m: m, completed: map[*Op]bool{}, finished: map[*Task]bool{},
		running: map[*Task]map[string]bool{}, staging: map[*Op]string{},
		inShm: map[proto.Key]*Task{}, lastShm: map[proto.Key]uint64{}}
}

func (c *checker) fail(format string, args ...any) {
	if c.broken == nil {
		c.broken = fmt.Errorf(format, args...)
	}
}

func (c *checker) err() error {
	if c.broken != nil {
		return c.broken
	}
	// The credit: what is in flight is what the unfinished tasks hold.
	held := 0
	for _, ts := range c.m.live {
		for t := range ts {
			if t.credited {
				held += t.Part.Len
			}
		}
	}
	for _, t := range c.m.reqs {
		if t.finished {
			return fmt.Errorf("finished %s still in the request table", t)
		}
	}
	if held != c.m.InFlight() {
		return fmt.Errorf("credit in flight %d, but unfinished tasks hold %d", c.m.InFlight(), held)
	}
	return nil
}

func (c *checker) started(op *Op) {}

func (c *checker) run(t *Task, what string) {
	if c.running[t] == nil {
		c.running[t] = map[string]bool{}
	}
	if c.running[t][what] {
		c.fail("%s issued twice for %s", what, t)
	}
	c.running[t][what] = true
}

func (c *checker) stop(t *Task, what string) {
	if !c.running[t][what] {
		c.fail("%s ended for %s, which was not running it", what, t)
	}
	delete(c.running[t], what)
}

// touches reports whether an effect of kind k reads or writes a buffer.
func touches(k Kind) bool {
	switch k {
	case Send, StageIn, LocalIn, LocalReduce, LocalResult, Divide, LocalPublish, LocalOut, StageOut:
		return true
	}
	return false
}

func (c *checker) effect(e Effect) {
	op := e.Op
	if e.Task != nil {
		op = e.Task.Op
	}
	if touches(e.Kind) {
		if c.completed[op] {
			c.fail("%s issued for %q after its handle completed", e.Kind, op.Spec.Name)
		}
		if e.Task != nil && c.finished[e.Task] {
			c.fail("%s issued for %s after it finished", e.Kind, e.Task)
		}
	}
	switch e.Kind {
	case Send:
		// The send itself runs between Sending and Sent.
	case LocalIn, LocalReduce, LocalResult, Divide, LocalPublish, LocalOut:
		c.run(e.Task, "effect")
		if e.Kind == LocalIn {
			// Rounds of one key go through shared memory one at a time,
			// in order.
			k := e.Task.Part.Key
			if prev := c.inShm[k]; prev != nil {
				c.fail("%s went into shared memory while %s is still there", e.Task, prev)
			}
			if last, ok := c.lastShm[k]; ok && e.Task.Round <= last {
				c.fail("%s went into shared memory after round %d", e.Task, last)
			}
			c.inShm[k], c.lastShm[k] = e.Task, e.Task.Round
		}
	case StageIn:
		c.staging[op] = "in"
	case StageOut:
		for _, t := range op.Tasks {
			if !c.finished[t] {
				c.fail("stage-out of %q while %s is unfinished", op.Spec.Name, t)
			}
		}
		c.staging[op] = "out"
	case Finished:
		if c.finished[e.Task] {
			c.fail("%s finished twice", e.Task)
		}
		if len(c.running[e.Task]) > 0 {
			c.fail("%s finished while %v still runs on its buffer", e.Task, c.running[e.Task])
		}
		c.finished[e.Task] = true
		if c.inShm[e.Task.Part.Key] == e.Task {
			delete(c.inShm, e.Task.Part.Key)
		}
	case Complete:
		if c.completed[op] {
			c.fail("%q completed twice", op.Spec.Name)
		}
		c.completed[op] = true
		for _, t := range op.Tasks {
			if !c.finished[t] {
				c.fail("%q completed while %s is unfinished", op.Spec.Name, t)
			}
			if len(c.running[t]) > 0 {
				c.fail("%q completed while %v runs on %s", op.Spec.Name, c.running[t], t)
			}
		}
		if s := c.staging[op]; s != "" {
			c.fail("%q completed while staging %s runs", op.Spec.Name, s)
		}
		if !errors.Is(e.Err, op.err) && e.Err != op.err {
			c.fail("%q completed with %v, its error is %v", op.Spec.Name, e.Err, op.err)
		}
	}
}

func (c *checker) sending(t *Task, ok bool) {
	if ok {
		if c.finished[t] || c.completed[t.Op] {
			c.fail("Sending said ok for finished %s", t)
		}
		c.run(t, "send")
	}
}

func (c *checker) sent(t *Task) { c.stop(t, "send") }

func (c *checker) dest(t *Task, dst []byte) {
	if c.finished[t] || c.completed[t.Op] {
		c.fail("AnswerDest placed an answer for finished %s", t)
	}
	c.run(t, "receive")
}

func (c *checker) refusedDest(t *Task) {}

func (c *checker) in(t *Task) { c.stop(t, "receive") }

func (c *checker) ended(t *Task) { c.stop(t, "effect") }

func (c *checker) laneClosed(s, lane int) {
	for t, r := range c.running {
		if r["receive"] && t.Part.Server == s && t.Part.Lane == lane {
			delete(r, "receive")
		}
	}
}

func (c *checker) stagedIn(op *Op) {
	if c.staging[op] != "in" {
		c.fail("StagedIn for %q, which was not staging in", op.Spec.Name)
	}
	delete(c.staging, op)
}

func (c *checker) stagedOut(op *Op) {
	if c.staging[op] != "out" {
		c.fail("StagedOut for %q, which was not staging out", op.Spec.Name)
	}
	delete(c.staging, op)
}
