package local

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/gobps/gobps/proto"
	"github.com/gobps/gobps/summation/kernel"
)

// maxSegmentBytes bounds one key's size, so that the file size never
// overflows (a partition is at most proto.MaxPayload anyway).
const maxSegmentBytes = 1 << 40

// stage is where one rank stands in the current round of a segment.
type stage uint8

const (
	stIdle        stage = iota // waiting for Contribute(round)
	stContributed              // Contribute(round) done; owner: Reduce is next, others: waiting for publish
	stReducing                 // owner: Reduce(round) is running
	stReduced                  // owner: Reduce(round) returned; Publish is next
	stPublished                // owner: Publish(round) done; others: publish(round) received, Wait returns
	stTaken                    // others: Wait(round) returned; Done is next
)

// Segment is one key's shared memory and round state in one rank. Its
// methods are safe for concurrent use, but the rounds of one key are a
// sequence each rank walks in order (see the package documentation).
type Segment struct {
	g      *Group
	key    proto.Key
	nbytes int
	dtype  proto.DType
	owner  int
	path   string
	mem    []byte   // the whole mapping
	ino    uint64   // inode of the mapped file
	inputs [][]byte // by rank, nbytes each
	result []byte

	// Guarded by g.mu.
	round    uint64        // the round in progress (or next to start)
	stage    stage         // this rank's progress in round
	wake     chan struct{} // closed and replaced when the state changes
	unlinked bool          // the file is gone from Dir
	// Owner only, by rank (the owner included): rounds contributed and
	// rounds finished. INVARIANT: dones[r] <= contribs[r] <= dones[r]+1.
	contribs []uint64
	dones    []uint64
	told     []uint64 // by joined rank: told of the rounds below this (opNeed)
}

// Key is the segment's key.
func (s *Segment) Key() proto.Key { return s.key }

// Bytes is the size of the key's data.
func (s *Segment) Bytes() int { return s.nbytes }

// DType is the key's element type.
func (s *Segment) DType() proto.DType { return s.dtype }

// Owner is the local rank that reduces and publishes this key.
func (s *Segment) Owner() int { return s.owner }

// IsOwner reports whether this rank owns the key.
func (s *Segment) IsOwner() bool { return s.owner == s.g.cfg.Rank }

// Input is this rank's slot in shared memory (page-aligned, Bytes long):
// write the rank's data for a round here, then call Contribute. A rank may
// write it once the previous round's Reduce (owner) or Wait (others) has
// returned, and must leave it alone from Contribute until then.
func (s *Segment) Input() []byte { return s.inputs[s.g.cfg.Rank] }

// Result is the shared result slot (page-aligned, Bytes long). The owner
// gets it from Reduce holding the local sum, may overwrite it (with the
// global sum) until Publish; every rank may read it until its Done.
func (s *Segment) Result() []byte { return s.result }

// Declare sets up key in shared memory and assigns it an owner. Every local
// rank must declare the same keys, with the same sizes and dtypes, in the
// same order: the owner is the rank with the fewest declared bytes so far,
// ties to the lowest rank, so every rank computes the same owner. A
// declaration that disagrees with another rank's fails here (or, if the
// other rank declares second, there) and fails the group, naming the
// difference. Declare calls are serialised; Declare does not wait for the
// other ranks.
func (g *Group) Declare(key proto.Key, nbytes int, dtype proto.DType) (*Segment, error) {
	return g.declare(key, nbytes, dtype, -1)
}

// DeclareOwned is Declare with the owner given, for keys that the ranks
// may come to declare in different orders (the engine's reserved
// tensors): every rank must give the same owner, 0 to Size-1.
func (g *Group) DeclareOwned(key proto.Key, nbytes int, dtype proto.DType, owner int) (*Segment, error) {
	if owner < 0 || owner >= g.cfg.Size {
		return nil, fmt.Errorf("local: declare key %s: owner %d is not a local rank (0..%d)", key, owner, g.cfg.Size-1)
	}
	return g.declare(key, nbytes, dtype, owner)
}

