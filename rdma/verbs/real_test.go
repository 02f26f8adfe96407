package verbs

import (
	"errors"
	"runtime"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/gobps/gobps/rdma"
)

// TestVerbsRealMemlock registers more memory than a lowered RLIMIT_MEMLOCK
// allows on the real device and checks the error names the limit. Root
// (CAP_IPC_LOCK) is exempt from the limit, so the registration runs on a
// thread of its own that drops that capability from its effective set;
// the thread is never reused (the goroutine exits locked to it).
func TestVerbsRealMemlock(t *testing.T) {
	lib := realLib(t)
	var old unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_MEMLOCK, &old); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread goes away with its capabilities
		done <- func() error {
			hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
			var data [2]unix.CapUserData
			if err := unix.Capget(&hdr, &data[0]); err != nil {
				return err
			}
			data[0].Effective &^= 1 << unix.CAP_IPC_LOCK
			if err := unix.Capset(&hdr, &data[0]); err != nil {
				return err
			}
			lim := unix.Rlimit{Cur: 64 << 10, Max: old.Max}
			if err := unix.Setrlimit(unix.RLIMIT_MEMLOCK, &lim); err != nil {
				return err
			}
			defer unix.Setrlimit(unix.RLIMIT_MEMLOCK, &old)
			v, why, err := New(lib, rdma.Options{GIDIndex: -1})
			if err != nil {
				return errors.New(why)
			}
			defer v.Close()
			// What Register did: a registration through the MR cache.
			_, err = v.cache.get(make([]byte, 16<<20))
			if err == nil {
				return errors.New("registering 16 MiB under a 64 KiB RLIMIT_MEMLOCK succeeded")
			}
			t.Logf("as expected: %v", err)
			if !strings.Contains(err.Error(), "RLIMIT_MEMLOCK is 64 KiB") || !strings.Contains(err.Error(), "ibv_reg_mr") {
				return errors.New("the error does not name ibv_reg_mr and the limit: " + err.Error())
			}
			if !errors.Is(err, syscall.ENOMEM) && !errors.Is(err, syscall.EPERM) {
				return errors.New("the error is not ENOMEM or EPERM: " + err.Error())
			}
			return nil
		}()
	}()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
