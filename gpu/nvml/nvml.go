//go:build cgo

// Package nvml discovers GPUs through NVML with github.com/NVIDIA/go-nvml
// (which dlopens libnvidia-ml.so.1), and registers itself as gpu.Discover's
// discoverer when imported. Go programs import it; the C library does not
// (see gpu.Discover). It needs cgo; without, it registers nothing.
package nvml

import (
	"fmt"

	"github.com/NVIDIA/go-nvml/pkg/nvml"

	"github.com/gobps/gobps/gpu"
)

func init() { gpu.RegisterDiscoverer(Discover) }

// Info, ErrNotSupported and SysfsNUMANode as the gpu package has them.
type Info = gpu.Info

var ErrNotSupported = gpu.ErrNotSupported

func sysfsNUMANode(root, busID string) int { return gpu.SysfsNUMANode(root, busID) }

// Discover lists the GPUs through NVML. Where the library or driver is
// missing it returns an error wrapping gpu.ErrNotSupported and no devices:
// the caller says so once and runs in host mode. It never panics or exits.
func Discover() ([]Info, error) {
	return discover(nvml.New(), "/sys")
}

// nvmlLib is the part of nvml.Interface that Discover uses; go-nvml's mock
// servers (pkg/nvml/mock/dgxh100, …) implement it in tests.
type nvmlLib interface {
	Init() nvml.Return
	Shutdown() nvml.Return
	DeviceGetCount() (int, nvml.Return)
	DeviceGetHandleByIndex(int) (nvml.Device, nvml.Return)
	Extensions() nvml.ExtendedInterface
}

func discover(lib nvmlLib, sysfs string) (infos []Info, err error) {
	if ret := lib.Init(); ret != nvml.SUCCESS {
		return nil, fmt.Errorf("%w: NVML unavailable (libnvidia-ml.so.1): nvmlInit: %v", ErrNotSupported, ret)
	}
	defer func() {
		if ret := lib.Shutdown(); ret != nvml.SUCCESS && err == nil {
			err = fmt.Errorf("gpu: nvmlShutdown: %v", ret)
		}
	}()
	count, ret := lib.DeviceGetCount()
	if ret != nvml.SUCCESS {
		return nil, fmt.Errorf("gpu: nvmlDeviceGetCount: %v", ret)
	}
	// nvmlDeviceGetNumaNodeId is recent (R535); calling a symbol the
	// driver lacks would abort the process, so look it up first.
	hasNUMA := lib.Extensions().LookupSymbol("nvmlDeviceGetNumaNodeId") == nil
	for i := range count {
		d, ret := lib.DeviceGetHandleByIndex(i)
		if ret != nvml.SUCCESS {
			return nil, fmt.Errorf("gpu: nvmlDeviceGetHandleByIndex(%d): %v", i, ret)
		}
		info := Info{Index: i, NUMANode: -1}
		if info.Name, ret = d.GetName(); ret != nvml.SUCCESS {
			return nil, fmt.Errorf("gpu: device %d: nvmlDeviceGetName: %v", i, ret)
		}
		mem, ret := d.GetMemoryInfo()
		if ret != nvml.SUCCESS {
			return nil, fmt.Errorf("gpu: device %d: nvmlDeviceGetMemoryInfo: %v", i, ret)
		}
		info.MemoryBytes = mem.Total
		pci, ret := d.GetPciInfo()
		if ret != nvml.SUCCESS {
			return nil, fmt.Errorf("gpu: device %d: nvmlDeviceGetPciInfo: %v", i, ret)
		}
		info.PCIBusID = cString(pci.BusId[:])
		if hasNUMA {
			if n, ret := d.GetNumaNodeId(); ret == nvml.SUCCESS && n >= 0 {
				info.NUMANode = n
			}
		}
		if info.NUMANode < 0 && info.PCIBusID != "" {
			info.NUMANode = sysfsNUMANode(sysfs, info.PCIBusID)
		}
		infos = append(infos, info)
	}
	return infos, nil
}

// cString converts a NUL-terminated C char array.
func cString(b []int8) string {
	s := make([]byte, 0, len(b))
	for _, c := range b {
		if c == 0 {
			break
		}
		s = append(s, byte(c))
	}
	return string(s)
}
