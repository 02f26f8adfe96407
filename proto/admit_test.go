package proto

import (
	"errors"
	"strings"
	"testing"
)

// TestAdmit checks every row of Admit's table, on both sides, with the
// hello seen and not seen where the row depends on it.
func TestAdmit(t *testing.T) {
	const (
		take    = "take"
		refused = "refused"
		bad     = "bad"
	)
	type row struct {
		desc  string
		side  Side
		hello bool
		h     Header
		want  string // take, refused or bad
		says  string // in the error
	}
	var rows []row
	add := func(r row) { rows = append(rows, r) }
	push := func(n uint32) Header { return Header{Op: OpPush, DType: Uint8, Length: n} }
	resp := func(n uint32) Header { return Header{Op: OpPullResp, DType: Uint8, Length: n} }

	// Server side.
	for _, hello := range []bool{false, true} {
		add(row{"hello with a payload", ServerSide, hello, Header{Op: OpHello, Length: 3}, bad, "hello with a 3-byte payload"})
	}
	add(row{"first hello", ServerSide, false, Header{Op: OpHello, Sender: 7}, take, ""})
	add(row{"second hello", ServerSide, true, Header{Op: OpHello}, refused, "second hello"})
	for _, h := range []Header{
		{Op: OpDeclare, Length: DeclSize}, {Op: OpDeclare}, push(8), push(0), {Op: OpPull}, {Op: OpPull, Length: 4},
		{Op: OpError, Length: 4}, {Op: OpError}, {Op: OpDeclareAck}, resp(8), {Op: OpRegister}, {Op: OpHeartbeat},
	} {
		add(row{h.Op.String() + " before hello", ServerSide, false, h, refused, h.Op.String() + " before hello"})
	}
	add(row{"declare", ServerSide, true, Header{Op: OpDeclare, Length: DeclSize}, take, ""})
	add(row{"declare at the control limit", ServerSide, true, Header{Op: OpDeclare, Length: MaxControlPayload}, take, ""})
	add(row{"declare without a payload", ServerSide, true, Header{Op: OpDeclare}, refused, "declare without a payload"})
	add(row{"declare over the control limit", ServerSide, true, Header{Op: OpDeclare, Length: MaxControlPayload + 1}, bad, "exceeds"})
	add(row{"push", ServerSide, true, push(8), take, ""})
	add(row{"push without a payload", ServerSide, true, push(0), refused, "push without a payload"})
	add(row{"pull", ServerSide, true, Header{Op: OpPull}, take, ""})
	add(row{"pull with a payload", ServerSide, true, Header{Op: OpPull, Length: 4}, refused, "pull with a 4-byte payload"})
	add(row{"error", ServerSide, true, Header{Op: OpError, Length: 4}, take, ""})
	add(row{"error without a payload", ServerSide, true, Header{Op: OpError}, take, ""})
	add(row{"join", ServerSide, true, Header{Op: OpJoin, Round: 1}, take, ""})
	add(row{"end of join", ServerSide, true, Header{Op: OpJoin}, take, ""})
	add(row{"join with round 2", ServerSide, true, Header{Op: OpJoin, Round: 2}, refused, "join with round 2"})
	add(row{"join with a payload", ServerSide, true, Header{Op: OpJoin, Round: 1, Length: 1}, refused, "join with a 1-byte payload"})
	add(row{"join before hello", ServerSide, false, Header{Op: OpJoin, Round: 1}, refused, "join before hello"})
	for _, h := range []Header{
		{Op: OpDeclareAck}, resp(8), resp(0), {Op: OpRegister}, {Op: OpBook, Length: 2}, {Op: OpBarrier},
		{Op: OpBarrierOK}, {Op: OpHeartbeat}, {Op: OpNodeDead}, {Op: OpLeave}, {Op: OpShutdown},
		{Op: OpJoinAck}, {Op: OpBehind}, {Op: OpNodeLeft}, {Op: OpReport}, {Op: OpProgress},
	} {
		add(row{"server gets " + h.Op.String(), ServerSide, true, h, refused, "unexpected " + h.Op.String()})
	}

	// Worker side: the hello plays no part.
	for _, hello := range []bool{false, true} {
		add(row{"pull-resp", WorkerSide, hello, resp(8), take, ""})
		add(row{"pull-resp without a payload", WorkerSide, hello, resp(0), refused, "pull-resp without a payload"})
		add(row{"declare-ack", WorkerSide, hello, Header{Op: OpDeclareAck}, take, ""})
		add(row{"declare-ack with a payload", WorkerSide, hello, Header{Op: OpDeclareAck, Length: 2}, refused, "declare-ack with a 2-byte payload"})
		add(row{"join-ack", WorkerSide, hello, Header{Op: OpJoinAck}, take, ""})
		add(row{"behind", WorkerSide, hello, Header{Op: OpBehind, Key: 5, Round: 9}, take, ""})
		add(row{"behind with a payload", WorkerSide, hello, Header{Op: OpBehind, Length: 1}, refused, "behind with a 1-byte payload"})
		add(row{"error", WorkerSide, hello, Header{Op: OpError, Length: 4}, take, ""})
		add(row{"error without a payload", WorkerSide, hello, Header{Op: OpError}, take, ""})
		for _, h := range []Header{
			{Op: OpHello}, {Op: OpDeclare, Length: DeclSize}, push(8), {Op: OpPull}, {Op: OpRegister}, {Op: OpBook},
			{Op: OpBarrier}, {Op: OpBarrierOK}, {Op: OpHeartbeat}, {Op: OpNodeDead}, {Op: OpLeave}, {Op: OpShutdown},
			{Op: OpJoin, Round: 1}, {Op: OpNodeLeft}, {Op: OpReport}, {Op: OpProgress},
		} {
			add(row{"worker gets " + h.Op.String(), WorkerSide, hello, h, refused, "unexpected " + h.Op.String()})
		}
	}

	for _, r := range rows {
		t.Run(r.side.String()+"/"+r.desc, func(t *testing.T) {
			if err := r.h.Check(); err != nil && r.want != bad {
				t.Fatalf("test header does not pass Check: %v", err)
			}
			err := Admit(r.side, r.hello, &r.h)
			got := take
			switch {
			case errors.Is(err, ErrBadFrame):
				got = bad
			case errors.Is(err, ErrRefused):
				got = refused
			case err != nil:
				t.Fatalf("error wraps neither ErrRefused nor ErrBadFrame: %v", err)
			}
			if got != r.want || (err != nil && !strings.Contains(err.Error(), r.says)) {
				t.Fatalf("Admit(%s, hello %v, %v) = %v (%s), want %s saying %q", r.side, r.hello, &r.h, err, got, r.want, r.says)
			}
		})
	}
}

// TestAdmitRefusalText: a refusal's text is the reason alone, which the
// server sends back to the worker as it is.
func TestAdmitRefusalText(t *testing.T) {
	err := Admit(ServerSide, false, &Header{Op: OpPush, DType: Int32, Length: 8})
	if err == nil || err.Error() != "push before hello" {
		t.Fatalf("got %v", err)
	}
}

func TestDeclareIsAControlFrame(t *testing.T) {
	var b [HeaderSize]byte
	(&Header{Op: OpDeclare, Length: MaxControlPayload + DeclSize}).Encode(b[:])
	var h Header
	if err := h.Decode(b[:]); !errors.Is(err, ErrBadFrame) || !strings.Contains(err.Error(), "exceeds") {
		t.Fatalf("a declaration over MaxControlPayload decoded with %v", err)
	}
}
