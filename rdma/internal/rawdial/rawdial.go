// Package rawdial lets the transports' shared tests (package rdma_test)
// open a connection that breaks the protocol on purpose, which the
// contract does not allow: one that sends no hello, so that frames reach
// the listener before any hello does. Each implementation registers its
// dialer from init (rdma/tcp, rdma/verbs); nothing but tests looks it up,
// and only code under rdma can import the package.
package rawdial

import (
	"context"
	"sync"

	"github.com/gobps/gobps/rdma"
)

// Func dials addr on tr, as tr.Dial does, but sends no hello.
type Func func(ctx context.Context, tr rdma.Transport, addr string, h rdma.Handler) (rdma.Conn, error)

var dialers sync.Map // transport name → Func

// Register makes f the dialer without hello of the transport named name.
func Register(name string, f Func) { dialers.Store(name, f) }

// Lookup returns the dialer without hello of tr's implementation, or nil.
func Lookup(tr rdma.Transport) Func {
	f, _ := dialers.Load(tr.Caps().Name)
	fn, _ := f.(Func)
	return fn
}
