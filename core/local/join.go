package local

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// joined is what a rendezvous yields: the job nonce, every rank's pid, and a
// connection to every other rank (nil at this rank's index).
type joined struct {
	nonce uint64
	pids  []int
	conns []net.Conn
}

// verdictGrace is how long past its own JoinTimeout a rank that reached
// rank 0 waits for rank 0's verdict: rank 0 gives up at its JoinTimeout and
// then tells every rank which ranks never came.
const verdictGrace = 2 * time.Second

// helloTimeout bounds how long rank 0 waits for the hello of a connection it
// accepted, so that a stray connection cannot stall the rendezvous.
const helloTimeout = 2 * time.Second

func newNonce() (uint64, error) {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return 0, fmt.Errorf("job nonce: %w", err)
	}
	return binary.LittleEndian.Uint64(b[:]), nil
}

// joinAlone is the rendezvous of a group of one.
func joinAlone() (joined, error) {
	n, err := newNonce()
	return joined{nonce: n, pids: []int{os.Getpid()}, conns: make([]net.Conn, 1)}, err
}

// untilDone sets c's deadline to the past when ctx ends, so that blocked
// reads, writes and accepts return (and ctx.Err is set by then); the
// returned stop undoes the hook.
func untilDone(ctx context.Context, c interface{ SetDeadline(time.Time) error }) (stop func() bool) {
	return context.AfterFunc(ctx, func() { c.SetDeadline(time.Unix(1, 0)) })
}

// ctxErr explains why ctx ended: the join timeout or the caller. (A
// deadline can show in an I/O error a moment before ctx.Err is set.)
func (g *Group) ctxErr(ctx context.Context) error {
	if err := ctx.Err(); err == nil || errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("timed out after %v", g.cfg.JoinTimeout)
	}
	return ctx.Err()
}

// host is rank 0's side of the rendezvous: listen, collect a hello from
// every other rank, then send each a welcome with sockets to all the others.
func (g *Group) host(ctx context.Context) (joined, error) {
	g.sweep()
	path, err := socketPath(g.cfg.Dir, g.base)
	if err != nil {
		return joined{}, err
	}
	ln, err := g.listen(path)
	if err != nil {
		return joined{}, err
	}
	defer ln.Close() // removes the socket file
	stop := untilDone(ctx, ln)
	defer stop()

	size := g.cfg.Size
	pids := make([]int, size)
	pids[0] = os.Getpid()
	conns := make([]*net.UnixConn, size)
	var rejected []string
	abandon := func(why string) {
		for _, c := range conns {
			if c != nil {
				c.SetWriteDeadline(time.Now().Add(helloTimeout))
				c.Write(appendFrame(nil, frame{op: opReject, payload: []byte(why)}))
				c.Close()
			}
		}
	}
	for n := 1; n < size; {
		c, err := ln.AcceptUnix()
		if err != nil {
			if ctx.Err() == nil {
				abandon("local rank 0 failed: " + err.Error())
				return joined{}, fmt.Errorf("accept at %s: %w", path, err)
			}
			var missing, here []string
			for r := range size {
				if r == 0 || conns[r] != nil {
					here = append(here, strconv.Itoa(r))
				} else {
					missing = append(missing, strconv.Itoa(r))
				}
			}
			why := fmt.Sprintf("%v waiting at %s for local ranks [%s] (joined: [%s])",
				g.ctxErr(ctx), path, strings.Join(missing, " "), strings.Join(here, " "))
			if len(rejected) > 0 {
				why += "; refused: " + strings.Join(rejected, "; ")
			}
			abandon("local rank 0 gave up: " + why)
			return joined{}, errors.New(why)
		}
		r, pid, err := readHello(c, size)
		if err == nil && conns[r] != nil {
			err = fmt.Errorf("local rank %d (pid %d) has joined already", r, pids[r])
		}
		if err != nil {
			rejected = append(rejected, err.Error())
			c.SetWriteDeadline(time.Now().Add(helloTimeout))
			c.Write(appendFrame(nil, frame{op: opReject, payload: []byte(err.Error())}))
			c.Close()
			continue
		}
		c.SetDeadline(time.Time{})
		conns[r], pids[r] = c, pid
		n++
	}
	nonce, err := newNonce()
	if err == nil {
		err = welcome(conns, pids, nonce)
	}
	if err != nil {
		abandon("local rank 0 failed: " + err.Error())
		return joined{}, err
	}
	out := make([]net.Conn, size)
	for r, c := range conns {
		if c != nil {
			out[r] = c
		}
	}
	return joined{nonce: nonce, pids: pids, conns: out}, nil
}

// listen listens on path, replacing a stale socket left by a process that
// died, and refusing to replace one that a live process still answers.
func (g *Group) listen(path string) (*net.UnixListener, error) {
	addr := &net.UnixAddr{Name: path, Net: "unix"}
	ln, err := net.ListenUnix("unix", addr)
	if err == nil || !errors.Is(err, syscall.EADDRINUSE) {
		return ln, err
	}
	if c, derr := net.DialTimeout("unix", path, time.Second); derr == nil {
		c.Close()
		return nil, fmt.Errorf("a live process listens at %s: another local rank 0 of group %q, or an earlier job with the same group that is still running", path, g.cfg.Group)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("remove stale socket: %w", err)
	}
	g.logf("local: removed stale socket %s", path)
	return net.ListenUnix("unix", addr)
}