func (g *Group) declare(key proto.Key, nbytes int, dtype proto.DType, owner int) (*Segment, error) {
	switch {
	case !dtype.Valid():
		return nil, fmt.Errorf("local: declare key %s: invalid dtype %v", key, dtype)
	case nbytes <= 0 || nbytes > maxSegmentBytes:
		return nil, fmt.Errorf("local: declare key %s: size %d bytes is outside 1..%d", key, nbytes, maxSegmentBytes)
	case nbytes%dtype.Size() != 0:
		return nil, fmt.Errorf("local: declare key %s: %d bytes is not a whole number of %s elements", key, nbytes, dtype)
	}
	if err := g.enter(); err != nil {
		return nil, err
	}
	defer g.busy.Done()
	g.declMu.Lock()
	defer g.declMu.Unlock()
	g.mu.Lock()
	_, dup := g.mu.segs[uint64(key)]
	g.mu.Unlock()
	if dup {
		return nil, fmt.Errorf("local: key %s is declared already", key)
	}

	size, self := g.cfg.Size, g.cfg.Rank
	// Keys with a given owner do not count in the balance: the ranks may
	// declare them at different points among the others.
	balanced := owner < 0
	if balanced {
		owner = 0
		for r, l := range g.load {
			if l < g.load[owner] {
				owner = r
			}
		}
	}
	page := os.Getpagesize()
	slot := (nbytes + page - 1) / page * page
	s := &Segment{
		g: g, key: key, nbytes: nbytes, dtype: dtype, owner: owner,
		path:   filepath.Join(g.cfg.Dir, fmt.Sprintf("%s.%s.%016x", g.base, g.job, uint64(key))),
		inputs: make([][]byte, size),
		wake:   make(chan struct{}),
	}
	if owner == self {
		s.contribs = make([]uint64, size)
		s.dones = make([]uint64, size)
		s.told = make([]uint64, size)
	}
	mem, ino, err := mapFile(s.path, page+(size+1)*slot)
	if err != nil {
		err = fmt.Errorf("local: key %s: %w", key, err)
		g.fail(err, true)
		return nil, err
	}
	s.mem, s.ino = mem, ino
	if err := s.checkHeader(); err != nil {
		// The group fails: nobody sums from this file any more.
		os.Remove(s.path)
		unix.Munmap(mem)
		g.fail(err, true)
		return nil, err
	}
	for r := range size {
		off := page + r*slot
		s.inputs[r] = mem[off : off+nbytes : off+nbytes]
	}
	off := page + size*slot
	s.result = mem[off : off+nbytes : off+nbytes]

	g.mu.Lock()
	if err := g.mu.err; err != nil {
		g.mu.Unlock()
		s.unmapAndRemove()
		return nil, err
	}
	if balanced {
		g.load[owner] += uint64(nbytes)
	}
	g.mu.segs[uint64(key)] = s
	g.mu.order = append(g.mu.order, s)
	var ferr error
	for _, e := range g.mu.early[uint64(key)] {
		if err := s.contribLocked(e.from, e.f); err != nil {
			ferr = &PeerError{Rank: e.from, PID: g.pids[e.from], Err: err}
			break
		}
	}
	g.mu.nearly -= len(g.mu.early[uint64(key)])
	delete(g.mu.early, uint64(key))
	g.mu.Unlock()
	if ferr != nil {
		g.fail(ferr, true)
		return nil, ferr
	}
	return s, nil
}

// unmapAndRemove undoes Declare for a segment that never got registered.
func (s *Segment) unmapAndRemove() {
	os.Remove(s.path)
	unix.Munmap(s.mem)
}

// mapFile opens (creating if needed) the file at path, makes it at least
// size bytes with the pages reserved, and maps size bytes of it shared. It
// returns the mapping and the file's inode.
//
// Every rank of a key opens the same file in any order, so it never
// shrinks it: fallocate only grows a file, and reserving the pages up front
// turns a full tmpfs into an error here rather than a SIGBUS at the first
// write.
func mapFile(path string, size int) ([]byte, uint64, error) {
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_CREAT|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0o600)
	if err != nil {
		return nil, 0, &os.PathError{Op: "open", Path: path, Err: err}
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, 0, &os.PathError{Op: "fstat", Path: path, Err: err}
	}
	err = unix.Fallocate(fd, 0, 0, int64(size))
	if errors.Is(err, unix.EOPNOTSUPP) && st.Size < int64(size) {
		err = unix.Ftruncate(fd, int64(size))
	}
	if err != nil && !errors.Is(err, unix.EOPNOTSUPP) {
		if errors.Is(err, unix.ENOSPC) {
			return nil, 0, fmt.Errorf("reserve %d bytes of shared memory in %s: %w (the filesystem is full: in a container, raise the size of /dev/shm, e.g. docker run --shm-size)", size, filepath.Dir(path), err)
		}
		return nil, 0, fmt.Errorf("reserve %d bytes in %s: %w", size, path, err)
	}
	mem, err := unix.Mmap(fd, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, 0, fmt.Errorf("map %d bytes of %s: %w", size, path, err)
	}
	return mem, st.Ino, nil
}

