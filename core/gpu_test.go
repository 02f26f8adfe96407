package core

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/gobps/gobps/gpu"
	"github.com/gobps/gobps/gpu/fake"
	"github.com/gobps/gobps/proto"
)

// TestPushPullDeviceFake runs GPU tensors through the whole pipeline on the
// fake device: backprop writes each gradient late on the framework's
// stream, copies are delayed at random, and every result read back from
// device memory must be the exact sum. With local aggregation too.
func TestPushPullDeviceFake(t *testing.T) {
	for _, agg := range []string{"0", "1"} {
		t.Run("local aggregation "+agg, func(t *testing.T) {
			tc := startCluster(t, 3, 2, fakeGPU, "300us", "GOBPS_LOCAL_AGGREGATION", agg)
			const rounds = 4
			sizes := []int{1, 1000, 5000, 20000} // int32 elements; 8 KiB partitions
			tc.each(t, func(rank int, e *Engine) error {
				d, err := e.GPUDevice(0)
				if err != nil {
					return err
				}
				dev := d.(*fake.Device)
				fw := dev.NewFrameworkStream()
				defer fw.Close()
				rng := rand.New(rand.NewPCG(uint64(rank), 1))
				var ts []*Tensor
				var ptrs []gpu.DevPtr
				for i, n := range sizes {
					tt, err := e.Declare(fmt.Sprintf("g%d", i), proto.Int32, n)
					if err != nil {
						return err
					}
					p, err := dev.Malloc(4 * n)
					if err != nil {
						return err
					}
					ts, ptrs = append(ts, tt), append(ptrs, p)
				}
				for r := 0; r < rounds; r++ {
					var hs []*Handle
					for i, n := range sizes {
						// Backprop's kernel writes the gradient after a
						// while; PushPullDevice is called right away, as
						// a hook would, and must copy only after it.
						g := make([]byte, 4*n)
						for j := 0; j < n; j++ {
							binary.LittleEndian.PutUint32(g[4*j:], uint32(int32(rank*j+r+i)))
						}
						if err := fw.WriteAfter(time.Duration(rng.IntN(500))*time.Microsecond, ptrs[i], g); err != nil {
							return err
						}
						h, err := e.PushPullDevice(ts[i], 0, uintptr(ptrs[i]), fw.Handle(), Sum)
						if err != nil {
							return err
						}
						hs = append(hs, h)
					}
					for i, h := range hs {
						if err := h.WaitTimeout(30 * time.Second); err != nil {
							return err
						}
						n := sizes[i]
						got := make([]byte, 4*n)
						if err := dev.Read(ptrs[i], got); err != nil {
							return err
						}
						for j := 0; j < n; j++ {
							want := int32((0+1+2)*j + 3*(r+i))
							if v := int32(binary.LittleEndian.Uint32(got[4*j:])); v != want {
								return fmt.Errorf("rank %d round %d tensor %d element %d: %d, want %d", rank, r, i, j, v, want)
							}
						}
					}
				}
				if live := e.gpu.devs[0].stager.Live(); live != 0 {
					return fmt.Errorf("%d staged gradients still live", live)
				}
				if out := e.gpu.devs[0].pool.Outstanding(); out != 0 {
					return fmt.Errorf("%d staging buffers not returned", out)
				}
				return nil
			})
		})
	}
}

// TestPushPullDeviceErrors: bad device calls fail with clear errors, and
// without a CUDA driver (this machine) the real path says so.
func TestPushPullDeviceErrors(t *testing.T) {
	tc := startCluster(t, 1, 1)
	e := tc.engines[0]
	tt, err := e.Declare("x", proto.Float32, 4)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.PushPullDevice(tt, 0, 0, 0, Sum); err == nil {
		t.Error("a nil device pointer was accepted")
	}
	if _, err := e.PushPullDevice(tt, -1, 0x1000, 0, Sum); err == nil {
		t.Error("device -1 was accepted")
	}
	if _, err := e.GPUDevice(0); err == nil {
		t.Skip("a CUDA driver is present: the no-driver path cannot be checked here")
	} else if !errors.Is(err, gpu.ErrNotSupported) {
		t.Errorf("without libcuda.so.1: %v, want ErrNotSupported", err)
	} else {
		t.Log(err)
	}
	var nilEngine *Engine
	if _, err := nilEngine.PushPullDevice(tt, 0, 0x1000, 0, Sum); !errors.Is(err, ErrNotInitialized) {
		t.Errorf("nil engine: %v", err)
	}
}