// readHello reads and checks the hello frame of a connection rank 0 accepted.
func readHello(c *net.UnixConn, size int) (rank, pid int, err error) {
	c.SetReadDeadline(time.Now().Add(helloTimeout))
	f, err := readFrame(c)
	switch {
	case err != nil:
		return 0, 0, fmt.Errorf("a connection sent no hello: %w", err)
	case f.op != opHello || f.key != helloMagic || len(f.payload) != 8:
		return 0, 0, fmt.Errorf("a connection sent a bad hello (%s frame)", f.op)
	}
	pid = int(binary.LittleEndian.Uint64(f.payload))
	switch {
	case f.bytes != uint64(size):
		return 0, 0, fmt.Errorf("local rank %d (pid %d) says the group has %d ranks, local rank 0 says %d", f.round, pid, f.bytes, size)
	case f.round == 0 || f.round >= uint64(size):
		return 0, 0, fmt.Errorf("pid %d says it is local rank %d, outside 1..%d", pid, f.round, size-1)
	}
	return int(f.round), pid, nil
}

// welcome creates a socket pair for every two ranks other than 0 and sends
// each rank its welcome with its ends of those pairs.
func welcome(conns []*net.UnixConn, pids []int, nonce uint64) error {
	size := len(conns)
	fds := make([][]int, size)   // by rank: descriptors to pass
	other := make([][]int, size) // by rank: rank at the far end of each
	defer func() {
		for _, l := range fds {
			for _, fd := range l {
				unix.Close(fd)
			}
		}
	}()
	for i := 1; i < size; i++ {
		for j := i + 1; j < size; j++ {
			pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				return fmt.Errorf("socketpair: %w", err)
			}
			fds[i], other[i] = append(fds[i], pair[0]), append(other[i], j)
			fds[j], other[j] = append(fds[j], pair[1]), append(other[j], i)
		}
	}
	for r := 1; r < size; r++ {
		payload := make([]byte, 0, 8*size+4*len(other[r]))
		for _, pid := range pids {
			payload = binary.LittleEndian.AppendUint64(payload, uint64(pid))
		}
		for _, o := range other[r] {
			payload = binary.LittleEndian.AppendUint32(payload, uint32(o))
		}
		b := appendFrame(nil, frame{op: opWelcome, key: nonce, bytes: uint64(size), payload: payload})
		var oob []byte
		if len(fds[r]) > 0 {
			oob = unix.UnixRights(fds[r]...)
		}
		conns[r].SetWriteDeadline(time.Now().Add(writeTimeout))
		n, _, err := conns[r].WriteMsgUnix(b, oob, nil)
		if err == nil && n < len(b) {
			_, err = conns[r].Write(b[n:])
		}
		if err != nil {
			return fmt.Errorf("welcome local rank %d (pid %d): %w", r, pids[r], err)
		}
		conns[r].SetWriteDeadline(time.Time{})
	}
	return nil
}

