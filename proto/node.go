package proto

import "fmt"

// NodeRole is a node's role as its node id encodes it. The cluster package
// names the roles for people and JSON ("scheduler", "server", "worker");
// on the wire a role is this byte, and this file is the one place that
// encodes and decodes it.
type NodeRole uint8

// The roles a node id can carry.
const (
	RoleScheduler NodeRole = 1 // the coordinator
	RoleServer    NodeRole = 2
	RoleWorker    NodeRole = 3
)

func (r NodeRole) String() string {
	switch r {
	case RoleScheduler:
		return "scheduler"
	case RoleServer:
		return "server"
	case RoleWorker:
		return "worker"
	}
	return fmt.Sprintf("role(%d)", uint8(r))
}

// MaxRank bounds ranks, which a node id holds in its low 24 bits.
const MaxRank = 1<<24 - 1

// NodeID is the id of the node with role r and rank rank, what the node
// puts in Header.Sender: the role in the top byte and the rank in the low
// 24 bits (scheduler 1, server 2, worker 3; so worker 5 is 0x03000005).
func NodeID(r NodeRole, rank int) uint32 {
	return uint32(r)<<24 | uint32(rank)&MaxRank
}

// SplitNodeID is the inverse of NodeID; ok is false when id names no role.
func SplitNodeID(id uint32) (r NodeRole, rank int, ok bool) {
	r = NodeRole(id >> 24)
	switch r {
	case RoleScheduler, RoleServer, RoleWorker:
		return r, int(id & MaxRank), true
	}
	return 0, 0, false
}
