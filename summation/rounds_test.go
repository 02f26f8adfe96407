package summation

import (
	"encoding/binary"
	"strings"
	"testing"

	"github.com/gobps/gobps/proto"
)

func i32s(vs ...int32) []byte {
	b := make([]byte, 4*len(vs))
	for i, v := range vs {
		binary.LittleEndian.PutUint32(b[4*i:], uint32(v))
	}
	return b
}

func answerOf(t *testing.T, res Result, reqID uint64) Answer {
	t.Helper()
	for _, a := range res.Answers {
		if a.Pull.ReqID == reqID {
			return a
		}
	}
	t.Fatalf("no answer for request %d in %+v", reqID, res.Answers)
	return Answer{}
}

func TestRoundsSumAndDoubleBuffer(t *testing.T) {
	d := proto.Decl{Key: 1, DType: proto.Int32, Root: proto.NoRoot, Bytes: 8}
	r := NewRounds(d, 2)
	must := func(res Result, err error) Result {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return res
	}
	w0 := i32s(1, 2)
	res := must(r.Push(0, 0, w0))
	if len(res.Free) != 1 || &res.Free[0][0] == &w0[0] {
		t.Fatal("first push was not swapped in (the old sum buffer should come back)")
	}
	if res := must(r.Pull(Pull{Worker: 0, ReqID: 10}, 0)); len(res.Answers) != 0 {
		t.Fatal("pull answered before the round completed")
	}
	res = must(r.Push(1, 0, i32s(3, 4)))
	a := answerOf(t, res, 10)
	if string(a.Buf) != string(i32s(4, 6)) || &a.Buf[0] != &w0[0] {
		t.Fatalf("round 0 sum %v (zero-copy answer from the swapped-in buffer expected)", a.Buf)
	}
	// Worker 0 is fast: it pushes round 1 before worker 1 pulls round 0.
	must(r.Push(0, 1, i32s(10, 10)))
	r.Served(0) // worker 0's answer
	// Round 2 push from worker 0 is held: round 0 not fully served.
	must(r.Pull(Pull{Worker: 0, ReqID: 11}, 1))
	res = must(r.Pull(Pull{Worker: 1, ReqID: 12}, 0))
	a = answerOf(t, res, 12)
	if string(a.Buf) != string(i32s(4, 6)) {
		t.Fatal("round 0 sum changed by round 1's push: not double-buffered")
	}
	res = must(r.Push(1, 1, i32s(5, 5)))
	if a := answerOf(t, res, 11); string(a.Buf) != string(i32s(15, 15)) {
		t.Fatalf("round 1 sum %v", a.Buf)
	}
	r.Served(1)
	if r.Base() != 0 {
		t.Fatal("window moved before round 0 was fully served")
	}
	if _, err := r.Push(0, 2, i32s(1, 1)); err != nil {
		t.Fatalf("push for base+2 should be held, got %v", err)
	}
	r.Served(0)
	if r.Base() != 1 {
		t.Fatalf("base %d after round 0 served", r.Base())
	}
	// the held push of round 2 was replayed into the window
	must(r.Push(1, 2, i32s(2, 2)))
	must(r.Pull(Pull{Worker: 1, ReqID: 13}, 1))
	r.Served(1)
	if r.Base() != 2 {
		t.Fatalf("base %d after round 1 served", r.Base())
	}
	res = must(r.Pull(Pull{Worker: 1, ReqID: 14}, 2))
	if a := answerOf(t, res, 14); string(a.Buf) != string(i32s(3, 3)) {
		t.Fatalf("round 2 sum %v", a.Buf)
	}
}

func TestRoundsRefusals(t *testing.T) {
	d := proto.Decl{Key: 1, DType: proto.Int32, Root: proto.NoRoot, Bytes: 8}
	cases := []struct {
		desc string
		run  func(r *Rounds) error
		want string
	}{
		{"wrong size", func(r *Rounds) error { _, err := r.Push(0, 0, i32s(1)); return err }, "push of 4 bytes, declared 8"},
		{"worker out of range", func(r *Rounds) error { _, err := r.Push(2, 0, i32s(1, 1)); return err }, "outside 0..1"},
		{"duplicate push", func(r *Rounds) error {
			r.Push(0, 0, i32s(1, 1))
			_, err := r.Push(0, 0, i32s(1, 1))
			return err
		}, "twice"},
		{"too far ahead", func(r *Rounds) error { _, err := r.Push(0, 3, i32s(1, 1)); return err }, "more than one round ahead"},
		{"pull without push", func(r *Rounds) error { _, err := r.Pull(Pull{Worker: 1}, 0); return err }, "without an accepted push"},
		{"duplicate pull", func(r *Rounds) error {
			r.Push(0, 0, i32s(1, 1))
			r.Pull(Pull{Worker: 0}, 0)
			_, err := r.Pull(Pull{Worker: 0}, 0)
			return err
		}, "pulled round 0 twice"},
	}
	for _, c := range cases {
		t.Run(c.desc, func(t *testing.T) {
			r := NewRounds(d, 2)
			err := c.run(r)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err = %v, want %q", err, c.want)
			}
		})
	}
}

