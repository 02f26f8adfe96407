package rdma

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
)

// Driver is a transport implementation that Open can choose. The
// implementation packages (rdma/tcp, rdma/verbs) register theirs from
// init, so a program that calls Open imports the ones it may use; rdma
// itself cannot import them, as they import it.
type Driver struct {
	// Name is the transport's name, as in Caps.Name ("tcp", "verbs").
	Name string
	// RDMA says the transport needs an RDMA device: Open tries those
	// first (unless ModeOff), ModeForce requires one, and the others are
	// the fallback.
	RDMA bool
	// Preference orders drivers of the same kind: higher first.
	Preference int
	// Open returns a transport with opt and a sentence naming what it uses
	// ("using verbs on rxe0 port 1 (RoCE v2, ...)"); or that sentence
	// saying why it cannot be used ("no RDMA devices in
	// /sys/class/infiniband") and an error.
	Open func(opt Options) (Transport, string, error)
}

var registry struct {
	sync.Mutex
	drivers []Driver
}

// Register makes d available to Open. It panics when d has no name or no
// Open function, or its name is taken: a programming error, found at init.
func Register(d Driver) {
	if d.Name == "" || d.Open == nil {
		panic("rdma: Register of a driver without a name or an Open function")
	}
	registry.Lock()
	defer registry.Unlock()
	for _, o := range registry.drivers {
		if o.Name == d.Name {
			panic("rdma: Register called twice for driver " + d.Name)
		}
	}
	registry.drivers = append(registry.drivers, d)
}

// Drivers returns the registered drivers in the order Open tries them:
// RDMA drivers first, then by preference, highest first.
func Drivers() []Driver {
	registry.Lock()
	ds := slices.Clone(registry.drivers)
	registry.Unlock()
	slices.SortStableFunc(ds, func(a, b Driver) int {
		switch {
		case a.RDMA != b.RDMA:
			if a.RDMA {
				return -1
			}
			return 1
		case a.Preference != b.Preference:
			return b.Preference - a.Preference
		}
		return strings.Compare(a.Name, b.Name)
	})
	return ds
}

// Open chooses the transport for this process and says why, in a sentence
// the caller logs once: an RDMA transport (verbs) when a device with an
// active port can be used ("using verbs on rxe0 port 1 (RoCE v2, ...)"),
// TCP otherwise, with the reason RDMA cannot be used ("no RDMA devices in
// /sys/class/infiniband; using TCP"). With ModeForce the same reason is an
// error instead; with ModeOff it is TCP without looking.
//
// Open chooses among the registered drivers (Register): the caller imports
// rdma/tcp and rdma/verbs. A missing driver is an error that says which
// package to import.
func Open(opt Options) (Transport, string, error) {
	return OpenWith(opt, Drivers())
}

// OpenWith is Open over the given drivers, in the order given (tests).
func OpenWith(opt Options, drivers []Driver) (Transport, string, error) {
	var fast, plain []Driver
	for _, d := range drivers {
		if d.RDMA {
			fast = append(fast, d)
		} else {
			plain = append(plain, d)
		}
	}
	switch opt.Mode {
	case ModeOff:
		return openPlain(opt, plain, "RDMA disabled by BYTEPS_ENABLE_RDMA=0")
	case "", ModeAuto, ModeForce:
	default:
		return nil, "", fmt.Errorf("rdma: unknown mode %q", opt.Mode)
	}
	var whyNot []string
	for _, d := range fast {
		tr, why, err := d.Open(opt)
		if err == nil {
			return tr, why, nil
		}
		whyNot = append(whyNot, why)
	}
	why := strings.Join(whyNot, "; ")
	if len(fast) == 0 {
		why = "no RDMA transport in this program (it must import github.com/gobps/gobps/rdma/verbs)"
	}
	if opt.Mode == ModeForce {
		return nil, why, fmt.Errorf("rdma: RDMA is required (BYTEPS_ENABLE_RDMA=1 or DMLC_ENABLE_RDMA=ibverbs) but cannot be used: %s", why)
	}
	return openPlain(opt, plain, why)
}

// openPlain opens the first of the drivers that need no RDMA device,
// saying why ("...; using TCP").
func openPlain(opt Options, plain []Driver, why string) (Transport, string, error) {
	if len(plain) == 0 {
		return nil, why, errors.New("rdma: " + why + ", and no TCP transport in this program (it must import github.com/gobps/gobps/rdma/tcp)")
	}
	d := plain[0]
	tr, dwhy, err := d.Open(opt)
	if err != nil {
		return nil, why + "; " + dwhy, fmt.Errorf("rdma: %s: %w", d.Name, err)
	}
	return tr, why + "; using " + strings.ToUpper(d.Name), nil
}
