//go:build cgo

package nvml

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock"
)

// TestDiscoverHere runs the real Discover: without NVML (this project's CI)
// it must fail cleanly with ErrNotSupported; with a GPU it must list it.
func TestDiscoverHere(t *testing.T) {
	infos, err := Discover()
	if err != nil {
		if !errors.Is(err, ErrNotSupported) || !strings.Contains(err.Error(), "NVML") {
			t.Fatalf("Discover = %v: want an error wrapping ErrNotSupported that names NVML", err)
		}
		if infos != nil {
			t.Fatalf("Discover returned devices with an error: %v", infos)
		}
		t.Logf("no NVML here, as expected on a machine without a GPU: %v", err)
		return
	}
	for _, in := range infos {
		if in.Name == "" || in.MemoryBytes == 0 || in.PCIBusID == "" {
			t.Errorf("incomplete device info %+v", in)
		}
	}
	t.Logf("NVML found %d devices: %+v", len(infos), infos)
}

// mockMachine is an 8-GPU machine in the shape of a DGX H100, built from
// go-nvml's generated mocks (pkg/nvml/mock; its dgxh100 package would pull
// in another dependency).
func mockMachine(t *testing.T, hasNUMA bool) *mock.Interface {
	devs := make([]nvml.Device, 8)
	for i := range devs {
		bus := []string{"00000000:18:00.0", "00000000:1B:00.0"}[i%2]
		devs[i] = &mock.Device{
			GetNameFunc: func() (string, nvml.Return) { return "NVIDIA H100 80GB HBM3", nvml.SUCCESS },
			GetMemoryInfoFunc: func() (nvml.Memory, nvml.Return) {
				return nvml.Memory{Total: 80 << 30}, nvml.SUCCESS
			},
			GetPciInfoFunc: func() (nvml.PciInfo, nvml.Return) {
				var p nvml.PciInfo
				for j := range bus {
					p.BusId[j] = int8(bus[j])
				}
				return p, nvml.SUCCESS
			},
			GetNumaNodeIdFunc: func() (int, nvml.Return) {
				if !hasNUMA {
					t.Error("nvmlDeviceGetNumaNodeId called although the symbol is missing")
				}
				return i / 4, nvml.SUCCESS
			},
		}
	}
	lib := &mock.Interface{
		InitFunc:           func() nvml.Return { return nvml.SUCCESS },
		ShutdownFunc:       func() nvml.Return { return nvml.SUCCESS },
		DeviceGetCountFunc: func() (int, nvml.Return) { return len(devs), nvml.SUCCESS },
		DeviceGetHandleByIndexFunc: func(i int) (nvml.Device, nvml.Return) {
			return devs[i], nvml.SUCCESS
		},
	}
	ext := &mock.ExtendedInterface{LookupSymbolFunc: func(sym string) error {
		if sym == "nvmlDeviceGetNumaNodeId" && !hasNUMA {
			return errors.New("undefined symbol")
		}
		return nil
	}}
	lib.ExtensionsFunc = func() nvml.ExtendedInterface { return ext }
	return lib
}

func TestDiscoverMockMachine(t *testing.T) {
	root := t.TempDir()
	if err := mkdirWrite(root+"/bus/pci/devices/0000:1b:00.0", "numa_node", "1\n"); err != nil {
		t.Fatal(err)
	}
	for _, hasNUMA := range []bool{true, false} {
		infos, err := discover(mockMachine(t, hasNUMA), root)
		if err != nil {
			t.Fatal(err)
		}
		if len(infos) != 8 {
			t.Fatalf("%d devices, want 8", len(infos))
		}
		for i, in := range infos {
			wantNUMA := i / 4
			if !hasNUMA { // from sysfs, which knows only 0000:1b:00.0
				wantNUMA = []int{-1, 1}[i%2]
			}
			want := Info{
				Index: i, Name: "NVIDIA H100 80GB HBM3", MemoryBytes: 80 << 30,
				PCIBusID: []string{"00000000:18:00.0", "00000000:1B:00.0"}[i%2], NUMANode: wantNUMA,
			}
			if in != want {
				t.Errorf("hasNUMA=%v: device %d: %+v, want %+v", hasNUMA, i, in, want)
			}
		}
	}
}

func TestDiscoverErrors(t *testing.T) {
	shutdowns := 0
	lib := &mock.Interface{
		InitFunc:     func() nvml.Return { return nvml.ERROR_LIBRARY_NOT_FOUND },
		ShutdownFunc: func() nvml.Return { shutdowns++; return nvml.SUCCESS },
	}
	_, err := discover(lib, "/nonexistent")
	if !errors.Is(err, ErrNotSupported) || !strings.Contains(err.Error(), "ERROR_LIBRARY_NOT_FOUND") {
		t.Fatalf("Init failure: %v", err)
	}
	if shutdowns != 0 {
		t.Fatal("Shutdown called after a failed Init")
	}
	lib.InitFunc = func() nvml.Return { return nvml.SUCCESS }
	lib.DeviceGetCountFunc = func() (int, nvml.Return) { return 0, nvml.ERROR_UNKNOWN }
	if _, err := discover(lib, "/nonexistent"); err == nil || errors.Is(err, ErrNotSupported) {
		t.Fatalf("count failure: %v, want a plain error", err)
	}
	if shutdowns != 1 {
		t.Fatalf("Shutdown called %d times after a successful Init, want 1", shutdowns)
	}
	lib.DeviceGetCountFunc = func() (int, nvml.Return) { return 0, nvml.SUCCESS }
	lib.ExtensionsFunc = func() nvml.ExtendedInterface {
		return &mock.ExtendedInterface{LookupSymbolFunc: func(string) error { return nil }}
	}
	if infos, err := discover(lib, "/nonexistent"); err != nil || len(infos) != 0 {
		t.Fatalf("no devices: %v, %v", infos, err)
	}
}

func mkdirWrite(dir, name, content string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644)
}
