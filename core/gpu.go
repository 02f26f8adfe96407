package core

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/gobps/gobps/gpu"
	"github.com/gobps/gobps/gpu/cuda"
	"github.com/gobps/gobps/gpu/fake"
)

// GPU tensors. A gradient in device memory is staged through a host buffer:
// the device-to-host copy runs on a dedicated high-priority stream after an
// event recorded on the framework's stream (so it never reads a gradient
// before backprop wrote it), the buffer is reduced in place by PushPull,
// and the result is copied back before the handle completes (gpu.Stager).
// The device is CUDA (gpu/cuda, libcuda.so.1 loaded at run time) or, with
// GOBPS_GPU=fake, the fake device over host memory that the tests use.

// GPU modes (GOBPS_GPU).
const (
	gpuAuto = "auto"
	gpuOff  = "off"
	gpuFake = "fake"
)

// gpuDev is one device this worker stages through.
type gpuDev struct {
	dev    gpu.Device
	pool   *gpu.Pool
	stager *gpu.Stager
	grown  map[*Tensor]bool // tensors with a staging buffer in pool; guarded by gpuState.mu
}

type gpuState struct {
	mu   sync.Mutex
	devs map[int]*gpuDev
	said bool // the discovery notice was logged
}

// discoverGPUs logs, once, what NVML sees: the devices, or why there are
// none (then tensors in device memory cannot be used, host tensors can).
func (e *Engine) discoverGPUs() {
	if e.cfg.GPU != gpuAuto {
		if e.cfg.GPU == gpuFake {
			e.logf("gpu: GOBPS_GPU=fake: device tensors use the fake device over host memory (for tests)")
		}
		return
	}
	infos, err := gpu.Discover()
	if err != nil {
		e.logf("gpu: %v; host mode (CPU tensors only)", err)
		return
	}
	for _, in := range infos {
		e.logf("gpu %d: %s, %d MiB, PCI %s, NUMA node %d", in.Index, in.Name, in.MemoryBytes>>20, in.PCIBusID, in.NUMANode)
	}
}

// GPUDevice returns device index as this worker uses it, opening it on
// first use: CUDA, or the fake device with GOBPS_GPU=fake (tests reach
// its test helpers through a type assertion to *fake.Device).
func (e *Engine) GPUDevice(index int) (gpu.Device, error) {
	d, err := e.gpuDevice(index)
	if err != nil {
		return nil, err
	}
	return d.dev, nil
}

func (e *Engine) gpuDevice(index int) (*gpuDev, error) {
	if e == nil {
		return nil, ErrNotInitialized
	}
	if index < 0 {
		return nil, fmt.Errorf("gobps: GPU device %d: index must be at least 0", index)
	}
	e.gpu.mu.Lock()
	defer e.gpu.mu.Unlock()
	if d := e.gpu.devs[index]; d != nil {
		return d, nil
	}
	var dev gpu.Device
	switch e.cfg.GPU {
	case gpuOff:
		return nil, fmt.Errorf("gobps: GPU device %d: %w: GPU tensors are turned off (GOBPS_GPU=off)", index, gpu.ErrNotSupported)
	case gpuFake:
		dev = fake.New(fake.Options{
			Index: index, CopyDelay: e.cfg.GPUFakeDelay, MaxJitter: e.cfg.GPUFakeDelay,
			Seed: uint64(e.Rank())<<8 | uint64(index),
		})
	default:
		var err error
		if dev, err = cuda.Open(index); err != nil {
			return nil, fmt.Errorf("gobps: GPU device %d: %w", index, err)
		}
	}
	pool, err := gpu.NewPool(gpu.PoolOptions{Pinned: dev.AllocHost, Logf: e.logf})
	if err != nil {
		dev.Close()
		return nil, fmt.Errorf("gobps: GPU device %d: %w", index, err)
	}
	st, err := gpu.NewStager(dev, pool, gpu.StagerOptions{Timeout: e.cfg.GPUTimeout})
	if err != nil {
		pool.Close()
		dev.Close()
		return nil, fmt.Errorf("gobps: GPU device %d: %w", index, err)
	}
	d := &gpuDev{dev: dev, pool: pool, stager: st, grown: map[*Tensor]bool{}}
	if e.gpu.devs == nil {
		e.gpu.devs = map[int]*gpuDev{}
	}
	e.gpu.devs[index] = d
	return d, nil
}

