package verbs

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"

	"github.com/Mellanox/rdmamap"

	"github.com/gobps/gobps/rdma"
	"github.com/gobps/gobps/rdma/ibv"
	"github.com/gobps/gobps/rdma/internal/rawdial"
)

func init() {
	rdma.Register(driver(systemEnv()))
	rawdial.Register("verbs", func(ctx context.Context, tr rdma.Transport, addr string, h rdma.Handler) (rdma.Conn, error) {
		return tr.(*Transport).dial(ctx, addr, nil, h)
	})
}

// driver is the verbs transport's driver for rdma.Open, which looks for
// devices in env: a device with an ACTIVE port found in sysfs
// (github.com/Mellanox/rdmamap) and in libibverbs's own device list. The
// library is loaded with dlopen (package ibv), so a binary without it, or
// built without cgo, falls back to TCP.
func driver(env openEnv) rdma.Driver {
	return rdma.Driver{Name: "verbs", RDMA: true, Preference: 1, Open: func(opt rdma.Options) (rdma.Transport, string, error) {
		v, why, err := openVerbs(opt, env)
		if err != nil {
			return nil, why, err
		}
		return v, why, nil
	}}
}

// openEnv is what the driver looks at, replaceable in tests.
type openEnv struct {
	// sysfs lists the RDMA devices the kernel has; why says why there are
	// none.
	sysfs func() (names []string, why string)
	load  func() (ibv.Library, error)
}

func systemEnv() openEnv {
	return openEnv{sysfs: sysfsDevices, load: ibv.Load}
}

// sysfsDevices lists /sys/class/infiniband with rdmamap.
func sysfsDevices() ([]string, string) {
	names := rdmamap.GetRdmaDeviceList()
	if len(names) > 0 {
		return names, ""
	}
	if _, err := os.Stat(rdmamap.RdmaClassDir); errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Sprintf("no RDMA devices: %s does not exist (no RDMA driver is loaded)", rdmamap.RdmaClassDir)
	}
	return nil, fmt.Sprintf("no RDMA devices in %s", rdmamap.RdmaClassDir)
}

func openVerbs(opt rdma.Options, env openEnv) (*Transport, string, error) {
	names, why := env.sysfs()
	if len(names) == 0 {
		return nil, why, errors.New(why)
	}
	lib, err := env.load()
	if err != nil {
		why := strings.TrimPrefix(err.Error(), ibv.ErrNotSupported.Error()+": ")
		return nil, why, err
	}
	v, why, err := New(lib, opt)
	if err != nil && len(names) > 0 && strings.Contains(why, "libibverbs lists no devices") {
		why += fmt.Sprintf(" (the kernel has %s: is the provider library, Debian's ibverbs-providers, installed?)", strings.Join(names, ", "))
	}
	return v, why, err
}

// New returns a verbs transport on lib: on opt.Device, or the first
// device with an ACTIVE port. The string says which device, port and
// addressing it uses, or why none can be used (the error then says the
// same).
func New(lib ibv.Library, opt rdma.Options) (*Transport, string, error) {
	if opt.SendDepth == 0 {
		opt.SendDepth = rdma.DefaultSendDepth
	}
	if opt.RecvDepth == 0 {
		opt.RecvDepth = rdma.DefaultRecvDepth
	}
	if opt.MRCacheBytes == 0 {
		opt.MRCacheBytes = rdma.DefaultMRCacheBytes
	}
	if opt.SendDepth < 1 || opt.SendDepth > maxDepth || opt.RecvDepth < 1 || opt.RecvDepth > maxDepth {
		why := fmt.Sprintf("send depth %d and receive depth %d must be between 1 and %d", opt.SendDepth, opt.RecvDepth, maxDepth)
		return nil, why, errors.New("rdma: " + why)
	}
	if opt.MRCacheBytes < 0 {
		why := fmt.Sprintf("MR cache bound of %d bytes is negative", opt.MRCacheBytes)
		return nil, why, errors.New("rdma: " + why)
	}
	devs, err := lib.Devices()
	if err != nil {
		return nil, err.Error(), err
	}
	if len(devs) == 0 {
		why := "libibverbs lists no devices"
		return nil, why, errors.New("rdma: " + why)
	}
	if opt.Device != "" {
		found := false
		for _, d := range devs {
			found = found || d == opt.Device
		}
		if !found {
			why := fmt.Sprintf("no RDMA device %q (GOBPS_RDMA_DEVICE); there are %s", opt.Device, strings.Join(devs, ", "))
			return nil, why, errors.New("rdma: " + why)
		}
		devs = []string{opt.Device}
	}
	var whyNot []string
	for _, name := range devs {
		t, why, err := tryDevice(lib, name, opt)
		if err == nil {
			return t, why, nil
		}
		whyNot = append(whyNot, why)
	}
	why := strings.Join(whyNot, "; ")
	return nil, why, errors.New("rdma: " + why)
}

