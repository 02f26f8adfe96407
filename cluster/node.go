package cluster

import (
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/gobps/gobps/proto"
)

// Role is what a process does in the job.
type Role string

// The three roles. RoleScheduler keeps BytePS's name for the coordinator.
const (
	RoleScheduler Role = "scheduler"
	RoleServer    Role = "server"
	RoleWorker    Role = "worker"
)

// wire is the role as node ids carry it (proto.NodeRole), or 0 for an
// unknown role.
func (r Role) wire() proto.NodeRole {
	switch r {
	case RoleScheduler:
		return proto.RoleScheduler
	case RoleServer:
		return proto.RoleServer
	case RoleWorker:
		return proto.RoleWorker
	}
	return 0
}

// NodeID is the id of the node with role r and rank rank (proto.NodeID):
// what the node puts in proto.Header.Sender.
func NodeID(r Role, rank int) uint32 {
	return proto.NodeID(r.wire(), rank)
}

// SchedulerID is the coordinator's node id, the Sender of its frames.
var SchedulerID = NodeID(RoleScheduler, 0)

// SplitNodeID is the inverse of NodeID; ok is false when id names no role.
func SplitNodeID(id uint32) (r Role, rank int, ok bool) {
	pr, rank, ok := proto.SplitNodeID(id)
	if !ok {
		return "", 0, false
	}
	return Role(pr.String()), rank, true
}

// Node is one member of the job as the address book lists it.
type Node struct {
	Role Role   `json:"role"`
	Rank int    `json:"rank"`           // workers: 0..NumWorkers-1; servers: 0..NumServers-1
	ID   uint32 `json:"id"`             // NodeID(Role, Rank)
	Addr string `json:"addr,omitempty"` // servers: the data address workers dial
	Host string `json:"host,omitempty"` // where the node registered from, informational
	PID  int    `json:"pid,omitempty"`  // informational
}

// String names the node for error messages, e.g.
// "server 1 (127.0.0.1:4321, pid 99)" or "worker 0 (pid 12)".
func (n Node) String() string {
	s := string(n.Role) + " " + strconv.Itoa(n.Rank)
	var extra []string
	if n.Addr != "" {
		extra = append(extra, n.Addr)
	}
	if n.PID > 0 {
		extra = append(extra, "pid "+strconv.Itoa(n.PID))
	}
	if len(extra) > 0 {
		s += " (" + strings.Join(extra, ", ") + ")"
	}
	return s
}

// Book is the address book: every member of the job, each list sorted by rank
// (so Workers[i].Rank == i and Servers[i].Rank == i).
type Book struct {
	Workers []Node `json:"workers"`
	Servers []Node `json:"servers"`
}

func (b Book) clone() Book {
	return Book{
		Workers: append([]Node(nil), b.Workers...),
		Servers: append([]Node(nil), b.Servers...),
	}
}

// NodeEvent reports that a node died, or (Left) that a worker left the
// job cleanly while other workers still run.
type NodeEvent struct {
	Node   Node   `json:"node"`
	Reason string `json:"reason"`         // e.g. "connection lost: EOF", "no heartbeat for 5s"
	Left   bool   `json:"left,omitempty"` // a clean departure (OpLeave), not a death
}

func (e NodeEvent) String() string {
	if e.Left {
		return e.Node.String() + " left the job: " + e.Reason
	}
	return e.Node.String() + " died: " + e.Reason
}

// Group selects the members a barrier waits for.
type Group uint8

// Barrier groups.
const (
	Workers Group = 1 << iota
	Servers
	All = Workers | Servers
)

func (g Group) valid() bool { return g >= Workers && g <= All }

// has reports whether nodes of role r belong to g.
func (g Group) has(r Role) bool {
	switch r {
	case RoleWorker:
		return g&Workers != 0
	case RoleServer:
		return g&Servers != 0
	}
	return false
}

func (g Group) String() string {
	switch g {
	case Workers:
		return "workers"
	case Servers:
		return "servers"
	case All:
		return "all"
	}
	return fmt.Sprintf("group(%d)", uint8(g))
}

// Registration is what a node tells the coordinator when it joins; it travels
// as the JSON payload of OpRegister.
type Registration struct {
	Role Role `json:"role"` // RoleServer or RoleWorker
	// WorkerID is BytePS's DMLC_WORKER_ID: -1 lets the coordinator pick the
	// lowest free rank; otherwise the rank is WorkerID*LocalSize+LocalRank.
	// For a server it is the requested server rank (GOBPS_SERVER_ID), or -1
	// for the lowest free one.
	WorkerID  int    `json:"worker_id"`
	LocalRank int    `json:"local_rank"`     // workers: 0..LocalSize-1
	LocalSize int    `json:"local_size"`     // workers: >= 1
	Addr      string `json:"addr,omitempty"` // servers: data address (host:port)
	PID       int    `json:"pid,omitempty"`
}

// check reports whether r is well formed on its own. Servers are placed by
// WorkerID (their requested rank, or -1), so LocalRank and LocalSize are not looked at.
func (r Registration) check() error {
	switch r.Role {
	case RoleServer:
		if r.Addr == "" {
			return fmt.Errorf("a server must give its data address")
		}
		if r.WorkerID < -1 {
			return fmt.Errorf("server rank %d, want -1 (assign by arrival) or >= 0", r.WorkerID)
		}
		_, port, err := net.SplitHostPort(r.Addr)
		if err != nil {
			return fmt.Errorf("server data address %q: %v", r.Addr, err)
		}
		if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
			return fmt.Errorf("server data address %q: port must be a number in 1..65535", r.Addr)
		}
	case RoleWorker:
		if r.LocalSize < 1 {
			return fmt.Errorf("worker local size %d, want >= 1", r.LocalSize)
		}
		if r.LocalRank < 0 || r.LocalRank >= r.LocalSize {
			return fmt.Errorf("worker local rank %d is outside 0..%d", r.LocalRank, r.LocalSize-1)
		}
		if r.WorkerID < -1 {
			return fmt.Errorf("worker id %d, want -1 (assign by arrival) or >= 0", r.WorkerID)
		}
	default:
		return fmt.Errorf("role %q, want %q or %q", r.Role, RoleServer, RoleWorker)
	}
	if r.PID < 0 {
		return fmt.Errorf("pid %d is negative", r.PID)
	}
	return nil
}

// bookMsg is the JSON payload of OpBook: the whole address book, the
// receiver's own entry, and the coordinator's heartbeat timeout, which the
// node uses to pace its heartbeats and to notice a silent coordinator.
type bookMsg struct {
	Self             Node          `json:"self"`
	Book             Book          `json:"book"`
	HeartbeatTimeout time.Duration `json:"heartbeat_timeout_ns"`
}
