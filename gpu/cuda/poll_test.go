package cuda

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/gobps/gobps/gpu"
)

func TestPoll(t *testing.T) {
	n := 0
	if err := poll(context.Background(), func() (bool, error) { n++; return n == 100, nil }); err != nil || n != 100 {
		t.Fatalf("poll = %v after %d queries, want nil after 100", err, n)
	}
	boom := errors.New("boom")
	if err := poll(context.Background(), func() (bool, error) { return false, boom }); err != boom {
		t.Fatalf("poll = %v, want the query's error", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	start := time.Now()
	err := poll(ctx, func() (bool, error) { return false, nil })
	if !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > 5*time.Second {
		t.Fatalf("poll on a wedged query = %v after %v, want deadline exceeded promptly", err, time.Since(start))
	}
}

func TestErrorIs(t *testing.T) {
	for _, c := range []struct {
		code int
		want bool
	}{
		{codeNoDevice, true}, {codeInsufficientDriver, true}, {codeStubLibrary, true},
		{codeInvalidValue, false}, {codeNotReady, false},
	} {
		e := &Error{Op: "cuInit", Code: c.code, Name: "X", Desc: "y"}
		if got := errors.Is(e, gpu.ErrNotSupported); got != c.want {
			t.Errorf("code %d: errors.Is(ErrNotSupported) = %v, want %v", c.code, got, c.want)
		}
	}
	e := &Error{Op: "cuMemFree_v2", Code: 1, Name: "CUDA_ERROR_INVALID_VALUE", Desc: "invalid argument"}
	if got, want := e.Error(), "cuda: cuMemFree_v2: CUDA_ERROR_INVALID_VALUE (1): invalid argument"; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
}
