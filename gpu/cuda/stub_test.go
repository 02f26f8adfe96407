//go:build cgo && linux

package cuda

// Tests of the real binding (dlopen, dlsym, the cgo shims, context
// handling, error text, polling) against testdata/stubcuda.c, a stub
// driver built here as a shared library. The stub runs copies
// synchronously: it checks the plumbing, not GPU semantics (gpu/fake and
// the Stager tests do that), and it is no substitute for a real GPU.

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/gobps/gobps/gpu"
)

var stub struct {
	once sync.Once
	path string
	err  error
}

// openStub builds the stub driver once per process, loads it and opens its
// device, or skips when there is no C compiler.
func openStub(t *testing.T) *Device {
	t.Helper()
	stub.once.Do(func() {
		cc, err := exec.LookPath("gcc")
		if err != nil {
			if cc, err = exec.LookPath("cc"); err != nil {
				stub.err = err
				return
			}
		}
		dir, err := os.MkdirTemp("", "gobps-stubcuda")
		if err != nil {
			stub.err = err
			return
		}
		stub.path = filepath.Join(dir, "libcuda.so.1")
		out, err := exec.Command(cc, "-shared", "-fPIC", "-O1", "-o", stub.path, "testdata/stubcuda.c", "-lpthread").CombinedOutput()
		if err != nil {
			stub.err = errors.New(string(out))
			return
		}
		// Load it now; the file is not needed once mapped.
		if err := load(stub.path); err != nil {
			stub.err = err
		}
		_ = os.RemoveAll(dir)
	})
	if stub.err != nil {
		t.Skipf("cannot build or load the stub CUDA driver: %v", stub.err)
	}
	dev, err := open(stub.path, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := dev.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		if c := counters(t); c.retained != 0 {
			t.Errorf("%d primary context references left after Close", c.retained)
		}
	})
	return dev.(*Device)
}

type stubCounters struct {
	ctxErrors, calls, notReady, registered, streams, events, allocs, retained, ctxLeftCurrent int64
}

func counters(t *testing.T) stubCounters {
	t.Helper()
	s, ok := stubStats()
	if !ok {
		t.Fatal("the loaded driver is not the stub")
	}
	return stubCounters{s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7], s[8]}
}

// checkClean fails t if the stub saw a call without the primary context
// current, a context left current after a call, or leaked resources.
func checkClean(t *testing.T) {
	t.Helper()
	c := counters(t)
	if c.ctxErrors != 0 || c.ctxLeftCurrent != 0 {
		t.Errorf("context handling: %d calls without the context current, %d found one left current", c.ctxErrors, c.ctxLeftCurrent)
	}
	if c.registered != 0 || c.streams != 0 || c.events != 0 || c.allocs != 0 {
		t.Errorf("leaked in the driver: %d registered bytes, %d streams, %d events, %d allocations",
			c.registered, c.streams, c.events, c.allocs)
	}
}

