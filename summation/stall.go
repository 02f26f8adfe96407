package summation

import (
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/gobps/gobps/proto"
)

// The stall watch (GOBPS_STALL_WARNING, GOBPS_STALL_SHUTDOWN): a round
// that has begun (some pushes are in) and has seen no new push on its key
// for StallWarning is reported, once per round: which workers have not
// pushed which tensors, grouped by the workers missing. The server logs
// it and tells the workers that are waiting (a notice, which they log);
// after StallShutdown the notice is fatal to every connected worker, so
// that the job ends with the report instead of hanging for ever. A key
// that is merely idle (every begun round complete: the job is between
// steps, evaluating, checkpointing) is never reported.

// stall is one key's answer to the watch (taskStall).
type stall struct {
	key     *key
	round   uint64
	missing []int // worker ranks whose push the round waits for
	waiting bool  // a begun round waits for pushes
	new     bool  // not reported before
	idle    time.Duration
}

// watchStalls checks every key each tick until the server closes.
func (s *Server) watchStalls() {
	defer s.wg.Done()
	every := s.cfg.StallWarning
	if every == 0 || (s.cfg.StallShutdown > 0 && s.cfg.StallShutdown < every) {
		every = s.cfg.StallShutdown
	}
	t := time.NewTicker(min(max(every/4, time.Millisecond), time.Second))
	defer t.Stop()
	type seen struct {
		progress uint64
		since    time.Time
	}
	last := map[*key]seen{}
	for {
		select {
		case <-s.done:
			return
		case now := <-t.C:
			s.mu.RLock()
			keys := make([]*key, 0, len(s.mu.keys))
			for _, k := range s.mu.keys {
				keys = append(keys, k)
			}
			s.mu.RUnlock()
			var suspects []*key
			idle := map[*key]time.Duration{}
			for _, k := range keys {
				p := k.progress.Load()
				l, ok := last[k]
				if !ok || l.progress != p {
					last[k] = seen{p, now}
					continue
				}
				if d := now.Sub(l.since); d >= min(nonZero(s.cfg.StallWarning), nonZero(s.cfg.StallShutdown)) {
					suspects = append(suspects, k)
					idle[k] = d
				}
			}
			if len(suspects) > 0 {
				s.reportStalls(suspects, idle)
			}
		}
	}
}

func nonZero(d time.Duration) time.Duration {
	if d == 0 {
		return 1<<63 - 1
	}
	return d
}

// reportStalls asks each suspect's engine whether a round of it waits for
// pushes, and reports those that do.
func (s *Server) reportStalls(suspects []*key, idle map[*key]time.Duration) {
	reply := make(chan stall, len(suspects))
	for _, k := range suspects {
		k.engine.submit(task{kind: taskStall, key: k, reply: reply})
	}
	var stalls []stall
	timeout := time.After(5 * time.Second)
	for range suspects {
		select {
		case st := <-reply:
			if st.waiting {
				st.idle = idle[st.key]
				stalls = append(stalls, st)
			}
		case <-timeout:
			return // engines busy: next tick
		case <-s.done:
			return
		}
	}
	if len(stalls) == 0 {
		return
	}
	fatal := false
	var longest time.Duration
	anyNew := false
	for _, st := range stalls {
		longest = max(longest, st.idle)
		anyNew = anyNew || st.new
	}
	if s.cfg.StallShutdown > 0 && longest >= s.cfg.StallShutdown {
		if s.stallFatal.Swap(true) {
			return // said, once
		}
		fatal = true
	} else if !anyNew || s.cfg.StallWarning == 0 || longest < s.cfg.StallWarning {
		return
	}
	text := stallReport(stalls, longest)
	if fatal {
		text += fmt.Sprintf(" (GOBPS_STALL_SHUTDOWN %v: ending the job)", s.cfg.StallShutdown)
	} else {
		text += " (GOBPS_STALL_SHUTDOWN ends the job instead)"
	}
	s.cfg.Logf("summation: %s", text)
	if s.cfg.OnStall != nil {
		s.cfg.OnStall(text)
	}
	// Tell the workers: those waiting (fatal: everyone connected).
	missing := map[int]bool{}
	for _, st := range stalls {
		for _, w := range st.missing {
			missing[w] = true
		}
	}
	s.mu.RLock()
	var to []*peer
	told := map[int]bool{}
	for _, p := range s.mu.peers {
		w := int(p.worker.Load())
		if w < 0 || told[w] || (!fatal && missing[w]) {
			continue
		}
		told[w] = true
		to = append(to, p)
	}
	s.mu.RUnlock()
	for _, p := range to {
		h := proto.Header{Op: proto.OpError, Sender: s.id.Load()}
		if fatal {
			h.Flags = proto.FlagFatal
		}
		p.out.send(h, []byte(text), nil)
	}
}

// stallReport says which workers have not pushed which tensors, grouped
// by the workers missing, at most 8 tensors named per group.
func stallReport(stalls []stall, longest time.Duration) string {
	groups := map[string][]stall{}
	var order []string
	for _, st := range stalls {
		k := fmt.Sprint(st.missing)
		if _, ok := groups[k]; !ok {
			order = append(order, k)
		}
		groups[k] = append(groups[k], st)
	}
	sort.Strings(order)
	var parts []string
	for _, g := range order {
		sts := groups[g]
		slices.SortFunc(sts, func(a, b stall) int { return strings.Compare(a.key.decl.Name, b.key.decl.Name) })
		var names []string
		for i, st := range sts {
			if i == 8 {
				names = append(names, fmt.Sprintf("and %d more", len(sts)-8))
				break
			}
			names = append(names, fmt.Sprintf("%s (key %s) round %d", st.key.decl.Tensor(), st.key.decl.Key, st.round))
		}
		parts = append(parts, fmt.Sprintf("worker(s) %s have not pushed %s", g, strings.Join(names, ", ")))
	}
	prec := time.Second
	if longest < 10*time.Second {
		prec = 10 * time.Millisecond
	}
	return fmt.Sprintf("stall: %d round(s) have waited up to %v without a push: %s; every worker must push_pull the same tensors each step",
		len(stalls), longest.Round(prec), strings.Join(parts, "; "))
}