// dial is the side of the rendezvous of a rank other than 0: reach rank 0's
// socket (retrying while it does not exist yet), say hello, and wait for the
// welcome and the sockets to the other ranks.
func (g *Group) dial(parent context.Context, deadline time.Time) (joined, error) {
	path, err := socketPath(g.cfg.Dir, g.base)
	if err != nil {
		return joined{}, err
	}
	ctx, cancel := context.WithDeadline(parent, deadline)
	defer cancel()
	var c *net.UnixConn
	var last error // the last refusal, for the timeout's message
	for wait := 10 * time.Millisecond; ; wait = min(2*wait, 200*time.Millisecond) {
		var d net.Dialer
		nc, err := d.DialContext(ctx, "unix", path)
		if err == nil {
			c = nc.(*net.UnixConn)
			break
		}
		if ctx.Err() != nil || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
			break
		}
		if !errors.Is(err, syscall.ENOENT) && !errors.Is(err, syscall.ECONNREFUSED) && !errors.Is(err, syscall.EAGAIN) {
			return joined{}, fmt.Errorf("dial local rank 0 at %s: %w", path, err)
		}
		last = err
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
		case <-t.C:
		}
	}
	if c == nil {
		why := fmt.Sprintf("%v: local rank 0 never accepted at %s", g.ctxErr(ctx), path)
		if last != nil {
			why += fmt.Sprintf(" (last error: %v)", last)
		}
		return joined{}, errors.New(why)
	}
	ok := false
	defer func() {
		if !ok {
			c.Close()
		}
	}()
	ctx, cancel = context.WithDeadline(parent, deadline.Add(verdictGrace))
	defer cancel()
	stop := untilDone(ctx, c)
	defer stop()
	pid := binary.LittleEndian.AppendUint64(nil, uint64(os.Getpid()))
	if _, err := c.Write(appendFrame(nil, frame{op: opHello, key: helloMagic, round: uint64(g.cfg.Rank), bytes: uint64(g.cfg.Size), payload: pid})); err != nil {
		return joined{}, g.waitErr(ctx, path, fmt.Errorf("send hello: %w", err))
	}
	// The descriptors arrive with the first byte of the welcome, so read
	// the header alone with ReadMsgUnix, then the payload.
	var h [frameSize]byte
	oob := make([]byte, unix.CmsgSpace(4*MaxSize))
	n, oobn, _, _, err := c.ReadMsgUnix(h[:], oob)
	var fds []int
	if oobn > 0 {
		fds = parseRights(oob[:oobn])
	}
	defer func() {
		for _, fd := range fds {
			if fd >= 0 {
				unix.Close(fd)
			}
		}
	}()
	if err == nil && n < frameSize {
		_, err = io.ReadFull(c, h[n:])
	}
	if err != nil {
		return joined{}, g.waitErr(ctx, path, err)
	}
	f, plen, err := decodeHeader(h[:])
	if err == nil && plen > 0 {
		f.payload = make([]byte, plen)
		_, err = io.ReadFull(c, f.payload)
	}
	if err != nil {
		return joined{}, g.waitErr(ctx, path, noEOF(err))
	}
	switch {
	case f.op == opReject:
		return joined{}, fmt.Errorf("refused by local rank 0: %s", f.payload)
	case f.op != opWelcome:
		return joined{}, fmt.Errorf("local rank 0 sent %s instead of welcome", f.op)
	case f.bytes != uint64(g.cfg.Size) || len(f.payload) != 8*g.cfg.Size+4*(g.cfg.Size-2) || len(fds) != g.cfg.Size-2:
		return joined{}, fmt.Errorf("malformed welcome from local rank 0 (%d ranks, %d payload bytes, %d sockets)", f.bytes, len(f.payload), len(fds))
	}
	j := joined{nonce: f.key, pids: make([]int, g.cfg.Size), conns: make([]net.Conn, g.cfg.Size)}
	defer func() {
		if !ok {
			for _, c := range j.conns {
				if c != nil {
					c.Close()
				}
			}
		}
	}()
	for r := range j.pids {
		j.pids[r] = int(binary.LittleEndian.Uint64(f.payload[8*r:]))
	}
	c.SetDeadline(time.Time{})
	j.conns[0] = c
	for i := range fds {
		o := int(binary.LittleEndian.Uint32(f.payload[8*g.cfg.Size+4*i:]))
		if o <= 0 || o >= g.cfg.Size || o == g.cfg.Rank || j.conns[o] != nil {
			return joined{}, fmt.Errorf("malformed welcome from local rank 0: socket %d leads to local rank %d", i, o)
		}
		file := os.NewFile(uintptr(fds[i]), fmt.Sprintf("local rank %d", o))
		fds[i] = -1
		pc, err := net.FileConn(file)
		file.Close()
		if err != nil {
			return joined{}, fmt.Errorf("socket to local rank %d: %w", o, err)
		}
		j.conns[o] = pc
	}
	ok = true
	return j, nil
}

// waitErr explains a failure while waiting for rank 0's welcome.
func (g *Group) waitErr(ctx context.Context, path string, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("%v: connected to local rank 0 at %s, but the group did not complete and rank 0 sent no verdict", g.ctxErr(ctx), path)
	}
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) {
		return fmt.Errorf("local rank 0 at %s hung up during the join (did it exit?): %w", path, err)
	}
	return fmt.Errorf("join via %s: %w", path, err)
}

// parseRights returns the descriptors passed in a control message.
func parseRights(oob []byte) []int {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil
	}
	var fds []int
	for _, m := range msgs {
		if r, err := unix.ParseUnixRights(&m); err == nil {
			fds = append(fds, r...)
		}
	}
	return fds
}

// sweep removes the shared-memory files of earlier jobs of this group whose
// rank 0 no longer exists (jobs that crashed before cleaning up; files of a
// job are normally removed after its first round). It runs on rank 0 before
// listening. Files of a job whose rank 0 is alive are left alone.
func (g *Group) sweep() {
	entries, err := os.ReadDir(g.cfg.Dir)
	if err != nil {
		return
	}
	prefix := g.base + "."
	var removed []string
	for _, e := range entries {
		name := e.Name()
		rest, ok := strings.CutPrefix(name, prefix)
		if !ok || strings.HasSuffix(name, ".sock") {
			continue
		}
		pidStr, _, ok := strings.Cut(rest, "-")
		pid, err := strconv.Atoi(pidStr)
		if !ok || err != nil || pid <= 0 || processExists(pid) {
			continue
		}
		if os.Remove(filepath.Join(g.cfg.Dir, name)) == nil {
			removed = append(removed, name)
		}
	}
	if len(removed) > 0 {
		slices.Sort(removed)
		g.logf("local: removed %d stale shared-memory files of dead jobs in %s (e.g. %s)", len(removed), g.cfg.Dir, removed[0])
	}
}

// processExists reports whether a process with this pid exists (EPERM: it
// exists but belongs to someone else).
func processExists(pid int) bool {
	err := unix.Kill(pid, 0)
	return err == nil || errors.Is(err, unix.EPERM)
}
