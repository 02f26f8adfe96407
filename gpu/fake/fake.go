package fake

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"time"
	"unsafe"

	"github.com/gobps/gobps/gpu"
)

// Options configures a fake device.
type Options struct {
	// Index and Name are what the device reports (Name defaults to
	// "gobps fake GPU").
	Index int
	Name  string
	// Every copy sleeps CopyDelay plus a random duration in [0, MaxJitter)
	// before it moves any byte, on its stream's goroutine. The random
	// durations come from a generator seeded with Seed, so a failing
	// schedule can be replayed (up to goroutine scheduling).
	CopyDelay time.Duration
	MaxJitter time.Duration
	Seed      uint64
	// MemlockBytes limits the pinned host memory AllocHost hands out in
	// total, like RLIMIT_MEMLOCK: 0 means no limit, a negative value makes
	// every AllocHost fail.
	MemlockBytes int
}

// ErrMemlock is returned by AllocHost beyond Options.MemlockBytes.
var ErrMemlock = errors.New("fake: cannot lock host memory: memlock limit reached")

// devBase is the first fake device address: far from any host address Go
// or mmap hands out here, so that a host pointer passed as a DevPtr fails.
const devBase gpu.DevPtr = 0xd000_0000_0000

// devAlign is the alignment of device allocations (cudaMalloc gives 256 B
// at least; more spreads allocations apart so overruns hit no neighbour).
const devAlign = 1 << 16

// Device is a fake GPU over host memory; it implements gpu.Device. Device
// memory is anonymous mapped memory behind fake DevPtr addresses; streams
// are queues run in order by one goroutine each; events complete when their
// stream reaches them. Copies run after an optional random delay and poison
// their destination (gpu.Poison) when enqueued, so reading it before the
// copy's event completed shows NaNs; InFlight reports the host memory
// pending copies use.
//
// Locking: all methods are safe for concurrent use.
type Device struct {
	opt  Options
	quit chan struct{} // closed by Close: every stream goroutine stops
	wg   sync.WaitGroup

	mu struct {
		sync.Mutex
		rng      *rand.Rand
		allocs   []*alloc // sorted by base
		next     gpu.DevPtr
		streams  map[uintptr]*Stream // by handle
		handle   uintptr
		pinned   int
		inflight map[*op]struct{}
		copyErr  error
		closed   bool
		held     []gpu.HostBuffer // device memory mappings, freed at Close
	}
	def *Stream // the legacy default stream, handle 0
}

type alloc struct {
	base gpu.DevPtr
	mem  []byte // mapped; unmapped at Close
	free bool
}

var _ gpu.Device = (*Device)(nil)

// New creates a fake device. Close it to stop its goroutines.
func New(opt Options) *Device {
	if opt.Name == "" {
		opt.Name = "gobps fake GPU"
	}
	d := &Device{opt: opt, quit: make(chan struct{})}
	d.mu.rng = rand.New(rand.NewPCG(opt.Seed, opt.Seed^0x9e3779b97f4a7c15))
	d.mu.next = devBase
	d.mu.streams = map[uintptr]*Stream{}
	d.mu.inflight = map[*op]struct{}{}
	d.def = d.newStream(gpu.PriorityDefault)
	return d
}

// Index implements gpu.Device.
func (d *Device) Index() int { return d.opt.Index }

// Name implements gpu.Device.
func (d *Device) Name() string { return d.opt.Name }

// AllocHost implements gpu.Device: "pinned" memory (mapped, outside the Go
// heap), subject to Options.MemlockBytes.
func (d *Device) AllocHost(n int) (gpu.HostBuffer, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.mu.closed {
		return nil, gpu.ErrClosed
	}
	if lim := d.opt.MemlockBytes; lim < 0 || (lim > 0 && d.mu.pinned+n > lim) {
		return nil, fmt.Errorf("%w (%d bytes locked, %d more asked, limit %d)", ErrMemlock, d.mu.pinned, n, lim)
	}
	hb, err := gpu.AllocPageable(n)
	if err != nil {
		return nil, err
	}
	d.mu.pinned += n
	return &pinned{HostBuffer: hb, d: d, n: n}, nil
}

