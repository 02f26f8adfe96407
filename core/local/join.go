package local

import (
	"bytes"
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
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/gobps/gobps/internal/auth"
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

// maxPending bounds the connections to rank 0's socket whose handshake or
// hello is still being read; more are closed at once.
const maxPending = 2 * MaxSize

// maxRefusals bounds the refusals that rank 0 names in its timeout error.
const maxRefusals = 8

// rankID is local rank r's id in the job's handshake (0 means none).
func rankID(r int) uint32 { return uint32(r) + 1 }

// describeID names what a handshake id claims.
func describeID(id uint32) string {
	if id == 0 {
		return "no local rank"
	}
	return fmt.Sprintf("local rank %d", id-1)
}

// arrival is what rank 0 learned from one connection to its socket: the
// hello of a rank, or why the connection is refused.
type arrival struct {
	c    *net.UnixConn
	rank int
	pid  int
	err  error
	// intruder: the connection failed the job's handshake, or claimed a
	// rank other than the one it proved or one that has joined; rank 0
	// logs it.
	intruder bool
	// unproven: it failed the handshake, and is told no more than that.
	unproven bool
}

// refusedHandshake is what rank 0 tells a connection that failed the job's
// handshake (nothing it could learn from).
const refusedHandshake = "the connection did not pass the job's handshake (every worker must have the job's GOBPS_SECRET)"

// host is rank 0's side of the rendezvous: listen, collect a hello from
// every other rank, then send each a welcome with sockets to all the others.
// Every accepted connection is admitted (handshake, hello) by a goroutine
// of its own, so that a silent or slow one delays nobody else.
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

	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		pending  = make(map[*net.UnixConn]bool) // being admitted; guarded by mu
		quit     bool                           // guarded by mu
		overflow int                            // connections closed unread; guarded by mu
	)
	arrivals := make(chan arrival)
	gone := make(chan struct{}) // closed when host returns
	acceptErr := make(chan error, 1)
	wg.Go(func() {
		for {
			c, err := ln.AcceptUnix()
			if err != nil {
				acceptErr <- err
				return
			}
			mu.Lock()
			switch {
			case quit:
				c.Close()
			case len(pending) >= maxPending:
				overflow++
				c.Close()
			default:
				pending[c] = true
				wg.Go(func() {
					a := g.admit(c)
					select {
					case arrivals <- a:
					case <-gone: // closed below, with the rest of pending
					}
				})
			}
			mu.Unlock()
		}
	})
	defer func() {
		mu.Lock()
		quit = true
		for c := range pending {
			c.Close()
		}
		mu.Unlock()
		close(gone)
		ln.Close()
		os.Remove(path) // a listener made from a descriptor does not remove it
		wg.Wait()
	}()

	size := g.cfg.Size
	pids := make([]int, size)
	pids[0] = os.Getpid()
	conns := make([]*net.UnixConn, size)
	var rejected []string
	nrejected := 0
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
		var a arrival
		select {
		case a = <-arrivals:
		case err := <-acceptErr:
			abandon("local rank 0 failed: " + err.Error())
			return joined{}, fmt.Errorf("accept at %s: %w", path, err)
		case <-ctx.Done():
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
				if nrejected > len(rejected) {
					why += fmt.Sprintf(" (and %d more)", nrejected-len(rejected))
				}
			}
			mu.Lock()
			if overflow > 0 {
				why += fmt.Sprintf("; %d connections closed unread (more than %d at once)", overflow, maxPending)
			}
			mu.Unlock()
			abandon("local rank 0 gave up: " + why)
			return joined{}, errors.New(why)
		}
		mu.Lock()
		delete(pending, a.c)
		mu.Unlock()
		if a.err == nil && conns[a.rank] != nil {
			a.err = fmt.Errorf("pid %d says it is local rank %d, but local rank %d (pid %d) has joined already", a.pid, a.rank, a.rank, pids[a.rank])
			a.intruder = true
		}
		if a.err != nil {
			nrejected++
			if len(rejected) < maxRefusals {
				rejected = append(rejected, a.err.Error())
			}
			if a.intruder {
				g.logf("local: group %q: refused a connection to %s: %v", g.cfg.Group, path, a.err)
			}
			c := a.c
			c.SetWriteDeadline(time.Now().Add(helloTimeout))
			if a.unproven {
				c.Write(appendFrame(nil, frame{op: opReject, payload: []byte(refusedHandshake)}))
			} else {
				c.Write(appendFrame(nil, frame{op: opReject, payload: []byte(a.err.Error())}))
			}
			c.Close()
			continue
		}
		a.c.SetDeadline(time.Time{})
		conns[a.rank], pids[a.rank] = a.c, a.pid
		n++
		if g.cfg.admitted != nil {
			g.cfg.admitted(a.rank)
		}
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

