// Package kernel holds the summation kernels: dst += src (Add) and
// dst = a + b (AddTo) over raw byte slices of one dtype, and the in-place
// division used for averaging (Div).
//
// # Implementations
//
// There are four implementations of the sums, chosen once at start from the
// CPU's features (golang.org/x/sys/cpu, and CPUID for AVX512-FP16, which
// x/sys/cpu does not report); Impl names the one in use:
//
//   - "avx512fp16": "avx512", except that float16 is added by VADDPH
//     (AVX512-FP16) directly, one vector micro-op per 64 bytes instead of
//     the 14 of converting through float32 (Sapphire Rapids and later);
//   - "avx512": AVX-512 F+BW+VL kernels, 64-byte vectors;
//   - "avx2": AVX2+F16C kernels, 32-byte vectors;
//   - "generic": the scalar Go loops of generic.go, everywhere.
//
// The SIMD kernels are generated with avo by ./asmgen (go generate) into
// sum_amd64.s. They run over the longest prefix that is a whole number of
// vectors; the scalar code does the rest, so every length works, 0
// included. The noasm build tag (and any platform other than amd64 with the
// gc compiler) leaves only "generic". SetImpl forces one implementation, for
// tests and benchmarks.
//
// # Results
//
// Every implementation gives the same bits as the scalar code, except that
// where both inputs of an element are NaNs the result is a NaN carrying
// either payload. Integer types wrap on overflow, as two's-complement
// hardware does. float32 and float64 are IEEE 754 adds (round to nearest
// even, denormals kept: Go never sets flush-to-zero). float16 and bfloat16
// are widened to float32 (exactly), added in float32 and rounded to nearest
// even when stored back, so a sum is within half an ulp of the dtype plus
// half an ulp of float32 of the exact sum. float16 uses F16C (VCVTPH2PS,
// VCVTPS2PH with rounding mode 0); its sums match those of the scalar code
// (F16ToF32, F32ToF16) bit for bit, denormals and NaN payloads included.
// VADDPH rounds the exact sum to float16 once instead, which gives the same
// bits: rounding twice, through float32's 24 bits, cannot differ from
// rounding once to float16's 11 when 24 >= 2·11+2 (asmgen's f16fp16 says
// more; TestF16FP16AllPairs adds all 2^32 pairs both ways).
// bfloat16 is widened by
// shifting and rounded with integer adds exactly as F32ToBF16 does; a NaN
// stays a quiet NaN (see asmgen's bf16 for why no special case is needed).
// The AVX-512 BF16 instruction VCVTNE2PS2BF16 is not used: it flushes
// denormals to zero and would not match.
//
// Slices may start at any address. The server's buffers are aligned; the
// scalar code bounces unaligned slices through an aligned buffer so that
// checkptr (go test -race) accepts them. Div is scalar everywhere and
// expects aligned slices.
package kernel
