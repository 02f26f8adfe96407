// Package kernel holds the summation kernels: dst += src over raw byte
// slices of one dtype, and the in-place division used for averaging.
//
// This file set is the portable pure-Go code. Half-precision types
// (float16, bfloat16) are accumulated in float32 and rounded to nearest
// even when stored back. Integer types wrap on overflow, as two's-complement
// hardware does. SIMD versions are separate work; they must agree with these
// loops (bit for bit for the integer and full-precision float types).
package kernel