// PushPullDevice is PushPull for a tensor in GPU memory: the t.Bytes()
// bytes at ptr on device dev. stream is the framework's CUDA stream whose
// queued work writes the gradient (0 for the default stream): the copy out
// waits for that work, the framework does not. The handle completes once
// the result is back in device memory. Each GPU tensor gets its own pinned
// staging buffer, allocated on first use and kept (as BytePS does).
func (e *Engine) PushPullDevice(t *Tensor, dev int, ptr, stream uintptr, op ReduceOp) (*Handle, error) {
	if e == nil {
		return nil, ErrNotInitialized
	}
	if t == nil {
		return nil, errors.New("gobps: PushPullDevice of a nil tensor")
	}
	if ptr == 0 {
		return nil, fmt.Errorf("gobps: %q: device pointer is 0", t.name)
	}
	e.mu.Lock()
	err := e.startableLocked(t)
	e.mu.Unlock()
	if err != nil {
		return nil, err
	}
	d, err := e.gpuDevice(dev)
	if err != nil {
		return nil, err
	}
	e.gpu.mu.Lock()
	if !d.grown[t] {
		if err := d.pool.Grow(t.nbytes); err != nil {
			e.gpu.mu.Unlock()
			return nil, fmt.Errorf("gobps: %q: staging buffer: %w", t.name, err)
		}
		d.grown[t] = true
	}
	e.gpu.mu.Unlock()
	fw, err := d.dev.ForeignStream(stream)
	if err != nil {
		return nil, fmt.Errorf("gobps: %q: framework stream %#x: %w", t.name, stream, err)
	}
	st, err := d.stager.Begin(gpu.DevPtr(ptr), t.nbytes, fw)
	if err != nil {
		return nil, fmt.Errorf("gobps: %q: %w", t.name, err)
	}
	h := newHandle(t.name, 1)
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		h.partDone(e.runStaged(t, st, gpu.DevPtr(ptr), op))
	}()
	return h, nil
}

// runStaged is one GPU tensor's round after Begin: wait for the copy out,
// push and pull in the staging buffer, copy the result back. Each device
// wait is bounded by GOBPS_GPU_TIMEOUT and by Shutdown; the PushPull in
// between ends with the job's own failures.
func (e *Engine) runStaged(t *Tensor, st *gpu.Staged, dst gpu.DevPtr, op ReduceOp) error {
	ctx := e.ctx
	err := func() error {
		hctx, hcancel := context.WithTimeout(ctx, e.cfg.GPUTimeout)
		host, err := st.Host(hctx)
		hcancel()
		if err != nil {
			return fmt.Errorf("copy out of device memory: %w", err)
		}
		inner, err := e.PushPull(t, host, op)
		if err != nil {
			return err
		}
		// The staging buffer goes back to the pool after Finish or Abort,
		// so wait for the handle itself; Shutdown and failures end it.
		if err := inner.cause(); err != nil {
			return err
		}
		fctx, fcancel := context.WithTimeout(ctx, e.cfg.GPUTimeout)
		defer fcancel()
		if err := st.Finish(fctx, dst); err != nil {
			return fmt.Errorf("copy back into device memory: %w", err)
		}
		return nil
	}()
	if err != nil {
		actx, acancel := context.WithTimeout(context.Background(), e.cfg.GPUTimeout)
		defer acancel()
		if aerr := st.Abort(actx); aerr != nil {
			err = errors.Join(err, aerr)
		}
	}
	return err
}

// closeGPUs releases the devices once nothing stages any more.
func (e *Engine) closeGPUs() {
	e.gpu.mu.Lock()
	defer e.gpu.mu.Unlock()
	for i, d := range e.gpu.devs {
		ctx, cancel := context.WithTimeout(context.Background(), e.cfg.GPUTimeout)
		err := errors.Join(d.stager.Close(ctx), d.pool.Close(), d.dev.Close())
		cancel()
		if err != nil {
			e.logf("gobps: release GPU device %d: %v", i, err)
		}
		delete(e.gpu.devs, i)
	}
}
