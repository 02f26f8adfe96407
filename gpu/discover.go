package gpu

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Discoverer lists a machine's GPUs. gpu/nvml provides the one gobps uses
// (github.com/NVIDIA/go-nvml) and registers it when imported.
type Discoverer func() ([]Info, error)

var discoverer Discoverer

// RegisterDiscoverer sets the function Discover calls. It is meant for
// package init functions (gpu/nvml's), before any Discover.
func RegisterDiscoverer(d Discoverer) { discoverer = d }

// Discover lists the GPUs with the registered discoverer: NVML where the
// binary imports gpu/nvml (gobps's Go programs do). Without one, or where
// NVML or the driver is missing, it returns an error wrapping
// ErrNotSupported: the caller says so once and runs in host mode.
//
// The C library (cgo/, loaded by PyTorch through ctypes) does not import
// gpu/nvml: go-nvml leaves its NVML symbols unresolved until it dlopens the
// library, and ctypes loads libraries with RTLD_NOW, which refuses a
// library with unresolved symbols. There, devices are opened through the
// CUDA driver (gpu/cuda) alone.
func Discover() ([]Info, error) {
	if discoverer == nil {
		return nil, fmt.Errorf("%w: no GPU discovery in this binary (gpu/nvml is not linked in)", ErrNotSupported)
	}
	return discoverer()
}

// SysfsNUMANode reads the NUMA node of the PCI device busID (NVML's form,
// "00000000:3B:00.0") from sysfs under root ("/sys"), or -1.
func SysfsNUMANode(root, busID string) int {
	dom, rest, ok := strings.Cut(strings.ToLower(busID), ":")
	if !ok || len(dom) < 4 {
		return -1
	}
	// sysfs names the device "0000:3b:00.0": a 4-digit domain.
	name := dom[len(dom)-4:] + ":" + rest
	b, err := os.ReadFile(filepath.Join(root, "bus", "pci", "devices", name, "numa_node"))
	if err != nil {
		return -1
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || n < 0 {
		return -1
	}
	return n
}