// The header, in the segment file's first page, holds five words: a magic
// number and the declaration (bytes, dtype, owner, group size), each with
// headerSet ORed in. The first rank to declare sets each word (atomic
// compare-and-swap from zero); later ranks compare. Whichever rank comes
// second to a word sees any disagreement.
const (
	headerMagic uint64 = 0x3148534c53504247 // "GBPSLSH1" little endian
	headerSet   uint64 = 1 << 63
)

var headerFields = [...]string{"magic", "size in bytes", "dtype", "owner", "group size"}

// checkHeader records this rank's declaration in the file's header, or
// checks it against the one there.
func (s *Segment) checkHeader() error {
	want := [len(headerFields)]uint64{
		headerMagic,
		uint64(s.nbytes) | headerSet,
		uint64(s.dtype) | headerSet,
		uint64(s.owner) | headerSet,
		uint64(s.g.cfg.Size) | headerSet,
	}
	var diffs []string
	for i, w := range want {
		p := (*atomic.Uint64)(unsafe.Pointer(&s.mem[8*i]))
		if p.CompareAndSwap(0, w) {
			continue
		}
		got := p.Load()
		if got == w {
			continue
		}
		if i == 0 {
			return fmt.Errorf("local: key %s: %s holds something other than a gobps segment", s.key, s.path)
		}
		g := got &^ headerSet
		var gs, ws string
		switch i {
		case 2:
			gs, ws = proto.DType(g).String(), s.dtype.String()
		default:
			gs, ws = fmt.Sprint(g), fmt.Sprint(w&^headerSet)
		}
		diffs = append(diffs, fmt.Sprintf("%s %s here, %s there", headerFields[i], ws, gs))
	}
	if len(diffs) > 0 {
		return fmt.Errorf("local: key %s is declared differently by local rank %d and another local rank (%s): every local rank must declare the same tensors in the same order",
			s.key, s.g.cfg.Rank, strings.Join(diffs, ", "))
	}
	return nil
}

// release unmaps the segment at Close, and removes its file if it may still
// be there (the owner removes it in round 0, so only keys that never
// completed a round are left). A rank that declares the key after that
// creates a new file of the same name; the inode in its contributions then
// differs from the owner's, and the owner fails the group rather than sum
// from the wrong file.
func (s *Segment) release() error {
	g := s.g
	g.mu.Lock()
	remove := !s.unlinked
	s.unlinked = true
	g.mu.Unlock()
	var errs []error
	if remove {
		if err := os.Remove(s.path); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("local: remove %s: %w", s.path, err))
		}
	}
	if err := unix.Munmap(s.mem); err != nil {
		errs = append(errs, fmt.Errorf("local: unmap key %s: %w", s.key, err))
	}
	return errors.Join(errs...)
}

// notifyLocked wakes every goroutine waiting on s. REQUIRES: g.mu.
func (s *Segment) notifyLocked() {
	close(s.wake)
	s.wake = make(chan struct{})
}

// waitLocked waits until cond reports done, cond reports an error (a rank
// it needs has left), the group fails, or ctx ends.
// REQUIRES: g.mu, which it releases while waiting and holds on return.
func (s *Segment) waitLocked(ctx context.Context, what string, cond func() (bool, error)) error {
	g := s.g
	for {
		if err := g.mu.err; err != nil {
			return err
		}
		if done, err := cond(); done {
			return nil
		} else if err != nil {
			return err
		}
		wake, departed := s.wake, g.mu.departed
		g.mu.Unlock()
		var err error
		select {
		case <-wake:
		case <-departed:
		case <-g.failed:
		case <-ctx.Done():
			err = ctx.Err()
		}
		g.mu.Lock()
		if err != nil {
			return fmt.Errorf("local: key %s round %d: %s: %w", s.key, s.round, what, err)
		}
	}
}

// stateLocked describes where this rank stands with s, for errors.
// REQUIRES: g.mu.
func (s *Segment) stateLocked() string {
	owner := s.owner == s.g.cfg.Rank
	switch s.stage {
	case stIdle:
		return fmt.Sprintf("round %d awaits Contribute", s.round)
	case stContributed:
		if owner {
			return fmt.Sprintf("round %d awaits Reduce", s.round)
		}
		return fmt.Sprintf("round %d awaits Wait", s.round)
	case stReducing:
		return fmt.Sprintf("round %d is being reduced", s.round)
	case stReduced:
		return fmt.Sprintf("round %d awaits Publish", s.round)
	case stPublished:
		if owner {
			return fmt.Sprintf("round %d awaits Done", s.round)
		}
		return fmt.Sprintf("round %d awaits Wait", s.round)
	default:
		return fmt.Sprintf("round %d awaits Done", s.round)
	}
}

