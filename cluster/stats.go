package cluster

import "sync/atomic"

// CoordinatorStats are the coordinator's counts of the job's nodes, for
// monitoring: how many of each role are active now (have the address book
// and have neither left nor died), and how many died or left so far. Ranks
// are active only once every node has registered (the book is complete).
type CoordinatorStats struct {
	Workers, Servers                   int // active now
	ExpectedWorkers, ExpectedServers   int // CoordinatorConfig.NumWorkers, NumServers
	WorkerDeaths, ServerDeaths         uint64
	WorkerDepartures, ServerDepartures uint64 // left the job in order (a worker's end of training included)
}

// coordinatorStats are counted by the coordinator's loop and read by
// Stats from any goroutine.
type coordinatorStats struct {
	active     [2]atomic.Int64 // by statIndex
	deaths     [2]atomic.Uint64
	departures [2]atomic.Uint64
}

func statIndex(r Role) int {
	if r == RoleServer {
		return 1
	}
	return 0
}

// Stats returns the coordinator's counts now. Safe for concurrent use, at
// any time.
func (c *Coordinator) Stats() CoordinatorStats {
	s := &c.stats
	return CoordinatorStats{
		Workers: int(s.active[0].Load()), Servers: int(s.active[1].Load()),
		ExpectedWorkers: c.cfg.NumWorkers, ExpectedServers: c.cfg.NumServers,
		WorkerDeaths: s.deaths[0].Load(), ServerDeaths: s.deaths[1].Load(),
		WorkerDepartures: s.departures[0].Load(), ServerDepartures: s.departures[1].Load(),
	}
}
