//go:build !noasm && gc

package kernel

import (
	"golang.org/x/sys/cpu"

	"github.com/gobps/gobps/core/proto"
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

// available lists the implementations this CPU runs, best last.
func available() []*impl {
	m := []*impl{generic}
	// x/sys/cpu reports AVX2 and AVX-512 only where the OS also saves the
	// wider registers (XGETBV), so nothing else needs checking.
	if cpu.X86.HasAVX2 && cpu.X86.HasF16C {
		m = append(m, avx2)
		if cpu.X86.HasAVX512F && cpu.X86.HasAVX512BW && cpu.X86.HasAVX512VL {
			m = append(m, avx512)
		}
	}
	return m
}