// beginLocked checks a call on s: the group is healthy, the caller has the
// right role, and round is the round in progress at one of the stages
// allowed. REQUIRES: g.mu.
func (s *Segment) beginLocked(call string, round uint64, owner bool, allowed ...stage) error {
	g := s.g
	if err := g.mu.err; err != nil {
		return err
	}
	if (s.owner == g.cfg.Rank) != owner {
		if owner {
			return fmt.Errorf("local: key %s: %s is for the owner, local rank %d; this is local rank %d", s.key, call, s.owner, g.cfg.Rank)
		}
		return fmt.Errorf("local: key %s: %s is for the ranks that do not own the key, and this rank (%d) owns it", s.key, call, s.owner)
	}
	for _, st := range allowed {
		if round == s.round && s.stage == st {
			return nil
		}
	}
	return fmt.Errorf("local: key %s: %s(round %d) out of order: %s", s.key, call, round, s.stateLocked())
}

// Contribute says that this rank's Input holds its data for round. Every
// rank, the owner included, calls it once per round, in order from round 0;
// it does not wait.
func (s *Segment) Contribute(round uint64) error {
	g := s.g
	g.mu.Lock()
	defer g.mu.Unlock()
	if err := s.beginLocked("Contribute", round, s.owner == g.cfg.Rank, stIdle); err != nil {
		return err
	}
	if err := g.mu.left[s.owner]; err != nil {
		return err // nobody would reduce it
	}
	s.stage = stContributed
	if s.owner == g.cfg.Rank {
		s.contribs[s.owner]++
		s.beganLocked()
		s.notifyLocked()
		return nil
	}
	// Sent under g.mu so that frames to the owner leave in the order of
	// the state changes (done of round r before contrib of r+1).
	g.peers[s.owner].send(frame{op: opContrib, dtype: s.dtype, key: uint64(s.key), round: round, bytes: uint64(s.nbytes),
		payload: binary.LittleEndian.AppendUint64(nil, s.ino)})
	return nil
}

// Reduce, called by the owner after its own Contribute, waits until every
// rank has contributed round and sums all Input slots into Result, in rank
// order (so the sum is the same bits whatever order the contributions came
// in), summing the ranks that are in while waiting for the others. It
// returns Result. If ctx ends or the group fails first, Reduce returns the
// error; after a ctx error it may be called again.
func (s *Segment) Reduce(ctx context.Context, round uint64) ([]byte, error) {
	g := s.g
	if err := g.enter(); err != nil {
		return nil, err
	}
	defer g.busy.Done()
	g.mu.Lock()
	if err := s.beginLocked("Reduce", round, true, stContributed); err != nil {
		g.mu.Unlock()
		return nil, err
	}
	s.stage = stReducing
	size := g.cfg.Size
	// Result still holds round-1 for the ranks that have not said Done; a
	// rank's contrib(round) implies its done(round-1), but the ranks not in
	// yet must be waited for before the first write.
	err := s.waitLocked(ctx, "waiting for every local rank to finish the previous round", func() (bool, error) {
		for q, d := range s.dones {
			if d < round {
				return false, g.mu.left[q]
			}
		}
		return true, nil
	})
	watch := newStallWatch(g.cfg)
	for summed := 0; err == nil && summed < size; {
		err = watch.wait(ctx, s, round, func(ctx context.Context) error {
			return s.waitLocked(ctx, fmt.Sprintf("waiting for local rank %d to contribute", summed), func() (bool, error) {
				return s.contribs[summed] > round, g.mu.left[summed]
			})
		})
		if err != nil {
			break
		}
		n := summed + 1
		for n < size && s.contribs[n] > round {
			n++
		}
		g.mu.Unlock()
		s.sum(summed, n)
		g.mu.Lock()
		summed = n
	}
	if err != nil {
		if s.stage == stReducing {
			s.stage = stContributed
		}
		g.mu.Unlock()
		return nil, err
	}
	// Every rank has contributed, so every rank has the file mapped: its
	// name is no longer needed, and removing it now leaves nothing behind
	// if the job dies.
	unlink := !s.unlinked
	s.unlinked = true
	s.stage = stReduced
	g.mu.Unlock()
	if unlink {
		if err := os.Remove(s.path); err != nil && !errors.Is(err, os.ErrNotExist) {
			g.logf("local: remove %s: %v", s.path, err)
		}
	}
	return s.result, nil
}

