// Package rdma is gobps's transport layer: one interface shaped by RDMA
// semantics, and the implementations behind it, chosen once by Open.
//
// The shape follows verbs, so that TCP is a fallback of the same semantics
// rather than the other way round:
//
//   - Memory is registered (Transport.Register) before frames are sent from
//     or received into it. For TCP registration is a no-op; verbs register
//     through an MR cache, so a buffer used again is not registered again.
//   - A frame is a proto.Header plus an optional payload in registered
//     memory. Conn.Send returns once the payload may be reused.
//   - The receiver chooses where a payload lands before it arrives:
//     Handler.Dest is asked, with the header in hand, for the destination,
//     and the payload is read (TCP) or written by the peer's NIC (verbs)
//     straight into it.
//
// # Call protocol
//
// A Handler's methods are called from one goroutine per Conn, one at a
// time: Dest (for a frame with a payload), then Handle, for each frame in
// arrival order. Closed is called exactly once, after the last Handle. Handle
// must not block for long: it holds up that connection's reader; and it must
// not wait for a Send on its own connection to complete (on verbs a tensor
// Send needs that reader to take the peer's answer to its announcement).
// A frame that fails to decode, or whose CRC does not match, closes the
// connection with a reason given to Closed; it never panics the process.
//
// On verbs, frames sent by concurrent Sends may be in flight together: Dest
// is called for each as it is announced and Handle as each payload lands, so
// one frame's Dest may come between another's Dest and Handle. Frames one
// goroutine sends one after another (each Send returned before the next) are
// seen Dest, Handle, Dest, Handle, in order, on both transports. A payload
// whose destination Dest gave is never written after Closed; a destination
// whose payload never came (the connection failed) is not handed to Handle:
// Closed is the handler's signal to let it go.
//
// Conn.Send is safe for concurrent use; frames from concurrent Sends never
// interleave.
//
// # Choosing the transport
//
// Open uses verbs when a usable RDMA device with an ACTIVE port exists and
// TCP otherwise, and returns the reason in a sentence the caller logs once
// ("using verbs on mlx5_0 port 1 (RoCE v2, GID index 3 ...)", "no RDMA
// devices in /sys/class/infiniband; using TCP"). Options.Mode forces either
// (BYTEPS_ENABLE_RDMA, DMLC_ENABLE_RDMA); forced verbs that cannot be used
// are an error carrying the same reason. Devices are discovered from sysfs
// (github.com/Mellanox/rdmamap) and libibverbs's device list; the library is
// loaded at run time (package ibv), so one binary runs everywhere.
//
// # TCP
//
// The header and the payload leave in one writev, and the payload is read
// from the socket straight into its destination. Several connections per
// peer pair (lanes) are the caller's choice: it dials the same address
// several times and spreads keys over the Conns.
//
// # Verbs
//
// Verbs (verbs.go) runs on any ibv.Library: libibverbs, or the in-process
// emulation that the tests use. Each Conn is one reliable-connected queue
// pair with its own completion queue and channel.
//
// Bootstrap. Listen listens on TCP at the same address a TCP server would,
// so the address book does not change; Dial connects over TCP. Each side
// sends a hello (magic "GBRV", version, link layer, MTU, LID, GID, send and
// receive depths, receive buffer size), sizes its QP from both sides'
// depths, posts its receive buffers, sends its QP number and first PSN,
// moves the QP to INIT, RTR (GRH with the chosen GID on RoCE) and RTS
// (timeout 14, retry_cnt 7, rnr_retry 7: RNR retries forever), and the two
// exchange a ready byte so that neither sends to a QP that is not ready. The
// TCP socket then stays open for the life of the Conn as its liveness
// channel: EOF or an error on it fails the Conn at once, which is what makes
// a dead peer an error instead of an endless RNR retry.
//
// Frames. A frame without a tensor payload (ops other than OpPush and
// OpPullResp, or any frame with an empty payload) that fits a receive buffer
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
// Stable destinations. A Handler that implements StableReceiver keeps one
// buffer per (op, key) and Conn for tensor frames (the summation server: one
// landing buffer per key and worker). The first frame of an (op, key) goes
// by rendezvous as above, but the receiver asks StableDest instead of Dest,
// registers that buffer (kept registered for the life of the Conn) and a
// 64-byte header slot (in registered pages of 64 slots), and its CTS carries
// a stable flag with the header slot's address and rkey and a stable id:
// the one-time rendezvous per (key, peer) of BytePS's RDMA van. The sender
// keeps that grant with no credit. Once the handler is done with a frame in
// its stable buffer it calls Release (Conn implements Releaser), and the
// receiver SENDs a credit for the stable id. The next frame of that (op,
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
// retried once after evicting every idle one. Transport.Register goes
// through the same cache; Region.Deregister releases the registration once
// no transfer uses it.
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
// (Counters; CountersOf works on any Transport), and frames sent into
// stable destinations and the credits given for them. A steady-state
// push/pull round makes no registration and no copy, and its pushes no
// RTS/CTS; tests assert it.
//
// What was tested where: the whole protocol runs in go test on the
// emulation (ibv.Emulator) everywhere; the same tests, plus a registration
// refused by RLIMIT_MEMLOCK and the summation server with workers, run on a
// real Soft-RoCE device (rxe0 on lo) inside a QEMU guest
// (scripts/rdma_qemu.sh, TestVerbsReal*). Nothing has run on a hardware
// RDMA NIC yet.
package rdma
