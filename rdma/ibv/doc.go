// Package ibv is gobps's binding to RDMA verbs (libibverbs), shaped for the
// transport in package rdma, plus an in-process emulation of the same API.
//
// # The real binding
//
// Load opens libibverbs.so.1 with dlopen at run time and looks up, with
// dlsym, every exported function it calls (ibv_get_device_list,
// ibv_open_device, ibv_query_port, ibv_reg_mr, ibv_create_qp, ...), the way
// go-nvml loads NVML: the binary links only -ldl, starts on machines without
// the library, and Load then returns an error wrapping ErrNotSupported with
// dlerror's text. ibv_query_port and ibv_reg_mr are macros over exported
// symbols in verbs.h; the binding looks up the symbols. The data-path calls
// (ibv_post_send, ibv_post_recv, ibv_poll_cq, ibv_req_notify_cq) are static
// inline functions that jump through the provider's context->ops; they live
// in small C shims compiled against Debian's libibverbs-dev headers and need
// no symbol. No exported ibv_* symbol is referenced directly: a test reads
// this package's own test binary and fails if one is left undefined.
//
// Memory handed to Register is Go memory the NIC reads and writes: the MR
// pins it (runtime.Pinner) until Deregister, and only its address, as an
// integer, ever reaches C. Work requests carry addresses and keys, never Go
// pointers. A completion channel's fd is non-blocking, and CompChannel.Wait
// waits on a duplicate of it through Go's netpoller (no OS thread per
// waiting goroutine), with a timeout so that the waiter can always notice it
// should stop.
//
// Built with CGO_ENABLED=0 or -tags noverbs (for machines without the
// headers), the package has no real binding: Built is false and Load
// returns an error wrapping ErrNotSupported.
//
// # The emulation
//
// Emulator implements Library in pure Go: queue pairs in one process
// connected by QP number, with the semantics of reliable-connected verbs that
// the transport depends on (see Emulator). The transport runs on it
// unchanged, so its protocol is tested by go test on any machine.
//
// # What was tested where
//
// The emulation and everything above it run in go test everywhere. The real
// binding is exercised by rdma's TestVerbsReal* tests, which need a usable
// device: on the development machines that means Soft-RoCE (rdma_rxe on lo)
// inside a QEMU guest (scripts/rdma_qemu.sh). It has not been run on a real
// RDMA NIC.
package ibv