// sum adds the inputs of ranks from..to-1 into Result, having summed the
// ranks below from already; rank 0's input is copied, not added.
func (s *Segment) sum(from, to int) {
	for r := from; r < to; r++ {
		switch {
		case r == 0 && to > 1:
			kernel.AddTo(s.dtype, s.result, s.inputs[0], s.inputs[1])
			r++
		case r == 0:
			copy(s.result, s.inputs[0])
		default:
			kernel.Add(s.dtype, s.result, s.inputs[r])
		}
	}
}

// Publish, called by the owner after Reduce, says that Result holds round's
// final value (the global sum, after the owner pushed the local sum and
// pulled): the other ranks' Wait returns.
func (s *Segment) Publish(round uint64) error {
	g := s.g
	g.mu.Lock()
	defer g.mu.Unlock()
	if err := s.beginLocked("Publish", round, true, stReduced); err != nil {
		return err
	}
	s.stage = stPublished
	for _, p := range g.peers {
		if p != nil {
			p.send(frame{op: opPublish, key: uint64(s.key), round: round})
		}
	}
	return nil
}

// Wait, called by every rank but the owner after its Contribute, waits until
// the owner publishes round and returns Result, which the rank may read
// until its Done. It fails if ctx ends or the group fails first; it may be
// called again.
func (s *Segment) Wait(ctx context.Context, round uint64) ([]byte, error) {
	g := s.g
	g.mu.Lock()
	defer g.mu.Unlock()
	if err := s.beginLocked("Wait", round, false, stContributed, stPublished, stTaken); err != nil {
		return nil, err
	}
	err := s.waitLocked(ctx, fmt.Sprintf("waiting for local rank %d to publish", s.owner), func() (bool, error) {
		return s.stage >= stPublished, g.mu.left[s.owner]
	})
	if err != nil {
		return nil, err
	}
	s.stage = stTaken
	return s.result, nil
}

// Done says that this rank has finished with round's Result (the owner after
// Publish, the others after Wait), which ends the round for it: its next
// call is Contribute(round+1). The owner's next Reduce overwrites Result
// only after every rank's Done.
func (s *Segment) Done(round uint64) error {
	g := s.g
	g.mu.Lock()
	defer g.mu.Unlock()
	owner := s.owner == g.cfg.Rank
	want := stTaken
	if owner {
		want = stPublished
	}
	if err := s.beginLocked("Done", round, owner, want); err != nil {
		return err
	}
	s.round++
	s.stage = stIdle
	if owner {
		s.dones[s.owner]++
		return nil
	}
	g.peers[s.owner].send(frame{op: opDone, key: uint64(s.key), round: round})
	return nil
}

// handle applies a contrib, publish or done frame from local rank from. An
// error is a protocol violation by that rank. Frames that arrive after the
// group failed are dropped.
func (g *Group) handle(from int, f frame) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.mu.err != nil {
		return nil
	}
	switch f.op {
	case opJoin:
		if f.round > 1 || f.key != 0 {
			return fmt.Errorf("sent a join frame with round %d and key %d", f.round, f.key)
		}
		g.joinedLocked(from, f.round == 1)
		return nil
	case opNeed:
		if g.mu.joined[g.cfg.Rank] && g.cfg.Behind != nil {
			g.cfg.Behind(proto.Key(f.key), f.round)
		}
		return nil
	}
	s := g.mu.segs[f.key]
	if s == nil {
		if f.op != opContrib {
			return fmt.Errorf("sent %s for key %s round %d, which this rank has not declared", f.op, proto.Key(f.key), f.round)
		}
		if g.mu.nearly >= maxEarly {
			return fmt.Errorf("sent more than %d contributions for keys this rank has not declared", maxEarly)
		}
		g.mu.early[f.key] = append(g.mu.early[f.key], early{from: from, f: f})
		g.mu.nearly++
		return nil
	}
	switch f.op {
	case opContrib:
		return s.contribLocked(from, f)
	case opPublish:
		return s.publishedLocked(from, f)
	default:
		return s.doneLocked(from, f)
	}
}