// tryDevice opens name and returns a transport on its first usable port.
func tryDevice(lib ibv.Library, name string, opt rdma.Options) (_ *Transport, why string, err error) {
	ctx, err := lib.Open(name)
	if err != nil {
		return nil, err.Error(), err
	}
	defer func() {
		if err != nil {
			ctx.Close()
		}
	}()
	da, err := ctx.Query()
	if err != nil {
		return nil, err.Error(), err
	}
	// A connection's send queue holds about three WRs per frame in flight
	// (see handshake), with a peer of the same depth.
	if need := 3*opt.SendDepth + 8; da.MaxQPWR > 0 && (need > da.MaxQPWR || opt.RecvDepth > da.MaxQPWR) {
		why := fmt.Sprintf("%s allows %d work requests per queue; send depth %d needs %d and receive depth is %d",
			name, da.MaxQPWR, opt.SendDepth, need, opt.RecvDepth)
		return nil, why, errors.New(why)
	}
	var whyNot []string
	for port := 1; port <= da.PhysPortCnt; port++ {
		pa, err := ctx.Port(port)
		if err != nil {
			whyNot = append(whyNot, err.Error())
			continue
		}
		if pa.State != ibv.PortActive {
			whyNot = append(whyNot, fmt.Sprintf("%s port %d is %s", name, port, pa.State))
			continue
		}
		t := &Transport{opt: opt, ctx: ctx, port: port, attr: pa, gidIndex: -1, maxQPWR: da.MaxQPWR}
		if pa.LinkLayer == ibv.LinkEthernet {
			idx, gid, typ, err := chooseGID(ctx, port, pa, opt.GIDIndex)
			if err != nil {
				whyNot = append(whyNot, fmt.Sprintf("%s port %d: %v", name, port, err))
				continue
			}
			if typ == "" {
				typ = "RoCE"
			}
			t.global, t.gidIndex, t.gid = true, idx, gid
			t.desc = fmt.Sprintf("%s port %d (%s, GID index %d %s, MTU %d)", name, port, typ, idx, gid, pa.ActiveMTU.Bytes())
		} else {
			t.desc = fmt.Sprintf("%s port %d (InfiniBand, LID %d, MTU %d)", name, port, pa.LID, pa.ActiveMTU.Bytes())
		}
		if t.pd, err = ctx.AllocPD(); err != nil {
			return nil, err.Error(), err
		}
		logf := opt.Logf
		if logf == nil {
			logf = func(string, ...any) {}
		}
		t.cache = newMRCache(t.pd, opt.MRCacheBytes, &t.cnt, logf)
		t.mu.conns = map[*conn]struct{}{}
		t.mu.lns = map[*listener]struct{}{}
		t.mu.dialing = map[net.Conn]struct{}{}
		return t, "using verbs on " + t.desc, nil
	}
	if len(whyNot) == 0 {
		whyNot = append(whyNot, fmt.Sprintf("%s has no ports", name))
	}
	why = strings.Join(whyNot, "; ")
	return nil, why, errors.New(why)
}

// chooseGID picks the GID table entry of a RoCE port: want if it is not
// negative (and not empty), else the first RoCE v2 entry holding an IPv4
// address, else the first RoCE v2 entry that is not link-local, else the
// first RoCE v2 entry, else the first non-empty entry. RoCE v2 is routable
// (UDP/IP), which is what a cluster network and rxe on lo need.
func chooseGID(ctx ibv.Context, port int, pa ibv.PortAttr, want int) (int, ibv.GID, string, error) {
	if want >= 0 {
		g, err := ctx.GID(port, want)
		if err != nil {
			return 0, g, "", fmt.Errorf("GID index %d (GOBPS_RDMA_GID_INDEX): %w", want, err)
		}
		if g.IsZero() {
			return 0, g, "", fmt.Errorf("GID index %d (GOBPS_RDMA_GID_INDEX) is empty", want)
		}
		return want, g, ctx.GIDType(port, want), nil
	}
	n := min(pa.GIDTblLen, 256)
	best, bestRank := -1, 0
	var bestGID ibv.GID
	var bestType string
	for i := 0; i < n; i++ {
		g, err := ctx.GID(port, i)
		if err != nil || g.IsZero() {
			continue
		}
		typ := ctx.GIDType(port, i)
		rank := 1
		if strings.EqualFold(typ, "RoCE v2") {
			rank = 2
			if !g.LinkLocal() {
				rank = 3
			}
			if g.IPv4() {
				rank = 4
			}
		}
		if rank > bestRank {
			best, bestRank, bestGID, bestType = i, rank, g, typ
		}
	}
	if best < 0 {
		return 0, bestGID, "", fmt.Errorf("no usable GID among %d entries (is an IP address configured on its network interface?)", n)
	}
	return best, bestGID, bestType, nil
}