func TestRoundsBroadcast(t *testing.T) {
	d := proto.Decl{Key: 1, DType: proto.Int32, Root: 1, Bytes: 8}
	r := NewRounds(d, 3)
	if _, err := r.Push(0, 0, i32s(1, 1)); err == nil {
		t.Fatal("non-root push to a broadcast key accepted")
	}
	r.Pull(Pull{Worker: 0, ReqID: 1}, 0)
	res, err := r.Push(1, 0, i32s(7, 8))
	if err != nil {
		t.Fatal(err)
	}
	if a := answerOf(t, res, 1); string(a.Buf) != string(i32s(7, 8)) {
		t.Fatalf("broadcast %v", a.Buf)
	}
}

// TestRoundsChunks interleaves the chunks of three workers' pushes of a key
// several chunks long, in random orders of arrival across workers (each
// worker's own chunks in order), with a whole push mixed in, and holds a
// chunked push for round base+2 that is only half in when the window moves.
// Every sum must equal the element-wise sum computed directly.
func TestRoundsChunks(t *testing.T) {
	const n = (3*proto.PieceBytes + 1000) / 4 // 3 full chunks and a short one
	d := proto.Decl{Key: 1, DType: proto.Int32, Root: proto.NoRoot, Bytes: 4 * n}
	data := func(w, round int) []byte {
		vs := make([]int32, n)
		for i := range vs {
			vs[i] = int32((i%1000)*(w+1) + round)
		}
		return i32s(vs...)
	}
	want := func(workers []int, round int) []byte {
		vs := make([]int32, n)
		for i := range vs {
			for _, w := range workers {
				vs[i] += int32((i%1000)*(w+1) + round)
			}
		}
		return i32s(vs...)
	}
	chunksOf := func(b []byte) [][]byte {
		var out [][]byte
		for off := 0; off < len(b); off += proto.PieceBytes {
			out = append(out, b[off:min(off+proto.PieceBytes, len(b))])
		}
		return out
	}
	r := NewRounds(d, 3)
	rng := []int{0, 1, 0, 0, 1, 1, 0, 1} // arrival order of workers 0 and 1
	// round 0: workers 0 and 1 chunked, interleaved; worker 2 whole
	for _, w := range []int{0, 1} {
		if _, err := r.Begin(w, 0); err != nil {
			t.Fatal(err)
		}
	}
	cs := [][][]byte{chunksOf(data(0, 0)), chunksOf(data(1, 0))}
	next := []int{0, 0}
	for _, w := range rng {
		i := next[w]
		next[w]++
		if res := r.Chunk(w, 0, i*proto.PieceBytes, cs[w][i]); len(res.Answers) != 0 {
			t.Fatal("answer before the round completed")
		}
	}
	if _, err := r.Push(2, 0, data(2, 0)); err != nil {
		t.Fatal(err)
	}
	var got []byte
	for w := 0; w < 3; w++ {
		res, err := r.Pull(Pull{Worker: w, ReqID: uint64(w)}, 0)
		if err != nil {
			t.Fatal(err)
		}
		got = answerOf(t, res, uint64(w)).Buf
	}
	if string(got) != string(want([]int{0, 1, 2}, 0)) {
		t.Fatal("round 0: chunked sum differs")
	}
	// round 1: everyone pushes whole; then worker 0 begins round 2 (held:
	// round 0 is not served yet) and sends half of it.
	for w := 0; w < 3; w++ {
		if _, err := r.Push(w, 1, data(w, 1)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := r.Begin(0, 2); err != nil {
		t.Fatalf("begin of round base+2: %v", err)
	}
	c2 := chunksOf(data(0, 2))
	r.Chunk(0, 2, 0, c2[0])
	r.Chunk(0, 2, proto.PieceBytes, c2[1])
	for w := 0; w < 3; w++ {
		r.Served(0)
	}
	if r.Base() != 1 {
		t.Fatalf("base %d", r.Base())
	}
	// the held half was replayed; the rest arrives in the window
	r.Chunk(0, 2, 2*proto.PieceBytes, c2[2])
	r.Chunk(0, 2, 3*proto.PieceBytes, c2[3])
	for w := 1; w < 3; w++ {
		if _, err := r.Push(w, 2, data(w, 2)); err != nil {
			t.Fatal(err)
		}
	}
	res, err := r.Pull(Pull{Worker: 0, ReqID: 9}, 2)
	if err != nil {
		t.Fatal(err)
	}
	if a := answerOf(t, res, 9); string(a.Buf) != string(want([]int{0, 1, 2}, 2)) {
		t.Fatal("round 2: sum with a held, half-replayed chunked push differs")
	}
	if _, err := r.Begin(0, 2); err == nil {
		t.Fatal("second begin of the same round accepted")
	}
}

// Under local aggregation only one rank per machine pushes a sum key: 4
// worker ranks on 2 machines, and a different local rank owns the key on
// each machine.
func TestRoundsOnePusherPerMachine(t *testing.T) {
	d := proto.Decl{Key: 7, DType: proto.Int32, Root: proto.NoRoot, Bytes: 4}
	r := NewRoundsOf(d, 4, 2)
	for round := uint64(0); round < 3; round++ {
		if _, err := r.Push(1, round, i32s(int32(round)+1)); err != nil {
			t.Fatal(err)
		}
		if res, err := r.Pull(Pull{Worker: 1, ReqID: 1}, round); err != nil || len(res.Answers) != 0 {
			t.Fatalf("round %d: pull answered after one of two pushes (%v)", round, err)
		}
		if _, err := r.Push(2, round, i32s(10)); err != nil {
			t.Fatal(err)
		}
		res, err := r.Pull(Pull{Worker: 2, ReqID: 2}, round)
		if err != nil {
			t.Fatal(err)
		}
		if a := answerOf(t, res, 2); string(a.Buf) != string(i32s(int32(round)+11)) {
			t.Fatalf("round %d: sum %v", round, a.Buf)
		}
		if _, err := r.Pull(Pull{Worker: 0, ReqID: 3}, round); err == nil {
			t.Fatal("a rank that did not push pulled a sum key")
		}
		r.Served(round)
		if r.Base() != round {
			t.Fatalf("round %d retired after one of two answers", round)
		}
		r.Served(round)
		if r.Base() != round+1 {
			t.Fatalf("round %d not retired after both machines' answers (base %d)", round, r.Base())
		}
	}
}

// TestRoundsStreamsPieces: a pull waiting for its round gets each chunk of
// the sum as soon as that chunk's last contribution is in, one piece per
// chunk, the last piece marked; a pull arriving midway gets the chunks
// already summed at once; a round complete at pull time goes whole.
func TestRoundsStreamsPieces(t *testing.T) {
	n := 3*proto.PieceBytes + 8 // 4 chunks, the last one 8 bytes
	d := proto.Decl{Key: 9, DType: proto.Int32, Root: proto.NoRoot, Bytes: uint64(n)}
	r := NewRounds(d, 2)
	data := func(w int) []byte {
		vs := make([]int32, n/4)
		for i := range vs {
			vs[i] = int32(i*(w+1) + 1)
		}
		return i32s(vs...)
	}
	d0, d1 := data(0), data(1)
	sum := make([]int32, n/4)
	for i := range sum {
		sum[i] = int32(i*3 + 2)
	}
	want := i32s(sum...)
	chunk := func(b []byte, c int) []byte { return b[c*proto.PieceBytes : min((c+1)*proto.PieceBytes, n)] }
	// Worker 0 pushes everything; nothing is summed for good yet.
	if _, err := r.Begin(0, 0); err != nil {
		t.Fatal(err)
	}
	for c := 0; c < 4; c++ {
		if res := r.Chunk(0, 0, c*proto.PieceBytes, chunk(d0, c)); len(res.Answers) != 0 {
			t.Fatalf("chunk %d of one push answered %d", c, len(res.Answers))
		}
	}
	res, err := r.Pull(Pull{Worker: 0, ReqID: 1}, 0)
	if err != nil || len(res.Answers) != 0 {
		t.Fatalf("pull before any chunk was complete: %v, %d answers", err, len(res.Answers))
	}
	// Worker 1's chunks complete the sum chunk by chunk.
	if _, err := r.Begin(1, 0); err != nil {
		t.Fatal(err)
	}
	check := func(as []Answer, req uint64, c int, last bool) {
		t.Helper()
		for _, a := range as {
			if a.Pull.ReqID == req && a.Piece == c {
				if a.Last != last || string(a.Buf) != string(chunk(want, c)) {
					t.Fatalf("req %d piece %d: last %v, right bytes %v", req, c, a.Last, string(a.Buf) == string(chunk(want, c)))
				}
				return
			}
		}
		t.Fatalf("no piece %d for req %d in %d answers", c, req, len(as))
	}
	res = r.Chunk(1, 0, 0, chunk(d1, 0))
	if len(res.Answers) != 1 {
		t.Fatalf("chunk 0 complete: %d answers, want 1", len(res.Answers))
	}
	check(res.Answers, 1, 0, false)
	// Worker 1's pull arrives now: chunk 0 at once.
	res, err = r.Pull(Pull{Worker: 1, ReqID: 2}, 0)
	if err != nil || len(res.Answers) != 1 {
		t.Fatalf("late pull: %v, %d answers, want chunk 0", err, len(res.Answers))
	}
	check(res.Answers, 2, 0, false)
	res = r.Chunk(1, 0, proto.PieceBytes, chunk(d1, 1))
	check(res.Answers, 1, 1, false)
	check(res.Answers, 2, 1, false)
	res = r.Chunk(1, 0, 2*proto.PieceBytes, chunk(d1, 2))
	check(res.Answers, 1, 2, false)
	check(res.Answers, 2, 2, false)
	res = r.Chunk(1, 0, 3*proto.PieceBytes, chunk(d1, 3))
	check(res.Answers, 1, 3, true)
	check(res.Answers, 2, 3, true)
	if len(res.Answers) != 2 {
		t.Fatalf("last chunk: %d answers", len(res.Answers))
	}
	r.Served(0)
	r.Served(0)
	if r.Base() != 1 {
		t.Fatalf("round 0 not retired after both pulls were served")
	}
	// Round 1: both pushes in before the pulls: whole answers.
	for w, b := range [][]byte{d0, d1} {
		if _, err := r.Push(w, 1, append([]byte(nil), b...)); err != nil {
			t.Fatal(err)
		}
	}
	res, err = r.Pull(Pull{Worker: 0, ReqID: 3}, 1)
	if err != nil || len(res.Answers) != 1 || res.Answers[0].Piece != -1 || !res.Answers[0].Last || string(res.Answers[0].Buf) != string(want) {
		t.Fatalf("pull of a complete round: %v %+v", err, len(res.Answers))
	}
}

// TestRoundsPushCopy: PushCopy sums like Push but never keeps the pushed
// buffer, which the caller reuses at once (a stable destination): the first
// contribution is copied, later ones added, held pushes copied.
func TestRoundsPushCopy(t *testing.T) {
	d := proto.Decl{Key: 1, DType: proto.Int32, Root: proto.NoRoot, Bytes: 8}
	r := NewRounds(d, 2)
	buf := make([]byte, 8)
	push := func(w int, round uint64, vs ...int32) Result {
		t.Helper()
		copy(buf, i32s(vs...))
		res, err := r.PushCopy(w, round, buf)
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range res.Free {
			if &f[0] == &buf[0] {
				t.Fatal("PushCopy handed the pushed buffer back as the key's")
			}
		}
		copy(buf, i32s(-99, -99)) // reused at once
		return res
	}
	push(0, 0, 1, 2)
	push(0, 1, 5, 5)
	res, err := r.Pull(Pull{Worker: 0, ReqID: 1}, 0)
	if err != nil || len(res.Answers) != 0 {
		t.Fatalf("pull before the round completed: %+v, %v", res, err)
	}
	res = push(1, 0, 3, 4)
	a := answerOf(t, res, 1)
	if string(a.Buf) != string(i32s(4, 6)) || &a.Buf[0] == &buf[0] {
		t.Fatalf("round 0 sum %v", a.Buf)
	}
	push(0, 2, 7, 7) // held: round 0 not served yet
	if _, err := r.PushCopy(0, 0, buf); err == nil {
		t.Fatal("second push of round 0 accepted")
	}
	r.Served(0)
	if _, err := r.Pull(Pull{Worker: 1, ReqID: 2}, 0); err != nil {
		t.Fatal(err)
	}
	r.Served(0) // round 0 retires; the held push of round 2 is replayed
	push(1, 1, 1, 1)
	res, err = r.Pull(Pull{Worker: 0, ReqID: 3}, 1)
	if a := answerOf(t, res, 3); err != nil || string(a.Buf) != string(i32s(6, 6)) {
		t.Fatalf("round 1 sum %v, %v", a.Buf, err)
	}
	push(1, 2, 1, 2)
	res, err = r.Pull(Pull{Worker: 1, ReqID: 4}, 2)
	if a := answerOf(t, res, 4); err != nil || string(a.Buf) != string(i32s(8, 9)) {
		t.Fatalf("round 2 sum %v (with the held push), %v", a.Buf, err)
	}
}

// TestRoundsDepart: a worker that leaves before the others. The rounds it
// pushed still complete and retire (its pulls are excused); the ones it
// did not push fail at once, for the pulls waiting and for every later
// push or pull, with the departure's reason.
func TestRoundsDepart(t *testing.T) {
	d := proto.Decl{Key: 1, DType: proto.Int32, Root: proto.NoRoot, Bytes: 8}
	r := NewRounds(d, 3)
	must := func(res Result, err error) Result {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return res
	}
	gone := errEq("worker 2 left the job")
	// Round 0: everyone pushes; worker 2 pulls and is served, then pushes
	// round 1 and leaves without pulling it.
	for w := range 3 {
		must(r.Push(w, 0, i32s(int32(w), 1)))
	}
	for w := range 3 {
		answerOf(t, must(r.Pull(Pull{Worker: w, ReqID: uint64(w)}, 0)), uint64(w))
		r.Served(0)
	}
	must(r.Push(2, 1, i32s(2, 1)))
	must(r.Push(0, 1, i32s(0, 1)))
	must(r.Pull(Pull{Worker: 0, ReqID: 10}, 1))
	res := r.Depart(2, gone)
	if len(res.Failed) != 0 {
		t.Fatalf("round 1 had worker 2's push, yet failed: %+v", res.Failed)
	}
	// Worker 1 completes round 1; both pulls are answered and round 1
	// retires without worker 2's pull.
	res = must(r.Push(1, 1, i32s(1, 1)))
	if a := answerOf(t, res, 10); string(a.Buf) != string(i32s(3, 3)) {
		t.Fatalf("round 1 sum %v", a.Buf)
	}
	r.Served(1)
	answerOf(t, must(r.Pull(Pull{Worker: 1, ReqID: 11}, 1)), 11)
	r.Served(1)
	if r.Base() != 2 {
		t.Fatalf("base %d: round 1 did not retire without the departed worker's pull", r.Base())
	}
	// Round 2 needs worker 2's push: the others' pushes and pulls of it
	// fail at once.
	if _, err := r.Push(0, 2, i32s(0, 1)); err != gone {
		t.Fatalf("push to a round the departed worker never pushed: %v", err)
	}
	if _, err := r.Pull(Pull{Worker: 1, ReqID: 12}, 2); err != gone {
		t.Fatalf("pull of a round the departed worker never pushed: %v", err)
	}

	// A pull already waiting when its round is lost fails then.
	r = NewRounds(d, 2)
	must(r.Push(0, 0, i32s(1, 1)))
	must(r.Pull(Pull{Worker: 0, ReqID: 20}, 0))
	res = r.Depart(1, gone)
	if len(res.Failed) != 1 || res.Failed[0].Pull.ReqID != 20 || res.Failed[0].Err != gone {
		t.Fatalf("waiting pull: %+v", res.Failed)
	}
}

// TestRoundsDepartLocal: under local aggregation a machine's pushes come
// from whichever of its workers owns the key; a round is lost only when
// every worker of a machine has left without it.
func TestRoundsDepartLocal(t *testing.T) {
	d := proto.Decl{Key: 1, DType: proto.Int32, Root: proto.NoRoot, Bytes: 4}
	r := NewRoundsOf(d, 4, 2) // machines {0,1} and {2,3}
	if _, err := r.Push(0, 0, i32s(1)); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Pull(Pull{Worker: 0, ReqID: 1}, 0); err != nil {
		t.Fatal(err)
	}
	if res := r.Depart(3, errEq("worker 3 left")); len(res.Failed) != 0 {
		t.Fatalf("machine 1 still has worker 2, yet: %+v", res.Failed)
	}
	res := r.Depart(2, errEq("worker 2 left"))
	if len(res.Failed) != 1 || !strings.Contains(res.Failed[0].Err.Error(), "left") {
		t.Fatalf("machine 1 gone: %+v", res.Failed)
	}
}

// TestRoundsDepartBroadcast: a broadcast key needs only its root's push;
// another worker's departure excuses its pulls, so later rounds retire.
func TestRoundsDepartBroadcast(t *testing.T) {
	d := proto.Decl{Key: 1, DType: proto.Int32, Root: 0, Bytes: 4}
	r := NewRounds(d, 2)
	r.Depart(1, errEq("worker 1 left"))
	for round := range uint64(4) {
		if _, err := r.Push(0, round, i32s(int32(round))); err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		res, err := r.Pull(Pull{Worker: 0, ReqID: round}, round)
		if err != nil {
			t.Fatal(err)
		}
		answerOf(t, res, round)
		r.Served(round)
	}
	if r.Base() != 4 {
		t.Fatalf("base %d: rounds wait for the departed worker's pulls", r.Base())
	}
	r = NewRounds(d, 2)
	r.Depart(0, errEq("root left"))
	if _, err := r.Pull(Pull{Worker: 1, ReqID: 1}, 0); err == nil || err.Error() != "root left" {
		t.Fatalf("pull of a broadcast whose root left: %v", err)
	}
}

// errEq is an error compared by identity in these tests.
type errEq string

func (e errEq) Error() string { return string(e) }

// TestRoundsJoin: a joined worker is told, once, of every round that
// begins without it (and at Join, of the latest one begun), and is not
// told of rounds its machine has pushed or once its join ends.
func TestRoundsJoin(t *testing.T) {
	d := proto.Decl{Key: 1, DType: proto.Int32, Root: proto.NoRoot, Bytes: 4}
	behind := func(res Result) []Behind { return res.Behind }
	must := func(res Result, err error) Result {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return res
	}
	r := NewRounds(d, 3)
	if b := behind(r.Join(2, true)); len(b) != 0 {
		t.Fatalf("nothing has begun, yet told %v", b)
	}
	if b := behind(must(r.Push(0, 0, i32s(1)))); len(b) != 1 || b[0] != (Behind{2, 0}) {
		t.Fatalf("round 0 began: told %v", b)
	}
	if b := behind(must(r.Push(1, 0, i32s(2)))); len(b) != 0 {
		t.Fatalf("told twice: %v", b)
	}
	must(r.Push(2, 0, i32s(0))) // the joined worker's zeros
	if a := answerOf(t, must(r.Pull(Pull{Worker: 1, ReqID: 7}, 0)), 7); string(a.Buf) != string(i32s(3)) {
		t.Fatalf("sum %v", a.Buf)
	}
	// Worker 0 is ahead in round 1 when worker 1 joins: told of round 1.
	must(r.Push(0, 1, i32s(1)))
	if b := behind(r.Join(1, true)); len(b) != 1 || b[0] != (Behind{1, 1}) {
		t.Fatalf("joined late: told %v", b)
	}
	// The join ends: round 2 tells nobody.
	r.Join(1, false)
	r.Join(2, false)
	r = NewRounds(d, 3)
	must(r.Push(0, 0, i32s(1)))
	if b := behind(must(r.Push(1, 0, i32s(1)))); len(b) != 0 {
		t.Fatalf("nobody joined, yet told %v", b)
	}

	// Local aggregation: machines {0,1} and {2,3}; worker 3 joined.
	r = NewRoundsOf(d, 4, 2)
	r.Join(3, true)
	if b := behind(must(r.Push(2, 0, i32s(1)))); len(b) != 0 {
		t.Fatalf("worker 3's machine pushed round 0, yet told %v", b)
	}
	if b := behind(must(r.Push(0, 1, i32s(1)))); len(b) != 1 || b[0] != (Behind{3, 1}) {
		t.Fatalf("round 1 began without worker 3's machine: told %v", b)
	}

	// Broadcast: the joined root is told when a worker pulls.
	r = NewRounds(proto.Decl{Key: 2, DType: proto.Int32, Root: 0, Bytes: 4}, 2)
	r.Join(0, true)
	if b := behind(must(r.Pull(Pull{Worker: 1, ReqID: 1}, 0))); len(b) != 1 || b[0] != (Behind{0, 0}) {
		t.Fatalf("broadcast pulled without its joined root: told %v", b)
	}
}
