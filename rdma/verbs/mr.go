package verbs

import (
	"container/list"
	"errors"
	"fmt"
	"sync"
	"syscall"
	"unsafe"

	"github.com/gobps/gobps/rdma/ibv"
)

// mrCache keeps memory registered between transfers, so that a buffer sent
// from or received into again (a key's buffers, a worker's tensors) is
// registered once and not on every push.
//
// Entries are found by the exact (address, length) of a slice, or failing
// that by a registered region that contains the slice (which is then
// remembered as an alias of that region). An entry in use (refs > 0: a
// posted work request, a Dest buffer awaiting its write, a stable
// destination) is never evicted; the others sit on an LRU list and are
// deregistered, oldest first, when the registered bytes would exceed the
// limit, or all at once when a registration fails for lack of locked memory.
//
// Locking: mu guards everything; registration runs under it (a first-time
// cost; two goroutines registering the same buffer would otherwise both
// register it).
type mrCache struct {
	pd     ibv.PD
	access ibv.Access
	limit  int
	cnt    *counters
	logf   func(string, ...any)

	mu     sync.Mutex
	bytes  int               // registered by entries in the cache
	byKey  map[span]*mrEntry // exact spans and aliases
	all    map[*mrEntry]struct{}
	lru    list.List // of *mrEntry with refs == 0, least recently used first
	closed bool
}

// span is a slice's address and length.
type span struct {
	addr uintptr
	n    int
}

func spanOf(b []byte) span { return span{uintptr(unsafe.Pointer(unsafe.SliceData(b))), len(b)} }

// mrEntry is one registration.
type mrEntry struct {
	buf   []byte // the registered memory (keeps Go memory alive)
	addr  uintptr
	mr    ibv.MR
	refs  int
	keys  []span        // byKey entries naming it
	elem  *list.Element // in lru when refs == 0
	stale bool          // out of the cache: deregister when refs reach 0
}

// sge returns the address the NIC knows b by; b must lie within e.
func (e *mrEntry) sge(b []byte) uint64 {
	return e.mr.Addr() + uint64(uintptr(unsafe.Pointer(unsafe.SliceData(b)))-e.addr)
}

func newMRCache(pd ibv.PD, limit int, cnt *counters, logf func(string, ...any)) *mrCache {
	return &mrCache{
		pd: pd, access: ibv.AccessLocalWrite | ibv.AccessRemoteWrite, limit: limit, cnt: cnt, logf: logf,
		byKey: map[span]*mrEntry{}, all: map[*mrEntry]struct{}{},
	}
}

// get returns the registration holding b, registering b on a miss, and
// takes a reference the caller gives back with put.
func (c *mrCache) get(b []byte) (*mrEntry, error) {
	if len(b) == 0 {
		return nil, errors.New("rdma: register an empty buffer")
	}
	s := spanOf(b)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, errors.New("rdma: transport closed")
	}
	e := c.byKey[s]
	if e == nil {
		for x := range c.all {
			if x.addr <= s.addr && s.addr+uintptr(s.n) <= x.addr+uintptr(len(x.buf)) {
				e = x
				c.byKey[s] = e
				e.keys = append(e.keys, s)
				break
			}
		}
	}
	if e != nil {
		c.cnt.cacheHits.Add(1)
		c.refLocked(e)
		return e, nil
	}
	c.makeRoomLocked(len(b))
	mr, err := c.pd.Register(b, c.access)
	if errors.Is(err, syscall.ENOMEM) && c.lru.Len() > 0 {
		// Out of locked memory: give back every idle registration, retry.
		c.makeRoomLocked(c.limit + len(b))
		mr, err = c.pd.Register(b, c.access)
	}
	if err != nil {
		return nil, fmt.Errorf("rdma: register %d-byte buffer: %w", len(b), err)
	}
	c.cnt.registrations.Add(1)
	e = &mrEntry{buf: b, addr: s.addr, mr: mr, refs: 1, keys: []span{s}}
	c.byKey[s] = e
	c.all[e] = struct{}{}
	c.bytes += len(b)
	if c.bytes > c.limit {
		c.logf("rdma: %d bytes registered and in use, more than the MR cache's bound of %d (GOBPS_RDMA_MR_CACHE_BYTES)", c.bytes, c.limit)
	}
	return e, nil
}

// refLocked takes a reference on e. REQUIRES: c.mu.
func (c *mrCache) refLocked(e *mrEntry) {
	if e.refs == 0 && e.elem != nil {
		c.lru.Remove(e.elem)
		e.elem = nil
	}
	e.refs++
}

// put gives back a reference taken by get.
func (c *mrCache) put(e *mrEntry) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.putLocked(e)
}

func (c *mrCache) putLocked(e *mrEntry) {
	e.refs--
	if e.refs > 0 {
		return
	}
	if e.stale || c.closed {
		c.deregLocked(e)
		return
	}
	e.elem = c.lru.PushBack(e)
	if c.bytes > c.limit {
		c.makeRoomLocked(0)
	}
}

// makeRoomLocked evicts idle entries, oldest first, until n more bytes fit
// under the limit or nothing idle is left. REQUIRES: c.mu.
func (c *mrCache) makeRoomLocked(n int) {
	for c.bytes+n > c.limit && c.lru.Len() > 0 {
		e := c.lru.Remove(c.lru.Front()).(*mrEntry)
		e.elem = nil
		c.forgetLocked(e)
		c.cnt.evictions.Add(1)
		c.deregLocked(e)
	}
}

// forgetLocked takes e out of the lookup maps. REQUIRES: c.mu.
func (c *mrCache) forgetLocked(e *mrEntry) {
	if e.stale {
		return
	}
	e.stale = true
	for _, k := range e.keys {
		if c.byKey[k] == e {
			delete(c.byKey, k)
		}
	}
	e.keys = nil
	delete(c.all, e)
	c.bytes -= len(e.buf)
}

// deregLocked deregisters an entry nobody uses. REQUIRES: c.mu.
func (c *mrCache) deregLocked(e *mrEntry) {
	c.forgetLocked(e)
	if e.mr == nil {
		return
	}
	if err := e.mr.Deregister(); err != nil {
		c.logf("rdma: %v", err)
	}
	e.mr = nil
	e.buf = nil
	c.cnt.deregistrations.Add(1)
}

// close deregisters every idle entry and those still in use as soon as
// they are given back.
func (c *mrCache) close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
	for c.lru.Len() > 0 {
		e := c.lru.Remove(c.lru.Front()).(*mrEntry)
		e.elem = nil
		c.deregLocked(e)
	}
	for e := range c.all {
		c.forgetLocked(e) // in use: deregistered by its last put
	}
}

// registered returns the bytes the cache holds registered (tests).
func (c *mrCache) registered() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.bytes
}
