package rdma

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"

	"github.com/gobps/gobps/proto"
)

// TCP is the TCP transport.
type TCP struct {
	opt Options
}

// NewTCP returns a TCP transport.
func NewTCP(opt Options) *TCP { return &TCP{opt: opt} }

// Name implements Transport.
func (t *TCP) Name() string { return "tcp" }

// Register implements Transport. TCP needs no registration.
func (t *TCP) Register(b []byte) (Region, error) { return hostRegion(b), nil }

type hostRegion []byte

func (r hostRegion) Bytes() []byte     { return r }
func (r hostRegion) Deregister() error { return nil }

// Listen implements Transport.
func (t *TCP) Listen(addr string, h Handler) (Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("rdma: tcp listen %s: %w", addr, err)
	}
	l := &tcpListener{ln: ln}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			t.serve(c.(*net.TCPConn), h)
		}
	}()
	return l, nil
}

type tcpListener struct{ ln net.Listener }

func (l *tcpListener) Addr() string { return l.ln.Addr().String() }
func (l *tcpListener) Close() error { return l.ln.Close() }

// Dial implements Transport.
func (t *TCP) Dial(ctx context.Context, addr string, h Handler) (Conn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("rdma: tcp dial %s: %w", addr, err)
	}
	return t.serve(c.(*net.TCPConn), h), nil
}

func (t *TCP) serve(nc *net.TCPConn, h Handler) *tcpConn {
	_ = nc.SetNoDelay(true)
	c := &tcpConn{nc: nc, checksum: t.opt.Checksum, remote: nc.RemoteAddr().String()}
	go c.readLoop(h)
	return c
}

type tcpConn struct {
	nc       *net.TCPConn
	checksum bool
	remote   string

	wmu  sync.Mutex // serialises frames; guards hdr and bufs
	hdr  [proto.HeaderSize]byte
	bufs [2][]byte

	closeOnce sync.Once
	closed    bool // set under wmu by Close
}

func (c *tcpConn) RemoteAddr() string { return c.remote }

// Send implements Conn: one writev with the header and the payload.
func (c *tcpConn) Send(h proto.Header, payload []byte) error {
	if err := stamp(&h, payload, c.checksum); err != nil {
		return err
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.closed {
		return fmt.Errorf("rdma: send %s to %s: %w", h.Op, c.remote, net.ErrClosed)
	}
	h.Encode(c.hdr[:])
	c.bufs[0], c.bufs[1] = c.hdr[:], payload
	v := net.Buffers(c.bufs[:])
	if len(payload) == 0 {
		v = v[:1]
	}
	_, err := v.WriteTo(c.nc)
	c.bufs[1] = nil
	if err != nil {
		return fmt.Errorf("rdma: send %s to %s: %w", h.Op, c.remote, err)
	}
	return nil
}

func (c *tcpConn) Close() error {
	c.wmu.Lock()
	c.closed = true
	c.wmu.Unlock()
	var err error
	c.closeOnce.Do(func() { err = c.nc.Close() })
	return err
}

// readLoop reads frames until the connection fails or is closed.
func (c *tcpConn) readLoop(h Handler) {
	err := c.read(h)
	c.wmu.Lock()
	byUs := c.closed
	c.closed = true
	c.wmu.Unlock()
	c.closeOnce.Do(func() { _ = c.nc.Close() })
	if byUs {
		err = nil
	}
	h.Closed(c, err)
}

func (c *tcpConn) read(h Handler) error {
	r := bufio.NewReaderSize(c.nc, 64<<10)
	var hb [proto.HeaderSize]byte
	for {
		if _, err := io.ReadFull(r, hb[:]); err != nil {
			if errors.Is(err, io.ErrUnexpectedEOF) {
				return fmt.Errorf("rdma: %s closed mid-header: %w", c.remote, err)
			}
			return err
		}
		var hdr proto.Header
		if err := hdr.Decode(hb[:]); err != nil {
			return fmt.Errorf("rdma: from %s: %w", c.remote, err)
		}
		var payload []byte
		var refused error
		if cr, ok := h.(ChunkReceiver); ok && hdr.Length > 0 {
			sink, ok, err := cr.Chunks(c, &hdr)
			switch {
			case err != nil:
				if _, err := io.CopyN(io.Discard, r, int64(hdr.Length)); err != nil {
					return fmt.Errorf("rdma: discard %s payload from %s: %w", hdr.Op, c.remote, err)
				}
				h.Handle(c, &hdr, nil, err)
				continue
			case ok:
				if err := c.readChunks(r, &hdr, sink); err != nil {
					sink.Abort(err)
					return err
				}
				h.Handle(c, &hdr, nil, nil)
				continue
			}
		}
		if hdr.Length > 0 {
			dst, err := h.Dest(c, &hdr)
			switch {
			case err != nil:
				refused = err
				if _, err := io.CopyN(io.Discard, r, int64(hdr.Length)); err != nil {
					return fmt.Errorf("rdma: discard %s payload from %s: %w", hdr.Op, c.remote, err)
				}
			case dst == nil:
				if hdr.Length > proto.MaxControlPayload && hdr.Op != proto.OpDeclare {
					return fmt.Errorf("rdma: from %s: %w: no destination for a %d-byte %s payload", c.remote, proto.ErrBadFrame, hdr.Length, hdr.Op)
				}
				dst = make([]byte, hdr.Length)
				fallthrough
			default:
				if len(dst) != int(hdr.Length) {
					return fmt.Errorf("rdma: handler gave %d bytes for a %d-byte %s payload", len(dst), hdr.Length, hdr.Op)
				}
				if _, err := io.ReadFull(r, dst); err != nil {
					return fmt.Errorf("rdma: read %s payload from %s: %w", hdr.Op, c.remote, err)
				}
				if err := hdr.CheckPayload(dst); err != nil {
					return fmt.Errorf("rdma: from %s: %w", c.remote, err)
				}
				payload = dst
			}
		}
		h.Handle(c, &hdr, payload, refused)
	}
}

// readChunks reads h's payload into the sink's buffers, ChunkBytes at a
// time. With a checksum, the CRC is computed over the pieces as they come
// and checked before the last piece is handed over.
func (c *tcpConn) readChunks(r io.Reader, h *proto.Header, sink ChunkSink) error {
	n := int(h.Length)
	var crc uint32
	for off := 0; off < n; off += ChunkBytes {
		m := min(ChunkBytes, n-off)
		b := sink.Buffer(off, m)
		if len(b) != m {
			return fmt.Errorf("rdma: sink gave %d bytes for a %d-byte piece", len(b), m)
		}
		if _, err := io.ReadFull(r, b); err != nil {
			return fmt.Errorf("rdma: read %s payload from %s: %w", h.Op, c.remote, err)
		}
		if h.Flags&proto.FlagCRC != 0 {
			crc = proto.UpdateChecksum(crc, b)
			if off+m == n && crc != h.CRC {
				return fmt.Errorf("rdma: from %s: %w: payload crc %#08x, header says %#08x", c.remote, proto.ErrBadFrame, crc, h.CRC)
			}
		}
		sink.Filled(off, b)
	}
	return nil
}