// admit runs, on a connection rank 0 accepted, the job's handshake (with
// Config.Auth) and reads its hello. It never logs: host does, while it
// still runs.
func (g *Group) admit(c *net.UnixConn) arrival {
	a := arrival{c: c}
	var proved uint32
	if g.cfg.Auth != nil {
		rc := &recorder{Conn: c}
		var err error
		if _, proved, err = g.cfg.Auth.Accept(rc, rankID(0)); err != nil {
			a.err = fmt.Errorf("%s%s failed the job's handshake: %w", peerCred(c), rc.claim(), err)
			a.intruder, a.unproven = true, true
			return a
		}
	}
	a.rank, a.pid, a.err = readHello(c, g.cfg.Size)
	if a.err == nil && g.cfg.Auth != nil && proved != rankID(a.rank) {
		a.err = fmt.Errorf("%w: %s proved %s in the job's handshake but says it is local rank %d (pid %d)",
			auth.ErrRefused, peerCred(c), describeID(proved), a.rank, a.pid)
		a.intruder = true
	}
	return a
}

// recorder is a connection that keeps the first auth.HelloSize bytes read
// from it, so that a refused handshake can say what the peer claimed.
type recorder struct {
	net.Conn
	head []byte
}

func (r *recorder) Read(b []byte) (int, error) {
	n, err := r.Conn.Read(b)
	if k := min(n, auth.HelloSize-len(r.head)); k > 0 {
		r.head = append(r.head, b[:k]...)
	}
	return n, err
}

// claim says what the recorded hello claimed, if there was one.
func (r *recorder) claim() string {
	if len(r.head) < auth.HelloSize {
		return ""
	}
	id, _, err := auth.DecodeHello(r.head)
	if err != nil {
		return ""
	}
	return " claiming " + describeID(id)
}

// peerCred names the process at the other end of c (SO_PEERCRED).
func peerCred(c *net.UnixConn) string {
	var cred *unix.Ucred
	var err error
	rc, serr := c.SyscallConn()
	if serr == nil {
		serr = rc.Control(func(fd uintptr) {
			cred, err = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
		})
	}
	if serr != nil || err != nil || cred == nil {
		return "a connection"
	}
	return fmt.Sprintf("a connection from pid %d (uid %d)", cred.Pid, cred.Uid)
}

// listen listens on path, replacing a stale socket left by a process that
// died, and refusing to replace one that a live process still answers.
func (g *Group) listen(path string) (*net.UnixListener, error) {
	ln, err := listenPrivate(path)
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
	return listenPrivate(path)
}