// pinned is a HostBuffer that counts against the memlock limit.
type pinned struct {
	gpu.HostBuffer
	d *Device
	n int
}

// Pinned implements gpu.HostBuffer.
func (p *pinned) Pinned() bool { return true }

// Free implements gpu.HostBuffer and gives the bytes back to the memlock budget.
func (p *pinned) Free() error {
	if err := p.HostBuffer.Free(); err != nil {
		return err
	}
	p.d.mu.Lock()
	p.d.mu.pinned -= p.n
	p.d.mu.Unlock()
	return nil
}

// PinnedBytes is the pinned host memory allocated and not yet freed.
func (d *Device) PinnedBytes() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.mu.pinned
}

// NewStream implements gpu.Device.
func (d *Device) NewStream(p gpu.Priority) (gpu.Stream, error) {
	d.mu.Lock()
	closed := d.mu.closed
	d.mu.Unlock()
	if closed {
		return nil, gpu.ErrClosed
	}
	return d.newStream(p), nil
}

// NewFrameworkStream creates a stream standing for the framework's own
// (PyTorch's current stream): tests enqueue simulated kernels on it with
// Launch and WriteAfter, and pass its Handle to ForeignStream as the
// framework would. Close it when done.
func (d *Device) NewFrameworkStream() *Stream {
	return d.newStream(gpu.PriorityDefault)
}

// ForeignStream implements gpu.Device: handle 0 is the default stream, any
// other must be the Handle of a live stream of this device. Closing the
// returned wrapper leaves the stream alone.
func (d *Device) ForeignStream(handle uintptr) (gpu.Stream, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.mu.closed {
		return nil, gpu.ErrClosed
	}
	if handle == 0 {
		return foreign{d.def}, nil
	}
	s, ok := d.mu.streams[handle]
	if !ok {
		return nil, fmt.Errorf("fake: no stream with handle %#x", handle)
	}
	return foreign{s}, nil
}

// foreign is a borrowed stream: Close does nothing.
type foreign struct{ *Stream }

// Close implements gpu.Stream: a borrowed stream is not closed.
func (foreign) Close() error { return nil }

// NewEvent implements gpu.Device.
func (d *Device) NewEvent() (gpu.Event, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.mu.closed {
		return nil, gpu.ErrClosed
	}
	return &Event{d: d}, nil
}

// Malloc allocates n bytes of device memory, filled with gpu.Poison (real
// device memory starts with whatever was there).
func (d *Device) Malloc(n int) (gpu.DevPtr, error) {
	if n <= 0 {
		return 0, fmt.Errorf("fake: malloc %d bytes: size must be positive", n)
	}
	hb, err := gpu.AllocPageable(n)
	if err != nil {
		return 0, err
	}
	mem := hb.Bytes()
	fill(mem, gpu.Poison)
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.mu.closed {
		_ = hb.Free()
		return 0, gpu.ErrClosed
	}
	a := &alloc{base: d.mu.next, mem: mem}
	d.mu.next += gpu.DevPtr((n + devAlign - 1) / devAlign * devAlign)
	d.mu.allocs = append(d.mu.allocs, a) // addresses only grow: stays sorted
	// The mapping is released at Close, not Free: a copy may hold the slice.
	d.mu.held = append(d.mu.held, hb)
	return a.base, nil
}

// Free releases device memory allocated by Malloc. Later copies touching it
// fail; its mapping is released at Close.
func (d *Device) Free(p gpu.DevPtr) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	a := d.findLocked(p)
	if a == nil || a.base != p {
		return fmt.Errorf("fake: free of %#x: not an allocation", uintptr(p))
	}
	a.free = true
	return nil
}