// TestPushPullDeviceOff: GOBPS_GPU=off refuses device tensors.
func TestPushPullDeviceOff(t *testing.T) {
	tc := startCluster(t, 1, 1, "GOBPS_GPU", "off")
	if _, err := tc.engines[0].GPUDevice(0); err == nil || !errors.Is(err, gpu.ErrNotSupported) {
		t.Fatalf("GOBPS_GPU=off: %v", err)
	}
}

// TestPushPullCopy: the staged variants give the same results as the
// direct ones, leave the caller's buffer alone until completion, and reuse
// one engine-owned buffer per tensor (so verbs registers it once).
func TestPushPullCopy(t *testing.T) {
	tc := startCluster(t, 2, 1)
	tc.each(t, func(rank int, e *Engine) error {
		x, err := e.Declare("x", proto.Int32, 3000)
		if err != nil {
			return err
		}
		b, err := e.DeclareBroadcast("b", proto.Int32, 5, 1)
		if err != nil {
			return err
		}
		for r := 0; r < 4; r++ {
			buf := make([]byte, 4*3000)
			for i := 0; i < 3000; i++ {
				binary.LittleEndian.PutUint32(buf[4*i:], uint32(int32(rank*i+r)))
			}
			h, err := e.PushPullCopy(x, buf, Sum)
			if err != nil {
				return err
			}
			bb := make([]byte, 20)
			for i := 0; i < 5; i++ {
				binary.LittleEndian.PutUint32(bb[4*i:], uint32(int32(rank*100+i+r)))
			}
			hb, err := e.BroadcastCopy(b, bb)
			if err != nil {
				return err
			}
			if err := h.WaitTimeout(20 * time.Second); err != nil {
				return err
			}
			if err := hb.WaitTimeout(20 * time.Second); err != nil {
				return err
			}
			for i := 0; i < 3000; i++ {
				if v := int32(binary.LittleEndian.Uint32(buf[4*i:])); v != int32(i+2*r) {
					return fmt.Errorf("rank %d round %d [%d] = %d, want %d", rank, r, i, v, i+2*r)
				}
			}
			for i := 0; i < 5; i++ {
				if v := int32(binary.LittleEndian.Uint32(bb[4*i:])); v != int32(100+i+r) {
					return fmt.Errorf("rank %d round %d broadcast [%d] = %d", rank, r, i, v)
				}
			}
		}
		e.mu.Lock()
		defer e.mu.Unlock()
		if len(x.staging) != 1 || len(b.staging) != 1 {
			return fmt.Errorf("staging buffers kept: %d and %d, want 1 each", len(x.staging), len(b.staging))
		}
		return nil
	})
	var nilEngine *Engine
	if _, err := nilEngine.PushPullCopy(nil, nil, Sum); !errors.Is(err, ErrNotInitialized) {
		t.Errorf("nil engine: %v", err)
	}
}

// TestPushPullDeviceEngineFails: an engine failure while a GPU tensor's
// copy out is still running fails its handle (and returns its staging
// buffer), rather than completing it with the gradient unreduced.
func TestPushPullDeviceEngineFails(t *testing.T) {
	tc := startCluster(t, 1, 1, fakeGPU, "100ms")
	e := tc.engines[0]
	tt, err := e.Declare("g", proto.Float32, 1024)
	if err != nil {
		t.Fatal(err)
	}
	d, err := e.GPUDevice(0)
	if err != nil {
		t.Fatal(err)
	}
	dev := d.(*fake.Device)
	p, err := dev.Malloc(tt.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	h, err := e.PushPullDevice(tt, 0, uintptr(p), 0, Sum)
	if err != nil {
		t.Fatal(err)
	}
	boom := errors.New("boom")
	e.failAll(boom)
	if err := h.WaitTimeout(10 * time.Second); !errors.Is(err, boom) {
		t.Fatalf("handle of a GPU tensor after the engine failed: %v, want boom", err)
	}
	if out := e.gpu.devs[0].pool.Outstanding(); out != 0 {
		t.Fatalf("%d staging buffers not returned", out)
	}
}