// listenPrivate listens on a unix socket at path that only this user may
// connect to: Linux creates the socket's file with the socket's own mode
// (less the umask), so the mode is set to 0600 before bind, and the file
// never exists with a wider one. The caller removes path after closing the
// listener.
func listenPrivate(path string) (*net.UnixListener, error) {
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("listen at %s: %w", path, os.NewSyscallError("socket", err))
	}
	f := os.NewFile(uintptr(fd), path)
	defer f.Close()
	if err := unix.Fchmod(fd, 0o600); err != nil {
		return nil, fmt.Errorf("listen at %s: %w", path, os.NewSyscallError("fchmod", err))
	}
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: path}); err != nil {
		return nil, fmt.Errorf("listen at %s: %w", path, os.NewSyscallError("bind", err))
	}
	ok := false
	defer func() {
		if !ok {
			os.Remove(path)
		}
	}()
	// Nobody can connect before listen: should a kernel have ignored the
	// socket's mode, the file gets it now, before anyone could.
	if err := os.Chmod(path, 0o600); err != nil {
		return nil, fmt.Errorf("listen at %s: %w", path, err)
	}
	if err := unix.Listen(fd, unix.SOMAXCONN); err != nil {
		return nil, fmt.Errorf("listen at %s: %w", path, os.NewSyscallError("listen", err))
	}
	l, err := net.FileListener(f)
	if err != nil {
		return nil, fmt.Errorf("listen at %s: %w", path, err)
	}
	ok = true
	return l.(*net.UnixListener), nil
}

// readHello reads and checks the hello frame of a connection rank 0 accepted
// (after the job's handshake, with Config.Auth).
func readHello(c *net.UnixConn, size int) (rank, pid int, err error) {
	c.SetReadDeadline(time.Now().Add(helloTimeout))
	var h [frameSize]byte
	if _, err := io.ReadFull(c, h[:]); err != nil {
		return 0, 0, fmt.Errorf("a connection sent no hello: %w", err)
	}
	if string(h[:len(auth.Magic)]) == auth.Magic {
		return 0, 0, fmt.Errorf("%s started the job's handshake, but local rank 0 has no secret (every worker must have the job's GOBPS_SECRET)", peerCred(c))
	}
	f, err := readFrame(io.MultiReader(bytes.NewReader(h[:]), c))
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
	if err := g.prove(ctx, c, path); err != nil {
		return joined{}, err
	}
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

// prove runs the dialing side of the job's handshake (with Config.Auth) on
// c, this rank's fresh connection to rank 0's socket at path, as this
// local rank, and checks that the acceptor proved to be local rank 0.
func (g *Group) prove(ctx context.Context, c *net.UnixConn, path string) error {
	if g.cfg.Auth == nil {
		return nil
	}
	var (
		peer uint32
		err  error
	)
	// The handshake sets c's deadline (its own timeout) and clears it when
	// done, which can undo the one untilDone set when ctx ended: check ctx
	// before and after.
	if ctx.Err() == nil {
		_, peer, err = g.cfg.Auth.Dial(c, rankID(g.cfg.Rank))
	}
	if ctx.Err() != nil {
		return fmt.Errorf("%v: connected to local rank 0 at %s, but the job's handshake did not finish", g.ctxErr(ctx), path)
	}
	switch {
	case errors.Is(err, auth.ErrRefused):
		return fmt.Errorf("the local group's rank 0 refused this process's handshake: %w (every worker must have the job's GOBPS_SECRET)", err)
	case errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE):
		// What a rank 0 without a secret does: it rejects the handshake's
		// hello as a malformed frame and hangs up.
		return fmt.Errorf("the local group's rank 0 refused this process's handshake: it hung up (%w), so it has no secret or another one, or it exited (every worker must have the job's GOBPS_SECRET)", err)
	case err != nil:
		return g.waitErr(ctx, path, fmt.Errorf("the job's handshake: %w", err))
	case peer != rankID(0):
		return fmt.Errorf("the process at %s holds the job's secret but says it is %s, not local rank 0", path, describeID(peer))
	}
	return nil
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
	removed := removeDead(g.cfg.Dir, g.base)
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

// RemoveDead removes the shared-memory files in dir of the group named
// group (Config.Group) that were made by processes that no longer exist,
// and returns their names. A launcher calls it once the job's processes
// on this machine have ended, so that a job whose workers were killed
// (SIGKILL leaves no chance to clean up) leaves nothing behind; files of a
// process still alive are left alone.
func RemoveDead(dir, group string) []string {
	return removeDead(dir, baseName(group))
}

func removeDead(dir, base string) []string {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil
	}
	prefix := base + "."
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
		if os.Remove(filepath.Join(dir, name)) == nil {
			removed = append(removed, name)
		}
	}
	return removed
}
