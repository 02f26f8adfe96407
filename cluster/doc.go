// Package cluster is gobps's membership layer: the Coordinator (BytePS's
// "scheduler" role) and the Member client that every server and worker
// holds.
//
// It owns rendezvous (ranks and the address book), barriers, heartbeats and
// death detection, and the end of the job. It does not move tensor data and
// does not read configuration: the caller maps its config onto
// CoordinatorConfig, Registration and Options.
//
// # Use
//
// One process runs the coordinator:
//
//	c, err := cluster.NewCoordinator(cluster.CoordinatorConfig{Addr: ":9000", NumWorkers: 8, NumServers: 2})
//	err = c.Run(ctx) // returns when every node has left, or names the dead
//
// Every server and worker joins, and leaves when done:
//
//	m, err := cluster.Join(ctx, "10.0.0.1:9000", cluster.Registration{Role: cluster.RoleServer, Addr: dataAddr, PID: os.Getpid()}, cluster.Options{})
//	book := m.Book()                   // everyone, by rank
//	err = m.Barrier(ctx, cluster.All)  // optional
//	<-m.ShutdownRequested()            // servers: wait for the workers to finish
//	err = m.Leave()
//
// Members watch Events for the deaths of other nodes and Done for the loss
// of their own connection.
//
// # Authentication
//
// With CoordinatorConfig.Auth and Options.Auth (an *auth.Config: the job's
// secret and, optionally, mutual TLS 1.3), every connection to the
// coordinator starts with internal/auth's handshake, before any frame:
// the member runs Auth.Dial as soon as it is connected, claiming the node
// id of the rank it asks for (NodeID of its role and explicit rank; 0 when
// it lets the coordinator pick), and the coordinator runs Auth.Accept on
// the connection's own goroutine (never the accept loop's, so a slow or
// silent peer holds up nobody), bounded by Auth's timeout. A peer that
// fails is closed and logged once with its address and the reason; nothing
// it sent is used. A peer that sent a plain control frame instead (a
// member without the secret) is told so in an OpError, so that its Join
// fails with that reason; anyone else hears nothing. A member whose
// handshake is refused fails Join at once (connecting is retried, a
// refused handshake never is). A coordinator without a secret refuses a
// connection that opens with the handshake's hello at once, so that a
// member with a secret fails fast too. Both ends must hold the same
// configuration (GOBPS_SECRET and GOBPS_TLS_*, mapped by the caller).
// Without Auth (nil or empty) connections are not authenticated.
//
// # Identity
//
// A rank belongs to the node that registered it until that node leaves or
// dies (or, before the book, goes away, which gives the rank back): a
// second registration of a rank held by a registered node is refused with
// OpError and logged, and the holder is unaffected; ranks assigned by
// arrival are free ones only, so no registration ever displaces a node. A
// registration for a role whose ranks are all taken (or that the job has
// none of), and any registration after the book, is refused too. When the
// handshake claimed a node id (non-zero), the registration must be for
// exactly that role and rank, or it is refused. Refusals sent to a peer
// that has not registered name what it asked for and who holds the rank
// (role, rank, pid), never the addresses nodes listen on; the coordinator's
// log has the full story.
//
// # Protocol
//
// Each node keeps one TCP connection to the coordinator (with TLS, the
// frames travel inside it, after the handshake). Frames are proto frames
// (proto.WriteFrame / proto.ReadFrame) whose payloads are JSON
// and at most proto.MaxControlPayload bytes; the Sender field carries the
// node id (NodeID; 0 until the node has its book; SchedulerID from the
// coordinator).
//
//	node -> coordinator
//	  OpRegister   Registration. Must be the first frame; anything else, a
//	               bad frame or a bad registration gets OpError and a close.
//	  OpHeartbeat  every HeartbeatInterval, from registration on.
//	  OpBarrier    Key = Group, Round = this node's count of barriers on that
//	               group (from 1), ReqID = request id.
//	  OpLeave      clean departure; the coordinator acknowledges by closing.
//	coordinator -> node
//	  OpBook       bookMsg {self, book, heartbeat_timeout_ns}, to everyone at
//	               once when NumWorkers workers and NumServers servers have
//	               registered.
//	  OpHeartbeat  every check tick (HeartbeatTimeout/4); a member that hears
//	               nothing for HeartbeatTimeout declares the coordinator lost.
//	  OpBarrierOK  Key, Round and ReqID echo the barrier request.
//	  OpError      ReqID != 0: that barrier failed, payload says why (e.g. a
//	               group member died). ReqID == 0: the connection is being
//	               closed, payload says why (refused registration, protocol
//	               error, heartbeat timeout).
//	  OpNodeDead   NodeEvent, to every other live node.
//	  OpNodeLeft   NodeEvent (Left), to every other live node, when a worker
//	               leaves while other workers are still active: they fail
//	               the rounds that need its pushes instead of waiting.
//	  OpShutdown   to the servers, once every worker has left or died.
//
// Ranks: servers at the rank they ask for (Registration.WorkerID, from
// GOBPS_SERVER_ID) or by arrival (lowest free rank); workers with WorkerID >= 0
// at WorkerID*LocalSize+LocalRank, the others at the lowest free rank (so
// mixing the two can collide, and the later registration is refused). A
// server that registers an unspecified host (":4321", "0.0.0.0:4321") is
// listed under the host it registered from. Registrations after the book is
// complete are refused: elastic membership is later work. A node that goes
// away before the book is complete gives its rank back.
//
// Death: after the book, a node whose connection closes without OpLeave, that
// sends a bad frame, whose send queue backs up, or that is silent for
// HeartbeatTimeout is dead. Detection takes at most HeartbeatTimeout plus one
// tick for silence, and one event-loop turn for a closed connection. Every
// other live node gets OpNodeDead; barriers waiting on the dead node's groups
// fail naming it, and so does every later barrier on those groups (a dead
// node never comes back until elastic membership exists). Run keeps serving
// the rest and finally returns an error naming every dead node.
//
// # Locking and goroutines
//
// Coordinator: Run's goroutine owns all job state (peers, rank slots,
// barriers, the dead list) and is the only one to touch it, so there is no
// lock on it; per connection a reader goroutine forwards frames to it over an
// unbuffered channel (heartbeats only refresh an atomic timestamp) and a
// writer goroutine drains a bounded queue the loop fills without blocking.
// Coordinator.mu guards only the started/closed flags. Run returns after
// every goroutine it started has exited.
//
// Member: a reader goroutine handles incoming frames and a heartbeat
// goroutine writes heartbeats; writes are serialised by Member.wmu, and
// Member.mu guards the end state and pending barriers. end is the one place
// the membership stops (first caller wins): it closes the connection, fails
// pending barriers and closes Done. Leave returns after both goroutines
// exited; a membership that ends otherwise stops its goroutines by itself.
package cluster
