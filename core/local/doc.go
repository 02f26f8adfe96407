// Package local aggregates the worker processes of one machine through host
// shared memory, as BytePS does: the local ranks sum each partition in a
// shared-memory file, and one rank per partition (its owner) pushes the sum
// for the whole machine and shares the answer. A machine with 8 GPUs then
// sends one copy of each partition to the servers, not 8, and the owners are
// spread over the ranks so that the summing and the network work are too.
//
// The package runs on the CPU only and knows nothing of servers: the engine
// pushes and pulls; this package sums, signals and detects failures. It
// does not read the environment: the caller fills a Config.
//
// # Use
//
// Every local rank joins, declares the same keys in the same order, and
// walks the rounds of each key in order (each key independently):
//
//	g, err := local.Join(ctx, local.Config{Group: id, Size: localSize, Rank: localRank})
//	defer g.Close()
//	s, err := g.Declare(key, nbytes, dtype) // same sequence in every rank
//
//	// each round r, in every rank:
//	copy(s.Input(), myData)                 // or a GPU copy into it
//	err = s.Contribute(r)
//	if s.IsOwner() {
//		sum, err := s.Reduce(ctx, r)        // waits for all ranks; Σ inputs
//		// push sum to the servers, pull the global sum into sum (= s.Result())
//		err = s.Publish(r)
//	} else {
//		res, err := s.Wait(ctx, r)          // the owner's published Result
//		copy(myData, res)
//	}
//	err = s.Done(r)                         // finished reading Result
//
// # Protocol
//
// Join: rank 0 listens on the unix socket <Dir>/<base>.sock, where base is
// "gobps." + the group name sanitised and cut to 32 bytes + "-" + a hash of
// the whole name (a stale socket nobody answers is replaced, a live one is
// not; the socket is created with mode 0600, whatever the umask, so only
// the job's user can connect). The other ranks dial it, retrying until it
// exists. With Config.Auth (the job's secret), each dialer first runs the
// job's handshake (internal/auth: a mutual HMAC challenge-response over
// fresh nonces of both sides, no TLS) as id uint32(local rank)+1, and rank
// 0, as id 1, runs it on every accepted connection before reading anything
// else from it, each connection in a goroutine of its own and within the
// handshake's timeout, so that a silent or slow one delays nobody. Then
// each rank says hello (rank, group size, pid); rank 0 checks that the rank
// in the hello is the one proved in the handshake. A connection that fails
// the handshake, claims a rank it did not prove, or claims a rank that has
// joined already is refused (with a reject frame), closed and logged once
// (Config.Logf) with its pid, uid and claim; it never becomes a member and
// the members are not disturbed. A rank whose handshake rank 0 refuses, or
// whose rank 0 fails its own, gets an error from Join saying that every
// worker must have the job's GOBPS_SECRET.
//
// When all have come, rank 0 draws a random job nonce, creates a socket
// pair for every two other ranks and sends each rank a welcome with the
// nonce, every rank's pid and its ends of those pairs (SCM_RIGHTS), then
// removes the socket. Every two ranks are now connected
// directly (those pairs never appear in the filesystem, so they need no
// handshake); no file is left in Dir. A rank that does not come within
// JoinTimeout is named in every rank's error.
//
// Rounds: each connection carries fixed 32-byte frames (op, dtype, key,
// round, bytes), read by one goroutine per peer and written by another,
// which batches. One round of one key:
//
//	rank p (not the owner)                    owner o
//	write Input(p)                            write Input(o)
//	Contribute(r) ──── contrib key r ────▶    Contribute(r)
//	                                          Reduce(r): wait for every rank;
//	                                            Result = Σ Input(0..n-1),
//	                                            in rank order
//	                                          (engine: push Result, pull the
//	                                            global sum into Result)
//	Wait(r) ◀────────── publish key r ─────   Publish(r)
//	read Result
//	Done(r) ─────────── done key r ──────▶    Done(r)
//	write Input(p) for r+1 ...                Reduce(r+1) may overwrite Result
//
// A rank contributes round r+1 only after its Done(r), and its done(r)
// reaches the owner before its contrib(r+1) (frames to one peer leave in
// order), so when every contrib(r+1) is in, nobody reads Result of round r
// any more. Inputs are safe too: Reduce(r) has finished reading them before
// Publish(r), and a rank writes its input for r+1 only after Wait(r). The
// owner checks every frame against this order (and the declared size and
// dtype); a violation fails the group in every rank with an error naming
// the offender, never a silent wrong sum.
//
// # Shared memory
//
// One file per key in Dir, named <base>.<pid of rank 0>-<nonce>.<key>,
// created (mode 0600) by whichever rank declares the key first, grown (never shrunk)
// with fallocate so that a full tmpfs is an error at Declare rather than a
// SIGBUS later, and mapped MAP_SHARED by every rank:
//
//	offset 0     page        page+slot          page+n·slot   page+(n+1)·slot
//	┌───────────┬───────────┬───────────┬─────┬─────────────┐
//	│ header    │ input of  │ input of  │ ... │ result      │
//	│ (1 page)  │ rank 0    │ rank 1    │     │             │
//	└───────────┴───────────┴───────────┴─────┴─────────────┘
//	slot = Bytes rounded up to the page size (every slot is page-aligned,
//	so a GPU can copy into it once the range is registered)
//
// The header holds the declaration (bytes, dtype, owner, group size), set by
// the first rank to declare with compare-and-swap and checked by the others,
// so ranks that declare a key differently fail at Declare. The owner removes
// the file once every rank has contributed round 0, when every rank has it
// mapped: from then on nothing is left in Dir if the job dies. Close removes
// the files of keys that never completed a round. Files of a job whose
// ranks all died before either carry the pid of its rank 0, and the next
// rank 0 of the same group removes them if that process no longer exists.
// The nonce keeps a new job from ever opening an old job's file, and every
// contribution carries the inode of the sender's file, which the owner
// compares with its own: a file removed and created again under the same
// name (a rank declaring after another closed) is an error, never a sum
// over the wrong memory.
//
// # Failures
//
// Every wait ends when its context does, when a rank it needs has left, or
// when the group fails. The group fails when a peer's connection ends
// without a goodbye (a process that dies has its sockets closed by the
// kernel, so a SIGKILL is noticed at once), when a peer breaks the protocol
// or declares a key differently, or when a peer leaves because its own group
// failed; from then on every pending and later call returns the same
// *PeerError naming the local rank and its pid, Done is closed, and Err
// says why. A peer that closes its group cleanly (Close, with a goodbye)
// fails only the calls that need it: the ranks of a job finish their last
// rounds at slightly different times, and the last rank's final Done must
// not fail because the first has already closed.
package local
