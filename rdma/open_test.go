package rdma

import (
	"context"
	"errors"
	"strings"
	"testing"
)

// fakeTransport is a Transport that only has a name.
type fakeTransport struct{ name string }

func (f *fakeTransport) Caps() Caps                               { return Caps{Name: f.name} }
func (f *fakeTransport) Listen(string, Handler) (Listener, error) { return nil, errors.New("fake") }
func (f *fakeTransport) Dial(context.Context, string, uint32, Handler) (Conn, error) {
	return nil, errors.New("fake")
}
func (f *fakeTransport) Counters() Counters { return Counters{} }
func (f *fakeTransport) Close() error       { return nil }

func works(name string, rdma bool, pref int) Driver {
	return Driver{Name: name, RDMA: rdma, Preference: pref, Open: func(Options) (Transport, string, error) {
		why := ""
		if rdma {
			why = "using " + name + " on dev0"
		}
		return &fakeTransport{name}, why, nil
	}}
}

func fails(name, why string) Driver {
	return Driver{Name: name, RDMA: true, Open: func(Options) (Transport, string, error) {
		return nil, why, errors.New(why)
	}}
}

// TestOpenWith checks Open's choice among drivers: RDMA ones first, the
// others as the fallback with the reason, ModeForce and ModeOff, and a
// clear error (not a panic) when a driver is missing.
func TestOpenWith(t *testing.T) {
	tcp := works("tcp", false, 0)
	tests := []struct {
		desc     string
		mode     Mode
		drivers  []Driver
		name     string // chosen; "" for an error
		contains string // in the reason, or in the error
	}{
		{"rdma usable", ModeAuto, []Driver{works("verbs", true, 1), tcp}, "verbs", "using verbs on dev0"},
		{"rdma fails", ModeAuto, []Driver{fails("verbs", "no devices"), tcp}, "tcp", "no devices; using TCP"},
		{"first rdma fails, second works", "", []Driver{fails("verbs", "no devices"), works("ucx", true, 0), tcp}, "ucx", "using ucx"},
		{"forced, rdma fails", ModeForce, []Driver{fails("verbs", "no devices"), tcp}, "", "RDMA is required (BYTEPS_ENABLE_RDMA=1 or DMLC_ENABLE_RDMA=ibverbs) but cannot be used: no devices"},
		{"off", ModeOff, []Driver{works("verbs", true, 1), tcp}, "tcp", "RDMA disabled by BYTEPS_ENABLE_RDMA=0; using TCP"},
		{"no rdma driver", ModeAuto, []Driver{tcp}, "tcp", "no RDMA transport in this program (it must import github.com/gobps/gobps/rdma/verbs); using TCP"},
		{"forced, no rdma driver", ModeForce, []Driver{tcp}, "", "it must import github.com/gobps/gobps/rdma/verbs"},
		{"no tcp driver", ModeAuto, []Driver{fails("verbs", "no devices")}, "", "no devices, and no TCP transport in this program (it must import github.com/gobps/gobps/rdma/tcp)"},
		{"no drivers at all", ModeAuto, nil, "", "it must import github.com/gobps/gobps/rdma/tcp"},
		{"off, no tcp driver", ModeOff, []Driver{works("verbs", true, 1)}, "", "it must import github.com/gobps/gobps/rdma/tcp"},
		{"unknown mode", "sometimes", []Driver{tcp}, "", `unknown mode "sometimes"`},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			tr, why, err := OpenWith(Options{Mode: tt.mode}, tt.drivers)
			t.Logf("reason: %s; error: %v", why, err)
			if tt.name == "" {
				if err == nil || tr != nil || !strings.Contains(err.Error(), tt.contains) {
					t.Fatalf("got %v, %v; want an error saying %q", tr, err, tt.contains)
				}
				return
			}
			if err != nil || tr.Caps().Name != tt.name || !strings.Contains(why, tt.contains) {
				t.Fatalf("got %v (%q), %v; want %s saying %q", tr, why, err, tt.name, tt.contains)
			}
		})
	}
}

// TestDriversOrder: RDMA drivers first, then by preference.
func TestDriversOrder(t *testing.T) {
	saved := registry.drivers
	defer func() { registry.drivers = saved }()
	registry.drivers = nil
	Register(works("tcp", false, 0))
	Register(works("slow", true, 0))
	Register(works("fast", true, 5))
	Register(works("other", false, 3))
	var names []string
	for _, d := range Drivers() {
		names = append(names, d.Name)
	}
	if got := strings.Join(names, " "); got != "fast slow other tcp" {
		t.Fatalf("order %q", got)
	}
	defer func() {
		if recover() == nil {
			t.Fatal("registering a name twice did not panic")
		}
	}()
	Register(works("tcp", false, 0))
}