// contribLocked applies rank from's contribution. REQUIRES: g.mu.
func (s *Segment) contribLocked(from int, f frame) error {
	switch {
	case s.owner != s.g.cfg.Rank:
		return fmt.Errorf("sent its contribution to key %s to local rank %d, but local rank %d owns the key here: the local ranks declared different tensors or in a different order", s.key, s.g.cfg.Rank, s.owner)
	case f.bytes != uint64(s.nbytes) || f.dtype != s.dtype:
		return fmt.Errorf("declared key %s as %d bytes of %s, but local rank %d declared it as %d bytes of %s", s.key, f.bytes, f.dtype, s.g.cfg.Rank, s.nbytes, s.dtype)
	case f.round != s.contribs[from] || s.dones[from] != f.round:
		return fmt.Errorf("contributed key %s round %d out of order (it had contributed %d rounds and finished %d)", s.key, f.round, s.contribs[from], s.dones[from])
	case len(f.payload) != 8 || binary.LittleEndian.Uint64(f.payload) != s.ino:
		return fmt.Errorf("contributed key %s round %d through another shared-memory file than local rank %d's (%s was removed and created again: did a local rank close before the others declared?)", s.key, f.round, s.g.cfg.Rank, s.path)
	}
	s.contribs[from]++
	s.beganLocked()
	s.notifyLocked()
	return nil
}

// publishedLocked applies the owner's publish. REQUIRES: g.mu.
func (s *Segment) publishedLocked(from int, f frame) error {
	switch {
	case from != s.owner:
		return fmt.Errorf("published key %s, which local rank %d owns", s.key, s.owner)
	case f.round != s.round || s.stage != stContributed:
		return fmt.Errorf("published key %s round %d, but here %s", s.key, f.round, s.stateLocked())
	}
	s.stage = stPublished
	s.unlinked = true // by the owner, in its first Reduce
	s.notifyLocked()
	return nil
}

// doneLocked applies rank from's done. REQUIRES: g.mu.
func (s *Segment) doneLocked(from int, f frame) error {
	published := s.round > f.round || (s.round == f.round && s.stage == stPublished)
	switch {
	case s.owner != s.g.cfg.Rank:
		return fmt.Errorf("sent done for key %s to local rank %d, but local rank %d owns the key here", s.key, s.g.cfg.Rank, s.owner)
	case f.round != s.dones[from] || s.contribs[from] != f.round+1 || !published:
		return fmt.Errorf("finished key %s round %d out of order (it had contributed %d rounds and finished %d; here %s)", s.key, f.round, s.contribs[from], s.dones[from], s.stateLocked())
	}
	s.dones[from]++
	return nil
}

// SetJoined says that this rank has run out of data and contributes zeros
// to the other ranks' rounds (on), or no longer does (off); the other
// ranks are told. While it is joined, the owners of keys tell it of every
// round that begins without it, and it hears of them through
// Config.Behind (for the keys it owns too, when another rank
// contributes), at once for the rounds already begun. The engine then runs
// those rounds with zeros, like any other: the group sums as usual.
func (g *Group) SetJoined(on bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.mu.err != nil {
		return
	}
	var r uint64
	if on {
		r = 1
	}
	for _, p := range g.peers {
		if p != nil {
			p.send(frame{op: opJoin, round: r})
		}
	}
	g.joinedLocked(g.cfg.Rank, on)
}

// joinedLocked records rank's join (or its end) and, on a join, tells it
// of the rounds of this rank's keys that began without it. REQUIRES: g.mu.
func (g *Group) joinedLocked(rank int, on bool) {
	if g.mu.joined[rank] == on {
		return
	}
	g.mu.joined[rank] = on
	if !on {
		g.mu.nJoined--
		return
	}
	g.mu.nJoined++
	for _, s := range g.mu.order {
		if s.owner == g.cfg.Rank {
			s.beganLocked()
		}
	}
}

// beganLocked tells the joined ranks that have not contributed to the
// latest round of s that anyone began of it, once each. Owner only.
// REQUIRES: g.mu.
func (s *Segment) beganLocked() {
	g := s.g
	if g.mu.nJoined == 0 {
		return
	}
	top := slices.Max(s.contribs) // rounds 0..top-1 have begun
	if top == 0 {
		return
	}
	for q, j := range g.mu.joined {
		if !j || s.contribs[q] >= top || s.told[q] >= top {
			continue
		}
		s.told[q] = top
		if q == g.cfg.Rank {
			if g.cfg.Behind != nil {
				g.cfg.Behind(s.key, top-1)
			}
		} else if p := g.peers[q]; p != nil {
			p.send(frame{op: opNeed, key: uint64(s.key), round: top - 1})
		}
	}
}
