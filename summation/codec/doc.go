// Package codec holds gradient compressors for workers and servers: onebit,
// top-k, random-k, dithering and the fp16/bf16 casts, with error feedback and
// Nesterov momentum as decorators around any of them, and the parsing and
// binary descriptor of their parameters (BytePS's compression_params).
//
// # Use
//
// Parse turns BytePS's string parameters into Params; Params.Encode and
// Decode carry them in a declaration, and equal Params on both sides mean
// the same codec. NewWorker builds a worker's Compressor (momentum, then
// error feedback, then the codec), NewServer a server's (error feedback,
// then the codec). A worker compresses each partition with Compress(dst,
// gradient, Step{Key, Round}); a server decompresses each push into the
// key's sum with DecompressAdd (the first with Decompress), recompresses the
// sum once, and answers every pull with that payload, which workers
// Decompress.
//
// The codecs take float32. A float16 or bfloat16 tensor is widened to
// float32 first (Widen, exact) and narrowed after decompression (Narrow,
// round to nearest even): to the codec a half tensor is a cast. Other
// dtypes are not compressed.
//
// # Payloads
//
// Every payload is self-describing and little-endian. It starts with an
// 8-byte header:
//
//	0    codec ID: 1 onebit, 2 topk, 3 randomk, 4 dithering, 5 fp16, 6 bf16
//	1    layout version, 1
//	2, 3 codec-specific (zero where not said otherwise)
//	4-7  n, the element count (uint32)
//
// and goes on, by codec (sizes in bytes; every size is exact, and a payload
// of another size is refused):
//
//	onebit     byte 2: 1 if scaling, else 0
//	           8-11  scale (float32): mean |x| with scaling, else 1.0
//	           12-15 zero
//	           16-   ceil(n/64) uint64 words: bit i mod 64 of word i/64 is
//	                 the sign bit of element i; bits past n zero
//	           size 16 + 8·ceil(n/64). Element i decompresses to the float
//	           whose bits are scale's with the sign flipped where its bit is
//	           set: +scale or -scale.
//	topk       8-11  k (uint32), 1 <= k <= n (0 if n is 0)
//	           12-   k indices (uint32), strictly increasing, below n
//	           then  k values (float32 bits, exactly as in the input)
//	           size 12 + 8k. The other elements decompress to +0.
//	randomk    8-15  s, the seed of the index sequence (uint64)
//	           16-19 k (uint32)
//	           20-   k values (float32 bits)
//	           size 20 + 4k. Value j is element lo + below(hi - lo) of
//	           stratum j, [lo, hi) = [j·n/k, (j+1)·n/k) (integer division),
//	           where below(m) is the high 64 bits of m times the next
//	           SplitMix64 output of the generator seeded with s.
//	dithering  byte 2: 1 natural partition, 2 L2 normalisation
//	           byte 3: s, the levels (1 to 255; natural 1 to 32)
//	           8-11  scale (float32): max |x| or the L2 norm; the NaN
//	                 0x7fc00000 if that is not finite
//	           12-   ceil(n·w/64) uint64 words holding n codes of
//	                 w = 1 + bits.Len(s) bits, code i at bits [i·w, i·w+w)
//	                 of the stream (LSB first, across word boundaries): the
//	                 level l in the low w-1 bits (0 <= l <= s), the sign of
//	                 element i above; bits past n·w zero
//	           size 12 + 8·ceil(n·w/64). Code l decompresses to
//	           ±float32(scale·l/s) (linear) or ±float32(scale·2^(l-1)/2^(s-1))
//	           and 0 for l = 0 (natural), computed in float64.
//	fp16       8-    n IEEE 754 halves (uint16); size 8 + 2n. Rounded to
//	                 nearest even, overflow to Inf, NaNs quiet; a
//	                 signalling NaN (never written) decodes quiet
//	bf16       8-    n bfloat16 (uint16); size 8 + 2n
//
// # What each codec computes
//
// onebit's scale is the mean of |x| in float64: element i is added into
// partial sum i mod 32 in index order, the 32 sums are added pairwise
// (sum[i] += sum[i+h] for h = 16, 8, 4, 2, 1), divided by n and rounded to
// float32; a NaN becomes 0x7fc00000. So a NaN anywhere makes every element
// NaN, an Inf (without NaN) every element ±Inf. The sign bit is the float's
// own, so -0 and negative NaNs count as negative.
//
// top-k keeps the k elements whose bits without the sign are largest as
// unsigned integers: largest |x|, NaNs above Inf; of equal ones the lower
// indices. random-k draws one element from each of k strata; every element
// of a stratum is equally likely (up to 2^-64), so each element is kept with
// probability about k/n and E[decompressed] = (k/n)·x only up to the strata
// rounding; the payload carries the generator's seed, derived from the
// codec's seed, the key and the round, so all workers of a round keep the
// same indices and the server need not know how it was derived.
//
// dithering maps u = |x|/scale·s (linear) or |x|/scale·2^(s-1) (natural) to
// a neighbouring level below or above, up with the probability that makes
// the expectation u (one SplitMix64 draw per element that is not on a
// level, 53 bits compared with the fraction); seeded like random-k, from
// the codec's seed, the key and the round. A zero or non-finite scale
// gives all-zero codes.
//
// k for top-k and random-k is a count or a fraction of n, rounded up (K).
//
// # Implementations
//
// Each codec is pure Go. onebit's bit packing and unpacking, the part that
// must keep up with memory, and the fp16 and bf16 casts' conversions also
// have AVX2 (and F16C) kernels generated with avo by ./asmgen (go generate)
// into asm_amd64.s, chosen at start when the CPU has them (Impl, SetImpl);
// they give the same payloads and tensors bit for bit, including onebit's
// scale, whose partial sums they keep in vector lanes in the same order.
// The noasm build tag, and any platform but amd64 with gc, leaves only the
// Go code ("generic"). Top-k is a radix select that bounds the k-th largest
// magnitude from a sample of the tensor, collects the elements above the
// bound in one pass and selects among them alone (the result does not
// depend on the sample). Dithering makes two passes (the scale, then the
// codes), the others one.
package codec