// findLocked returns the live allocation containing p, or nil.
//
// REQUIRES: d.mu.
func (d *Device) findLocked(p gpu.DevPtr) *alloc {
	i, found := slices.BinarySearchFunc(d.mu.allocs, p, func(a *alloc, p gpu.DevPtr) int {
		switch {
		case a.base > p:
			return 1
		case a.base+gpu.DevPtr(len(a.mem)) <= p:
			return -1
		}
		return 0
	})
	if !found || d.mu.allocs[i].free {
		return nil
	}
	return d.mu.allocs[i]
}

// deviceMem returns the device bytes [p, p+n) or an error like CUDA's
// CUDA_ERROR_INVALID_VALUE.
func (d *Device) deviceMem(p gpu.DevPtr, n int) ([]byte, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	a := d.findLocked(p)
	if a == nil {
		return nil, fmt.Errorf("fake: %#x is not device memory of this device", uintptr(p))
	}
	off := int(p - a.base)
	if n > len(a.mem)-off {
		return nil, fmt.Errorf("fake: %d bytes at %#x run past the end of a %d-byte allocation", n, uintptr(p), len(a.mem))
	}
	return a.mem[off : off+n], nil
}

// Write copies b to device memory at p at once, outside any stream (like a
// synchronous cuMemcpyHtoD on an idle device): for test setup.
func (d *Device) Write(p gpu.DevPtr, b []byte) error {
	m, err := d.deviceMem(p, len(b))
	if err != nil {
		return err
	}
	copy(m, b)
	return nil
}

// Read copies device memory at p into b at once, outside any stream: for
// checking results after the streams are synchronized.
func (d *Device) Read(p gpu.DevPtr, b []byte) error {
	m, err := d.deviceMem(p, len(b))
	if err != nil {
		return err
	}
	copy(b, m)
	return nil
}

// InjectCopyError makes the next copy enqueued on any stream of this device
// fail with err (wrapped), without being queued.
func (d *Device) InjectCopyError(err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.mu.copyErr = err
}

// InFlight reports whether a copy that has been enqueued and has not
// completed reads or writes any byte of b. The engine must never touch
// staging memory for which this is true.
func (d *Device) InFlight(b []byte) bool {
	if len(b) == 0 {
		return false
	}
	lo := uintptr(unsafe.Pointer(unsafe.SliceData(b)))
	hi := lo + uintptr(len(b))
	d.mu.Lock()
	defer d.mu.Unlock()
	for o := range d.mu.inflight {
		olo := uintptr(unsafe.Pointer(unsafe.SliceData(o.host)))
		ohi := olo + uintptr(len(o.host))
		if olo < hi && lo < ohi {
			return true
		}
	}
	return false
}

// delay draws one copy's delay.
func (d *Device) delay() time.Duration {
	t := d.opt.CopyDelay
	if d.opt.MaxJitter > 0 {
		d.mu.Lock()
		t += time.Duration(d.mu.rng.Int64N(int64(d.opt.MaxJitter)))
		d.mu.Unlock()
	}
	return t
}

// Close stops every stream (work still queued is dropped; events not yet
// reached never complete, and waiting on them returns gpu.ErrClosed),
// waits for the stream goroutines to exit and releases device memory.
func (d *Device) Close() error {
	d.mu.Lock()
	if d.mu.closed {
		d.mu.Unlock()
		return nil
	}
	d.mu.closed = true
	d.mu.Unlock()
	close(d.quit)
	d.wg.Wait()
	d.mu.Lock()
	defer d.mu.Unlock()
	var errs []error
	for _, hb := range d.mu.held {
		errs = append(errs, hb.Free())
	}
	d.mu.held = nil
	d.mu.allocs = nil
	return errors.Join(errs...)
}

func fill(b []byte, v byte) {
	for i := range b {
		b[i] = v
	}
}
