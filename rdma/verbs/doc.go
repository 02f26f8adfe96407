// Package verbs is gobps's RDMA verbs transport (rdma.Transport):
// verbs.New on an ibv.Library, and the "verbs" driver that rdma.Open
// prefers when a device with an ACTIVE port exists. It owns device
// discovery (sysfs through github.com/Mellanox/rdmamap, and libibverbs's
// own device list; the library is loaded with dlopen by package ibv, so a
// binary without it, or built without cgo, falls back to TCP), the
// bootstrap over TCP, the queue pairs and their completion goroutines, the
// eager, rendezvous and stable-destination protocols, the MR cache, and its
// counters. The contract it implements, the hello and frame admission, are
// package rdma's.
//
// The transport runs on any ibv.Library: libibverbs, or the in-process
// emulation that the tests use. Each Conn is one reliable-connected queue
// pair with its own completion queue and channel.
//
// Machine and driver. The protocol's state is a state machine with no
// I/O (protocol, in protocol.go): send ids and what each waits for, the
// receive slots, the stable destinations granted either way with their
// credits, and the accounting of tokens, eager buffers and control slots.
// It decides every step (which id, slot or buffer to use; whether a Send
// waits for a credit; which destination a write landed in; when a credit
// is due; what to release when the connection ends) and judges every CTS,
// credit, write and header of the peer's, returning errors that wrap
// proto.ErrBadFrame. Registrations are opaque handles to it. It starts no
// goroutine and uses no channel, lock or clock: conn (verbs.go) is its
// driver, which calls it under the connection's mutex, posts work
// requests, polls completions, registers memory and wakes waiting Sends.
// The machine is tested alone, by scripts (testdata/*.txt) and by two
// machines wired together under thousands of random schedules with
// failures and a forging peer.
//
// Bootstrap (transport.go: the Transport, its listeners and the
// handshake). Listen listens on TCP at the same address a TCP server would,
// so the address book does not change; Dial connects over TCP. Each side
// sends a bootstrap hello (magic "GBRV", version, link layer, MTU, LID, GID, send and
// receive depths, receive buffer size), sizes its QP from both sides'
// depths, posts its receive buffers, sends its QP number and first PSN,
// moves the QP to INIT, RTR (GRH with the chosen GID on RoCE) and RTS
// (timeout 14, retry_cnt 7, rnr_retry 7: RNR retries forever), and the two
// exchange a ready byte so that neither sends to a QP that is not ready. The
// TCP socket then stays open for the life of the Conn as its liveness
// channel: EOF or an error on it fails the Conn at once, which is what makes
// a dead peer an error instead of an endless RNR retry.
//
// Frames. A frame without a tensor payload (an op that does not
// proto.Op.CarriesTensor, or any frame with an empty payload) that fits a
// receive buffer
// goes eagerly: one SEND of an 8-byte message header, the frame header and
// the payload into one of the peer's pre-posted, registered 4 KiB receive
// buffers (RecvDepth of them). The receiver copies the payload into Dest's
// buffer (or a new one) and reposts the buffer. Every other frame goes by
// rendezvous:
//
//	sender                                  receiver
//	RTS {send id, header}   ── SEND ──▶     Dest(header) → buffer, found in
//	                                        (or added to) the MR cache
//	                        ◀── SEND ──     CTS {send id, slot, addr, rkey, len}
//	RDMA_WRITE_WITH_IMM     ══ write ══▶    the payload lands in the buffer;
//	from the payload's own                  the immediate (slot) completes a
//	registered memory                       posted receive → Handle(buffer)
//	(send completion: Send returns)
//
// No byte of the payload is copied on either side: a push is one write into
// the server's buffer for it and a pull answer one write from the sum buffer
// into the worker's tensor. The address and rkey travel in every CTS (the
// registration behind them is made once per buffer, thanks to the caches);
// the per-frame RTS/CTS is flow control, as in ps-lite's RDMA van. A Dest
// error is sent back in the CTS (Send returns nil, as on TCP) and the
// receiver calls Handle with that error; so is a failed registration of the
// destination (RLIMIT_MEMLOCK, say), which leaves the Conn open. With the
// checksum option the CRC is checked once the write has landed; a mismatch
// closes the Conn.
//
// Stable destinations (Caps.StableDest). A Handler that implements
// rdma.StableReceiver keeps one buffer per (op, key) and Conn for tensor
// frames (the summation server: one landing buffer per key and worker). The first frame of an (op, key) goes
// by rendezvous as above, but the receiver asks StableDest instead of Dest,
// registers that buffer (kept registered for the life of the Conn) and a
// 64-byte header slot (in registered pages of 64 slots), and its CTS carries
// a stable flag with the header slot's address and rkey and a stable id:
// the one-time rendezvous per (key, peer) of BytePS's RDMA van. The sender
// keeps that grant with no credit. Once the handler is done with a frame in
// its stable buffer it calls Conn.Release, and the receiver SENDs a
// credit for the stable id. The next frame of that (op,
// key) and length waits for the credit (failing promptly if the Conn
// fails), then is two work requests and nothing else:
//
//	sender                                  receiver
//	RDMA_WRITE (inline) of the header ══▶   header slot of stable id
//	RDMA_WRITE_WITH_IMM of the payload ══▶  the stable buffer; immediate
//	                                        stableBit|id → header decoded and
//	                                        checked (op, key, length, CRC)
//	                                        from the slot → Handle(buffer)
//	                        ◀── SEND ──     credit {id}, after Release
//
// The RC queue pair executes them in order, so the header is in place when
// the immediate's completion is seen. A frame of another length, or a second
// concurrent frame of the (op, key) announced before the grant, takes the
// per-frame path through Dest. A write into a stable buffer without a
// credit, or a header that does not match the slot, closes the Conn as a
// bad frame. In steady state a stable frame costs no registration, no copy
// and no RTS/CTS (Counters.Stable; the receiver's Sends are its Credits).
// Pull answers, control frames, handlers that do not opt in and TCP keep
// the per-frame protocol.
//
// Back-pressure. At most SendDepth frames are in flight per Conn: Send
// blocks (on a channel, never spinning) until one completes, and fails
// promptly when the Conn closes. Receive buffers are reposted as soon as
// their message is taken out; when all are busy the peer's NIC retries
// (RNR) until one is free. Control slots for RTS and CTS messages number our
// send depth plus the peer's, so that answering an RTS never waits on the
// peer's software: the two ends cannot deadlock on each other.
//
// MR cache. Registrations are kept by (address, length), and a slice inside
// a registered region uses that region. Idle registrations are evicted,
// least recently used first, to stay under MRCacheBytes; one in use by a
// transfer never is. A registration that fails for lack of locked memory is
// retried once after evicting every idle one. The cache keys by address,
// which is why callers stage memory that C code may free and reuse through
// Go-owned buffers (Caps.Registered); Transport.Close deregisters every
// entry.
//
// Completions. One goroutine per Conn waits on the completion channel
// (through Go's netpoller, with a timeout so it notices a closing Conn) and
// drains the CQ in batches: send completions return tokens and slots and
// wake Sends; receive completions become events for the Handler's goroutine.
// A completion with an error status fails the Conn with ibv_wc_status_str's
// text. On failure the QP is moved to ERROR, the flushed completions are
// drained (at most 2 s), the QP is destroyed, and only then are Closed
// called and the memory of unfinished transfers released: the NIC never
// touches a buffer after Send returned or Closed was called.
//
// Counters. Verbs counts registrations, deregistrations, MR cache hits and
// evictions, payload copies, RDMA writes, SENDs, eager and rendezvous frames
// (Transport.Counters; Caps.Counts), and frames sent into
// stable destinations and the credits given for them. A steady-state
// push/pull round makes no registration and no copy, and its pushes no
// RTS/CTS; tests assert it.
//
// What was tested where: the protocol machine alone, and the whole
// protocol in go test on the emulation (ibv.Emulator), everywhere; the same tests, plus a registration
// refused by RLIMIT_MEMLOCK and the summation server with workers, run on a
// real Soft-RoCE device (rxe0 on lo) inside a QEMU guest
// (scripts/rdma_qemu.sh; TestVerbsReal* here and in package rdma, run by
// make test-rdma). Nothing has run on a hardware
// RDMA NIC yet.
//
// Hello and admission. Dial sends the hello as the first eager SEND before
// it returns. An accepted connection's bootstrap runs under a deadline no
// later than its hello timeout, and its serve goroutine closes it with
// rdma.ErrNoHello if the hello has not come by then. Admission (proto.Admit)
// runs on every eager frame before its body is copied out (a refused one's
// receive buffer is reposted), on every RTS before the CTS (a refused one
// is answered with a refused CTS, so its payload is never written), and on
// every write into a stable destination from its header slot.
package verbs
