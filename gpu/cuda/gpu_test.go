//go:build cgo && linux

package cuda

// The real-GPU tests. They need a CUDA device and driver and skip, saying
// why, everywhere else; `make test-gpu` runs them. They have never run in
// this project's CI, which has no GPU.

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"math"
	"sync"
	"testing"
	"time"

	"github.com/gobps/gobps/gpu"
)

// openOrSkip opens device 0 or skips the test.
func openOrSkip(t *testing.T) *Device {
	t.Helper()
	dev, err := Open(0)
	if err != nil {
		t.Skipf("no usable GPU, skipping the real-GPU test: %v", err)
	}
	t.Cleanup(func() {
		if err := dev.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	t.Logf("device 0: %s", dev.Name())
	return dev.(*Device)
}

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func malloc(t *testing.T, d *Device, n int) gpu.DevPtr {
	t.Helper()
	p, err := d.Malloc(n)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := d.Free(p); err != nil {
			t.Errorf("Free: %v", err)
		}
	})
	return p
}

func hostBuf(t *testing.T, d *Device, n int) gpu.HostBuffer {
	t.Helper()
	hb, err := d.AllocHost(n)
	if err != nil {
		t.Logf("pinning failed (%v); using pageable memory", err)
		if hb, err = gpu.AllocPageable(n); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		if err := hb.Free(); err != nil {
			t.Errorf("host Free: %v", err)
		}
	})
	return hb
}

// TestGPUCopiesAndEvents: a round trip through device memory on two streams
// ordered by an event.
func TestGPUCopiesAndEvents(t *testing.T) {
	d := openOrSkip(t)
	const n = 8 << 20
	p := malloc(t, d, n)
	src, dst := hostBuf(t, d, n), hostBuf(t, d, n)
	for i := range src.Bytes() {
		src.Bytes()[i] = byte(i * 31)
	}
	up, err := d.NewStream(gpu.PriorityHigh)
	if err != nil {
		t.Fatal(err)
	}
	defer up.Close()
	down, err := d.NewStream(gpu.PriorityDefault)
	if err != nil {
		t.Fatal(err)
	}
	defer down.Close()
	uploaded, err := d.NewEvent()
	if err != nil {
		t.Fatal(err)
	}
	defer uploaded.Close()
	copied, _ := d.NewEvent()
	defer copied.Close()

	if done, err := copied.Query(); !done || err != nil {
		t.Fatalf("never-recorded event: Query = %v, %v", done, err)
	}
	for _, err := range []error{
		up.CopyHtoD(p, src.Bytes()),
		up.Record(uploaded),
		down.WaitEvent(uploaded),
		down.CopyDtoH(dst.Bytes(), p),
		down.Record(copied),
	} {
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := copied.Synchronize(ctxT(t, 30*time.Second)); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(src.Bytes(), dst.Bytes()) {
		t.Fatal("round trip through device memory changed the bytes")
	}
	if err := up.Synchronize(ctxT(t, 30*time.Second)); err != nil {
		t.Fatal(err)
	}
}

// TestGPUErrorsCarryDriverText: a failed call reports the driver's name and
// description of the error.
func TestGPUErrorsCarryDriverText(t *testing.T) {
	d := openOrSkip(t)
	err := d.Free(gpu.DevPtr(0x1234)) // not an allocation: CUDA_ERROR_INVALID_VALUE, not sticky
	var e *Error
	if !errors.As(err, &e) || e.Name == "" || e.Desc == "" || e.Code == 0 {
		t.Fatalf("Free of a bogus pointer = %v: want a *cuda.Error with the driver's text", err)
	}
	t.Logf("driver error: %v", err)
	if _, err := Open(1 << 20); err == nil {
		t.Fatal("Open of a nonexistent ordinal succeeded")
	}
}

// TestGPUStager runs the Stager against real device memory: gradients
// written on a "framework" stream, staged, doubled on the host, written
// back.
func TestGPUStager(t *testing.T) {
	d := openOrSkip(t)
	pool, err := gpu.NewPool(gpu.PoolOptions{Pinned: d.AllocHost, Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	st, err := gpu.NewStager(d, pool, gpu.StagerOptions{})
	if err != nil {
		t.Fatal(err)
	}
	fw, err := d.NewStream(gpu.PriorityDefault) // stands for the framework's stream
	if err != nil {
		t.Fatal(err)
	}
	defer fw.Close()
	foreign, err := d.ForeignStream(uintptr(fw.(*stream).h))
	if err != nil {
		t.Fatal(err)
	}

	sizes := []int{1, 1000, 1 << 20, 3<<20 + 5}
	type tensor struct {
		ptr  gpu.DevPtr
		grad gpu.HostBuffer
	}
	ts := make([]tensor, len(sizes))
	for i, n := range sizes {
		if err := pool.Grow(4 * n); err != nil {
			t.Fatal(err)
		}
		ts[i].ptr = malloc(t, d, 4*n)
		ts[i].grad = hostBuf(t, d, 4*n)
		g := ts[i].grad.Bytes()
		for k := range n {
			binary.LittleEndian.PutUint32(g[4*k:], math.Float32bits(float32(i+k%1000)))
		}
		// "Backprop" writes the gradient on the framework stream; Begin
		// follows at once, without waiting for it.
		if err := fw.CopyHtoD(ts[i].ptr, g); err != nil {
			t.Fatal(err)
		}
	}
	var wg sync.WaitGroup
	for i, n := range sizes {
		staged, err := st.Begin(ts[i].ptr, 4*n, foreign)
		if err != nil {
			t.Fatal(err)
		}
		wg.Go(func() {
			err := staged.Run(ctxT(t, 60*time.Second), ts[i].ptr, func(host []byte) error {
				if !bytes.Equal(host, ts[i].grad.Bytes()) {
					t.Errorf("tensor %d: staged bytes differ from the gradient", i)
				}
				for k := 0; k < len(host); k += 4 {
					v := math.Float32frombits(binary.LittleEndian.Uint32(host[k:]))
					binary.LittleEndian.PutUint32(host[k:], math.Float32bits(2*v))
				}
				return nil
			})
			if err != nil {
				t.Errorf("tensor %d: %v", i, err)
			}
		})
	}
	wg.Wait()
	if err := st.Close(ctxT(t, 30*time.Second)); err != nil {
		t.Fatal(err)
	}
	check, err := d.NewStream(gpu.PriorityDefault)
	if err != nil {
		t.Fatal(err)
	}
	defer check.Close()
	for i, n := range sizes {
		out := hostBuf(t, d, 4*n)
		if err := check.CopyDtoH(out.Bytes(), ts[i].ptr); err != nil {
			t.Fatal(err)
		}
		if err := check.Synchronize(ctxT(t, 30*time.Second)); err != nil {
			t.Fatal(err)
		}
		for k := range n {
			got := math.Float32frombits(binary.LittleEndian.Uint32(out.Bytes()[4*k:]))
			if want := 2 * float32(i+k%1000); got != want {
				t.Fatalf("tensor %d element %d = %v, want %v", i, k, got, want)
			}
		}
	}
	if pool.Outstanding() != 0 {
		t.Fatalf("%d staging buffers leaked", pool.Outstanding())
	}
	t.Logf("pool: %+v", pool.Stats())
}
