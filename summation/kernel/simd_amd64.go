//go:build !noasm && gc

package kernel

import (
	"golang.org/x/sys/cpu"

	"github.com/gobps/gobps/proto"
)

// The kernels are generated into sum_amd64.s by asmgen (go generate).

var avx2 = &impl{
	name: "avx2",
	kern: [numDTypes]kern{
		proto.Float32:  {addF32AVX2, 32},
		proto.Float64:  {addF64AVX2, 32},
		proto.Int32:    {addI32AVX2, 32},
		proto.Int64:    {addI64AVX2, 32},
		proto.Uint8:    {addU8AVX2, 32},
		proto.Float16:  {addF16AVX2, 16},
		proto.BFloat16: {addBF16AVX2, 32},
	},
}

var avx512 = &impl{
	name: "avx512",
	kern: [numDTypes]kern{
		proto.Float32:  {addF32AVX512, 64},
		proto.Float64:  {addF64AVX512, 64},
		proto.Int32:    {addI32AVX512, 64},
		proto.Int64:    {addI64AVX512, 64},
		proto.Uint8:    {addU8AVX512, 64},
		proto.Float16:  {addF16AVX512, 32},
		proto.BFloat16: {addBF16AVX512, 64},
	},
}

// avx512fp16 is avx512 with float16 added by VADDPH (AVX512-FP16) instead of
// through float32: the same bits, one vector micro-op per 64 bytes instead
// of 14.
var avx512fp16 = func() *impl {
	m := &impl{name: "avx512fp16", kern: avx512.kern}
	m.kern[proto.Float16] = kern{addF16AVX512FP16, 64}
	return m
}()

// hasAVX512FP16 reports CPUID.(EAX=7,ECX=0):EDX[23], which
// golang.org/x/sys/cpu does not. AVX512-FP16 uses the same register state as
// AVX512F, whose OS support x/sys/cpu has checked.
func hasAVX512FP16() bool {
	if maxLeaf, _, _, _ := cpuid(0, 0); maxLeaf < 7 {
		return false
	}
	_, _, _, edx := cpuid(7, 0)
	return edx&(1<<23) != 0
}

// available lists the implementations this CPU runs, best last.
func available() []*impl {
	m := []*impl{generic}
	// x/sys/cpu reports AVX2 and AVX-512 only where the OS also saves the
	// wider registers (XGETBV), so nothing else needs checking.
	if cpu.X86.HasAVX2 && cpu.X86.HasF16C {
		m = append(m, avx2)
		if cpu.X86.HasAVX512F && cpu.X86.HasAVX512BW && cpu.X86.HasAVX512VL {
			m = append(m, avx512)
			if hasAVX512FP16() {
				m = append(m, avx512fp16)
			}
		}
	}
	return m
}
