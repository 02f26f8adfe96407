package core

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/gobps/gobps/gpu"
	"github.com/gobps/gobps/gpu/cuda"
)

// GPU tensors. A gradient in device memory is staged through a host buffer:
// the device-to-host copy runs on a dedicated high-priority stream after an
// event recorded on the framework's stream (so it never reads a gradient
// before backprop wrote it), the buffer is reduced in place by the
// partition lifecycle, and the result is copied back before the handle
// completes (gpu.Stager): the op's StageIn and StageOut. The device is CUDA
// (gpu/cuda, libcuda.so.1 loaded at run time) or what Options.OpenDevice
// opens (tests: the fake device over host memory).

// GPU modes (GOBPS_GPU).
const (
	gpuAuto = "auto"
	gpuOff  = "off"
)

// gpuDev is one device this worker stages through.
type gpuDev struct {
	dev    gpu.Device
	pool   *gpu.Pool
	stager *gpu.Stager
	grown  map[*Tensor]bool // tensors with a staging buffer in pool; guarded by gpuState.mu
}

type gpuState struct {
	open func(index int) (gpu.Device, error) // Options.OpenDevice; nil: CUDA
	mu   sync.Mutex
	devs map[int]*gpuDev
}

// discoverGPUs logs, once, what NVML sees: the devices, or why there are
// none (then tensors in device memory cannot be used, host tensors can).
func (e *Engine) discoverGPUs() {
	if e.cfg.GPU != gpuAuto || e.gpu.open != nil {
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
// first use: CUDA, or what Options.OpenDevice opens.
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
	var err error
	switch {
	case e.cfg.GPU == gpuOff:
		return nil, fmt.Errorf("gobps: GPU device %d: %w: GPU tensors are turned off (GOBPS_GPU=off)", index, gpu.ErrNotSupported)
	case e.gpu.open != nil:
		dev, err = e.gpu.open(index)
	default:
		dev, err = cuda.Open(index)
	}
	if err != nil {
		return nil, fmt.Errorf("gobps: GPU device %d: %w", index, err)
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
	if err := checkReduce(t, op); err != nil {
		return nil, err
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
	h, err := e.start(t, nil, op, true, &gpuStage{st: st, dst: gpu.DevPtr(ptr), timeout: e.cfg.GPUTimeout})
	if err != nil {
		e.abortStaged(st)
		return nil, err
	}
	return h, nil
}

func (e *Engine) abortStaged(st *gpu.Staged) {
	ctx, cancel := context.WithTimeout(context.Background(), e.cfg.GPUTimeout)
	defer cancel()
	if err := st.Abort(ctx); err != nil {
		e.logf("gobps: abort a staged GPU tensor: %v", err)
	}
}

// gpuStage stages one GPU tensor's round: in waits for the copy out of
// device memory (each device wait bounded by GOBPS_GPU_TIMEOUT, and by
// Shutdown); out copies the result back, or aborts the staging after a
// failure, which returns the staging buffer to the pool.
type gpuStage struct {
	st      *gpu.Staged
	dst     gpu.DevPtr
	timeout time.Duration
}

func (g *gpuStage) buffer() []byte { return nil }
func (g *gpuStage) async() bool    { return true }

func (g *gpuStage) in(ctx context.Context) ([]byte, error) {
	host, err := g.st.Host(ctx)
	if err != nil {
		return nil, fmt.Errorf("copy out of device memory: %w", err)
	}
	return host, nil
}

func (g *gpuStage) out(failed error) error {
	ctx, cancel := context.WithTimeout(context.Background(), g.timeout)
	defer cancel()
	if failed == nil {
		err := g.st.Finish(ctx, g.dst)
		if err == nil {
			return nil
		}
		failed = fmt.Errorf("copy back into device memory: %w", err)
	}
	if aerr := g.st.Abort(ctx); aerr != nil {
		return errors.Join(failed, aerr)
	}
	return failed
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
