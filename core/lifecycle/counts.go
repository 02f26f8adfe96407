package lifecycle

import "slices"

// Counts are what a machine has done so far, for metrics: cumulative
// counters kept as plain integers under whatever lock guards the machine,
// so that counting costs the data path nothing but an addition.
type Counts struct {
	// Servers are the per-partition counts, by server.
	Servers []ServerCounts
	// OpsCompleted and OpsFailed count the ops (handles) that completed
	// without an error and with one.
	OpsCompleted, OpsFailed uint64
	// BytesCompleted is the tensor bytes of the ops completed without an
	// error, whichever way their sums came (servers or shared memory).
	BytesCompleted uint64
}

// ServerCounts are the partitions a machine exchanged with one server.
type ServerCounts struct {
	// Pushes and PushBytes count the pushes whose Send returned without
	// an error, and their payload bytes.
	Pushes, PushBytes uint64
	// Pulls counts the pull requests (a broadcast receiver's, which push
	// nothing) whose Send returned without an error.
	Pulls uint64
	// Answers counts the answers wholly received (every piece in), and
	// AnswerBytes the bytes of answers received, piece by piece.
	Answers, AnswerBytes uint64
	// Failed counts the partitions that finished with an error (its
	// abandoned siblings included).
	Failed uint64
}

// Counts returns a copy of the machine's counters.
func (m *Machine) Counts() Counts {
	c := m.counts
	c.Servers = slices.Clone(m.counts.Servers)
	return c
}

// completed counts op's completion.
func (m *Machine) completed(op *Op) {
	if op.err != nil {
		m.counts.OpsFailed++
	} else {
		m.counts.OpsCompleted++
		for _, p := range op.Spec.Parts {
			m.counts.BytesCompleted += uint64(p.Len)
		}
	}
}
