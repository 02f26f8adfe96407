package cuda

import (
	"context"
	"runtime"
	"time"
)

// poll calls query until it reports done or fails, or ctx ends. It yields
// for the first few tries (a copy of a few MiB takes a few hundred µs) and
// then sleeps, doubling from 10µs up to 200µs. gobps polls cuEventQuery and
// cuStreamQuery rather than calling cuEventSynchronize or
// cuStreamSynchronize, which block an OS thread in the driver with no way
// out: on a wedged device a poll returns when ctx ends.
func poll(ctx context.Context, query func() (bool, error)) error {
	const spins = 32
	sleep := 10 * time.Microsecond
	var t *time.Timer
	for i := 0; ; i++ {
		if done, err := query(); err != nil || done {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if i < spins {
			runtime.Gosched()
			continue
		}
		if t == nil {
			t = time.NewTimer(sleep)
			defer t.Stop()
		} else {
			t.Reset(sleep)
		}
		select {
		case <-t.C:
		case <-ctx.Done():
			return ctx.Err()
		}
		sleep = min(2*sleep, 200*time.Microsecond)
	}
}
