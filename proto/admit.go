package proto

import (
	"errors"
	"fmt"
)

// Side says which end of a data connection (worker to server) reads a
// frame.
type Side uint8

const (
	// ServerSide is a connection accepted by a listener: it reads a
	// worker's frames.
	ServerSide Side = iota + 1
	// WorkerSide is a dialed connection: it reads a server's frames.
	WorkerSide
)

func (s Side) String() string {
	switch s {
	case ServerSide:
		return "server side"
	case WorkerSide:
		return "worker side"
	}
	return fmt.Sprintf("side(%d)", uint8(s))
}

// ErrRefused is wrapped by Admit's refusals: frames the reading side does
// not take, but that leave the connection usable.
var ErrRefused = errors.New("frame refused")

// refusal is an error wrapping ErrRefused whose text is the reason alone
// ("push before hello"), as the server passes it on to the sender.
type refusal string

func (r refusal) Error() string { return string(r) }
func (r refusal) Unwrap() error { return ErrRefused }

func refuse(format string, args ...any) error { return refusal(fmt.Sprintf(format, args...)) }

// Admit says whether the reading side of a data connection takes a frame
// whose header is h, given whether the connection's hello has been seen.
// h must have passed Check (Decode checks it). Admit is pure: the
// transports call it on every decoded header before they read any of the
// payload or ask for a destination.
//
// It returns nil (take the frame), an error wrapping ErrRefused (discard
// the payload unread and hand the header to the handler with the error;
// the connection stays, and a server answers the sender with OpError), or
// an error wrapping ErrBadFrame (close the connection with that reason).
//
// The rules, by side (hello: whether the connection's hello was seen
// before this frame; n: the payload length):
//
//	side    op           hello  n                     result
//	server  hello        any    > 0                   bad frame
//	server  hello        yes    0                     refused: second hello
//	server  hello        no     0                     take (the hello is now seen)
//	server  other ops    no     any                   refused: "<op> before hello"
//	server  declare      yes    0                     refused: declare without a payload
//	server  declare      yes    1..MaxControlPayload  take
//	server  declare      yes    > MaxControlPayload   bad frame (Check says so too)
//	server  push         yes    0                     refused: push without a payload
//	server  push         yes    > 0                   take
//	server  pull         yes    0                     take
//	server  pull         yes    > 0                   refused: pull with a payload
//	server  error        yes    any                   take
//	server  join         yes    0, Round 0 or 1       take
//	server  join         yes    other                 refused
//	server  other ops    yes    any                   refused: "unexpected <op>"
//	worker  pull-resp    -      0                     refused: pull-resp without a payload
//	worker  pull-resp    -      > 0                   take
//	worker  declare-ack  -      0                     take
//	worker  declare-ack  -      > 0                   refused: declare-ack with a payload
//	worker  join-ack     -      0                     take
//	worker  join-ack     -      > 0                   refused
//	worker  behind       -      0                     take
//	worker  behind       -      > 0                   refused
//	worker  error        -      any                   take
//	worker  other ops    -      any                   refused: "unexpected <op>"
//
// A side other than ServerSide and WorkerSide is a programming error and
// panics.
func Admit(side Side, hello bool, h *Header) error {
	switch side {
	case ServerSide:
		return admitServer(hello, h)
	case WorkerSide:
		return admitWorker(h)
	}
	panic(fmt.Sprintf("proto: Admit on %s", side))
}

func admitServer(hello bool, h *Header) error {
	if h.Op == OpHello {
		switch {
		case h.Length > 0:
			return badFrame("hello with a %d-byte payload", h.Length)
		case hello:
			return refuse("second hello")
		}
		return nil
	}
	if !hello {
		return refuse("%s before hello", h.Op)
	}
	switch h.Op {
	case OpDeclare:
		switch {
		case h.Length == 0:
			return refuse("declare without a payload")
		case h.Length > MaxControlPayload:
			return badFrame("declare payload length %d exceeds %d", h.Length, MaxControlPayload)
		}
		return nil
	case OpPush:
		if h.Length == 0 {
			return refuse("push without a payload")
		}
		return nil
	case OpPull:
		if h.Length > 0 {
			return refuse("pull with a %d-byte payload", h.Length)
		}
		return nil
	case OpError:
		return nil
	case OpJoin:
		switch {
		case h.Length > 0:
			return refuse("join with a %d-byte payload", h.Length)
		case h.Round > 1:
			return refuse("join with round %d: 1 joins, 0 ends the join", h.Round)
		}
		return nil
	}
	return refuse("unexpected %s", h.Op)
}

func admitWorker(h *Header) error {
	switch h.Op {
	case OpPullResp:
		if h.Length == 0 {
			return refuse("pull-resp without a payload")
		}
		return nil
	case OpDeclareAck, OpJoinAck, OpBehind:
		if h.Length > 0 {
			return refuse("%s with a %d-byte payload", h.Op, h.Length)
		}
		return nil
	case OpError:
		return nil
	}
	return refuse("unexpected %s", h.Op)
}
