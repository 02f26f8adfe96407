package local

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/gobps/gobps/proto"
)

// stallWatch times one Reduce's wait for the other ranks' contributions
// (Config.StallWarning, StallShutdown): the local counterpart of the
// servers' stall watch, for the rounds that never reach a server because
// a rank of this machine has not contributed.
type stallWatch struct {
	cfg    Config
	start  time.Time
	warned bool
}

func newStallWatch(cfg Config) *stallWatch { return &stallWatch{cfg: cfg, start: time.Now()} }

// wait runs w (a waitLocked on s, holding g.mu) with a deadline at the
// next stall threshold; at each it reports the ranks whose contribution
// to round is missing and goes on waiting, or, past StallShutdown, aborts
// the group with the report. REQUIRES: g.mu, held again on return.
func (sw *stallWatch) wait(ctx context.Context, s *Segment, round uint64, w func(context.Context) error) error {
	for {
		next := sw.next()
		if next.IsZero() {
			return w(ctx)
		}
		wctx, cancel := context.WithDeadline(ctx, next)
		err := w(wctx)
		cancel()
		if err == nil || ctx.Err() != nil || !errors.Is(err, context.DeadlineExceeded) {
			return err
		}
		fatal := sw.cfg.StallShutdown > 0 && !time.Now().Before(sw.start.Add(sw.cfg.StallShutdown))
		sw.warned = true
		g := s.g
		var missing []Rank
		for q, c := range s.contribs {
			if c <= round {
				missing = append(missing, Rank{Rank: q, PID: g.PID(q)})
			}
		}
		waited := time.Since(sw.start)
		g.mu.Unlock()
		text := sw.report(s, round, missing, waited, fatal)
		if fatal {
			g.Abort(errors.New(text))
		} else {
			g.logf("%s", text)
		}
		g.mu.Lock()
	}
}

// next is when the wait is next to be looked at: the warning, then the
// shutdown; zero when neither is left.
func (sw *stallWatch) next() time.Time {
	w, d := sw.cfg.StallWarning, sw.cfg.StallShutdown
	if w > 0 && !sw.warned && (d == 0 || w < d) {
		return sw.start.Add(w)
	}
	if d > 0 {
		return sw.start.Add(d)
	}
	return time.Time{}
}

func (sw *stallWatch) report(s *Segment, round uint64, missing []Rank, waited time.Duration, fatal bool) string {
	if sw.cfg.Stalled != nil {
		return sw.cfg.Stalled(s.key, round, missing, waited, fatal)
	}
	return fmt.Sprintf("local stall: key %s round %d has waited %v for local rank(s) %v to contribute", s.key, round, waited.Round(10*time.Millisecond), missing)
}

// watchLaggards watches the keys this rank owns for rounds that the other
// ranks have contributed to and this rank has not even begun (its training
// loop skipped the tensor): the ranks waiting for its Publish cannot tell
// that from a slow round, but the owner can. It reports itself as for a
// stalled Reduce, and past StallShutdown aborts the group with that
// report. It ends when the group fails or closes.
func (g *Group) watchLaggards() {
	defer g.readers.Done()
	every := min(nonZero(g.cfg.StallWarning), nonZero(g.cfg.StallShutdown))
	t := time.NewTicker(min(max(every/4, time.Millisecond), time.Second))
	defer t.Stop()
	type lag struct {
		round  uint64
		since  time.Time
		warned bool
	}
	lags := map[*Segment]*lag{}
	undeclared := map[proto.Key]*lag{}
	for {
		select {
		case <-g.failed:
			return
		case now := <-t.C:
			type report struct {
				s      *Segment
				round  uint64
				waited time.Duration
				fatal  bool
			}
			var reports []report
			g.mu.Lock()
			for _, s := range g.mu.order {
				if s.owner != g.cfg.Rank {
					continue
				}
				mine := s.contribs[g.cfg.Rank]
				if slices.Max(s.contribs) <= mine {
					delete(lags, s)
					continue
				}
				l := lags[s]
				if l == nil || l.round != mine {
					lags[s] = &lag{round: mine, since: now}
					continue
				}
				waited := now.Sub(l.since)
				fatal := g.cfg.StallShutdown > 0 && waited >= g.cfg.StallShutdown
				if fatal || (!l.warned && g.cfg.StallWarning > 0 && waited >= g.cfg.StallWarning) {
					l.warned = true
					reports = append(reports, report{s, mine, waited, fatal})
				}
			}
			// Contributions to keys this rank never declared: it has not
			// even begun that tensor.
			for k, es := range g.mu.early {
				if len(es) == 0 {
					continue
				}
				key := proto.Key(k)
				l := undeclared[key]
				if l == nil {
					undeclared[key] = &lag{round: es[0].f.round, since: now}
					continue
				}
				waited := now.Sub(l.since)
				fatal := g.cfg.StallShutdown > 0 && waited >= g.cfg.StallShutdown
				if fatal || (!l.warned && g.cfg.StallWarning > 0 && waited >= g.cfg.StallWarning) {
					l.warned = true
					reports = append(reports, report{&Segment{g: g, key: key}, l.round, waited, fatal})
				}
			}
			for key := range undeclared {
				if len(g.mu.early[uint64(key)]) == 0 {
					delete(undeclared, key)
				}
			}
			g.mu.Unlock()
			for _, r := range reports {
				me := []Rank{{Rank: g.cfg.Rank, PID: g.PID(g.cfg.Rank)}}
				sw := &stallWatch{cfg: g.cfg}
				text := sw.report(r.s, r.round, me, r.waited, r.fatal)
				if r.fatal {
					g.Abort(errors.New(text))
					return
				}
				g.logf("%s", text)
			}
		}
	}
}

func nonZero(d time.Duration) time.Duration {
	if d <= 0 {
		return 1<<63 - 1
	}
	return d
}