func TestStubDriverBinding(t *testing.T) {
	d := openStub(t)
	if d.Name() != "gobps stub CUDA device" || d.Index() != 0 {
		t.Fatalf("device %d %q", d.Index(), d.Name())
	}
	if _, err := open(stub.path, 1); err == nil {
		t.Fatal("Open of a device the driver does not have succeeded")
	}

	hb, err := d.AllocHost(100)
	if err != nil {
		t.Fatal(err)
	}
	if len(hb.Bytes()) != 100 || !hb.Pinned() {
		t.Fatalf("AllocHost(100): %d bytes, pinned %v", len(hb.Bytes()), hb.Pinned())
	}
	if c := counters(t); c.registered != int64(gpu.PageSize) {
		t.Fatalf("%d bytes registered for AllocHost(100), want one page", c.registered)
	}

	const n = 1 << 16
	src, _ := d.AllocHost(n)
	dst, _ := d.AllocHost(n)
	for i := range src.Bytes() {
		src.Bytes()[i] = byte(i*13 + 1)
	}
	p, err := d.Malloc(n)
	if err != nil {
		t.Fatal(err)
	}
	s, err := d.NewStream(gpu.PriorityHigh)
	if err != nil {
		t.Fatal(err)
	}
	e, _ := d.NewEvent()
	legacy, err := d.ForeignStream(0)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	before := counters(t).notReady
	for _, err := range []error{
		legacy.CopyHtoD(p, src.Bytes()),
		legacy.Record(e),
		s.WaitEvent(e),
		s.CopyDtoH(dst.Bytes(), p),
		s.Record(e),
		e.Synchronize(ctx),
		s.Synchronize(ctx),
		legacy.Close(),
	} {
		if err != nil {
			t.Fatal(err)
		}
	}
	if !bytes.Equal(src.Bytes(), dst.Bytes()) {
		t.Fatal("round trip through the stub driver changed the bytes")
	}
	if c := counters(t); c.notReady <= before {
		t.Fatal("Synchronize did not poll through CUDA_ERROR_NOT_READY")
	}

	err = d.Free(gpu.DevPtr(0x1234))
	const want = "cuda: cuMemFree_v2: CUDA_ERROR_INVALID_VALUE (1): invalid argument"
	var ce *Error
	if !errors.As(err, &ce) || err.Error() != want || errors.Is(err, gpu.ErrNotSupported) {
		t.Fatalf("Free of a bogus pointer = %v, want %q", err, want)
	}
	if err := s.CopyDtoH(dst.Bytes(), gpu.DevPtr(0x1234)); err == nil {
		t.Fatal("copy from a bogus device pointer: no error")
	}

	for _, err := range []error{e.Close(), s.Close(), d.Free(p), hb.Free(), src.Free(), dst.Free()} {
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := hb.Free(); err == nil {
		t.Fatal("double Free of pinned memory: no error")
	}
	if _, err := e.Query(); !errors.Is(err, gpu.ErrClosed) {
		t.Fatalf("Query of a closed event = %v", err)
	}
	if err := s.Record(e); err == nil {
		t.Fatal("Record on a closed stream: no error")
	}
	checkClean(t)
}

// TestStubDriverStager runs the Stager over the real binding from many
// goroutines (so from many OS threads), checking the context handling.
func TestStubDriverStager(t *testing.T) {
	d := openStub(t)
	pool, err := gpu.NewPool(gpu.PoolOptions{Pinned: d.AllocHost})
	if err != nil {
		t.Fatal(err)
	}
	st, err := gpu.NewStager(d, pool, gpu.StagerOptions{})
	if err != nil {
		t.Fatal(err)
	}
	fw, _ := d.ForeignStream(0)
	const tensors, n = 32, 3000
	ptrs := make([]gpu.DevPtr, tensors)
	init, _ := d.AllocHost(n)
	for i := range ptrs {
		if err := pool.Grow(n); err != nil {
			t.Fatal(err)
		}
		if ptrs[i], err = d.Malloc(n); err != nil {
			t.Fatal(err)
		}
		for k := range init.Bytes() {
			init.Bytes()[k] = byte(i + k)
		}
		if err := fw.CopyHtoD(ptrs[i], init.Bytes()); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	for round := range 5 {
		for i, p := range ptrs {
			staged, err := st.Begin(p, n, fw)
			if err != nil {
				t.Fatal(err)
			}
			wg.Go(func() {
				err := staged.Run(ctx, p, func(host []byte) error {
					for k := range host {
						if host[k] != byte(i+k+round) {
							t.Errorf("round %d tensor %d byte %d = %d", round, i, k, host[k])
							break
						}
						host[k]++
					}
					return nil
				})
				if err != nil {
					t.Error(err)
				}
			})
		}
		wg.Wait()
	}
	if err := st.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if pool.Outstanding() != 0 {
		t.Fatalf("%d staging buffers leaked", pool.Outstanding())
	}
	if s := pool.Stats(); s.PageableBytes != 0 {
		t.Fatalf("pool fell back to pageable memory: %+v", s)
	}
	for _, err := range []error{pool.Close(), init.Free(), fw.Close()} {
		if err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range ptrs {
		if err := d.Free(p); err != nil {
			t.Fatal(err)
		}
	}
	checkClean(t)
	t.Logf("stub driver: %+v", counters(t))
}
