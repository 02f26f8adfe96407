// Command asmgen generates, with avo, the amd64 kernels of package codec:
// onebit's sign-bit packing and unpacking, and the fp16 (F16C) and bf16
// casts' conversions. Run it through go generate:
//
//	go generate ./summation/codec
//
// which runs, in summation/codec,
//
//	go run ./asmgen -out asm_amd64.s -stubs asm_amd64.go -pkg codec
//
// Every onebit kernel works on n elements, n a multiple of 64 (one 64-bit
// word of sign bits), every cast kernel on a multiple of 32; the caller does
// a shorter tail with the Go reference code (codec's packRef and unpackRef,
// summation/kernel's F32ToF16, F16ToF32, F32ToBF16 and BF16ToF32), which the
// kernels match bit for bit. No alignment is required. They use AVX2 only: at the tensor sizes that
// matter they are bound by memory, and AVX2 runs them as fast as AVX-512
// would on the CPUs at hand, with one kernel fewer to check.
package main

import (
	"flag"

	. "github.com/mmcloughlin/avo/build"
	. "github.com/mmcloughlin/avo/operand"
	"github.com/mmcloughlin/avo/reg"
)

func main() {
	flag.Parse()
	ConstraintExpr("!noasm,gc")
	genPack(false)
	genPack(true)
	shifts := genShifts()
	genUnpack(false, shifts)
	genUnpack(true, shifts)
	genNarrowF16()
	genWidenF16(false)
	genWidenF16(true)
	genNarrowBF16()
	genWidenBF16(false)
	genWidenBF16(true)
	Generate()
}

// text starts a NOSPLIT function that keeps none of the pointers it is
// given, so that its stub says //go:noescape.
func text(name, signature string) {
	TEXT(name, NOSPLIT, signature)
	Pragma("noescape")
}

// genPack emits onebitPackAVX2 or, with sum, onebitPackSumAVX2: 64 elements
// an iteration, eight 8-float VMOVMSKPS into one word; with sum, also
// |x| in float64 into 32 partial sums (eight YMM accumulators of four
// lanes), element i into lane i mod 32, in index order, exactly as
// codec.packRef adds them: each float is widened by VCVTPS2PD (exact, as Go's
// float64(f)) and its sign bit cleared.
func genPack(sum bool) {
	name := "onebitPackAVX2"
	sig := "func(words *byte, src *float32, n int)"
	doc := []string{
		"onebitPackAVX2 writes the sign bits of n floats at src to n/64",
		"little-endian words at words, element i at bit i mod 64.",
		"n must be a multiple of 64.",
	}
	if sum {
		name = "onebitPackSumAVX2"
		sig = "func(words *byte, src *float32, n int, acc *[32]float64)"
		doc = []string{
			"onebitPackSumAVX2 is onebitPackAVX2 that also adds |src[i]|, widened",
			"to float64, to acc[i mod 32], in index order.",
			"n must be a multiple of 64.",
		}
	}
	text(name, sig)
	Doc(doc...)
	w := Load(Param("words"), GP64())
	s := Load(Param("src"), GP64())
	n := Load(Param("n"), GP64())
	var acc [8]reg.VecVirtual
	var absMask reg.VecVirtual
	var accp reg.Register
	if sum {
		accp = Load(Param("acc"), GP64())
		for i := range acc {
			acc[i] = YMM()
			VMOVUPD(Mem{Base: accp, Disp: 32 * i}, acc[i])
		}
		g := GP64()
		MOVQ(U64(0x7fffffffffffffff), g)
		x := XMM()
		VMOVQ(g, x)
		absMask = YMM()
		VPBROADCASTQ(x, absMask)
	}

	Label(name + "_loop")
	TESTQ(n, n)
	JZ(LabelRef(name + "_done"))
	word := GP64()
	for m := 0; m < 8; m++ {
		v := YMM()
		VMOVUPS(Mem{Base: s, Disp: 32 * m}, v)
		if m == 0 {
			VMOVMSKPS(v, word.As32()) // zero-extends into word
			continue
		}
		g := GP64()
		VMOVMSKPS(v, g.As32())
		SHLQ(U8(8*m), g)
		ORQ(g, word)
	}
	MOVQ(word, Mem{Base: w})
	if sum {
		for c := 0; c < 16; c++ {
			t := YMM()
			VCVTPS2PD(Mem{Base: s, Disp: 16 * c}, t)
			VANDPD(absMask, t, t)
			VADDPD(t, acc[c%8], acc[c%8]) // acc first, as acc += t
		}
	}
	ADDQ(U32(256), s)
	ADDQ(U32(8), w)
	SUBQ(U32(64), n)
	JMP(LabelRef(name + "_loop"))

	Label(name + "_done")
	if sum {
		for i := range acc {
			VMOVUPD(acc[i], Mem{Base: accp, Disp: 32 * i})
		}
	}
	VZEROUPPER()
	RET()
}

// genShifts emits the shift counts of unpacking: for m = 0..3, eight 32-bit
// lanes j = 0..7 holding 31 - (8m + j), which move bit 8m+j of a 32-bit half
// word into the sign bit.
func genShifts() Mem {
	shifts := GLOBL("onebitShifts", RODATA|NOPTR)
	for m := 0; m < 4; m++ {
		for j := 0; j < 8; j++ {
			DATA(4*(8*m+j), U32(31-(8*m+j)))
		}
	}
	return shifts
}

// genUnpack emits onebitUnpackAVX2 or, with add, onebitUnpackAddAVX2: for
// each word, its two 32-bit halves are broadcast, every lane shifted left
// (VPSLLVD) so that its element's bit lands in the sign bit, masked to the
// sign bit and XORed into the scale's bits; with add, the result is added
// to dst (VADDPS, the decoded value first, as codec.unpackRef's +=).
func genUnpack(add bool, shifts Mem) {
	name := "onebitUnpackAVX2"
	doc := []string{
		"onebitUnpackAVX2 sets dst[i], for n floats, to the float whose bits are",
		"scale with the sign flipped where bit i mod 64 of word i/64 is set.",
		"n must be a multiple of 64.",
	}
	if add {
		name = "onebitUnpackAddAVX2"
		doc = []string{
			"onebitUnpackAddAVX2 is onebitUnpackAVX2 adding to dst instead of",
			"setting it.",
			"n must be a multiple of 64.",
		}
	}
	text(name, "func(dst *float32, words *byte, n int, scale uint32)")
	Doc(doc...)
	d := Load(Param("dst"), GP64())
	w := Load(Param("words"), GP64())
	n := Load(Param("n"), GP64())
	sc := Load(Param("scale"), GP32())
	x := XMM()
	VMOVD(sc, x)
	scale := YMM()
	VPBROADCASTD(x, scale)
	g := GP32()
	MOVL(U32(0x80000000), g)
	x2 := XMM()
	VMOVD(g, x2)
	sign := YMM()
	VPBROADCASTD(x2, sign)
	var cnt [4]reg.VecVirtual
	for m := range cnt {
		cnt[m] = YMM()
		VMOVDQU(shifts.Offset(32*m), cnt[m])
	}

	Label(name + "_loop")
	TESTQ(n, n)
	JZ(LabelRef(name + "_done"))
	lo, hi := YMM(), YMM()
	VPBROADCASTD(Mem{Base: w}, lo)
	VPBROADCASTD(Mem{Base: w, Disp: 4}, hi)
	for m := 0; m < 8; m++ {
		src := lo
		if m >= 4 {
			src = hi
		}
		t := YMM()
		VPSLLVD(cnt[m%4], src, t)
		VPAND(sign, t, t)
		VPXOR(scale, t, t)
		if add {
			VADDPS(Mem{Base: d, Disp: 32 * m}, t, t)
		}
		VMOVUPS(t, Mem{Base: d, Disp: 32 * m})
	}
	ADDQ(U32(256), d)
	ADDQ(U32(8), w)
	SUBQ(U32(64), n)
	JMP(LabelRef(name + "_loop"))

	Label(name + "_done")
	VZEROUPPER()
	RET()
}

// genNarrowF16 emits narrowF16F16C: 32 floats an iteration, rounded to
// IEEE half by VCVTPS2PH with imm 0 (round to nearest even; overflow to
// Inf; a NaN quieted, keeping the top of its payload), which is what
// summation/kernel's F32ToF16 does (summation/kernel's tests check its F16C
// sums against it bit for bit).
func genNarrowF16() {
	text("narrowF16F16C", "func(dst *byte, src *float32, n int)")
	Doc("narrowF16F16C rounds n floats at src to IEEE halves at dst (2n bytes).",
		"n must be a multiple of 32.")
	d := Load(Param("dst"), GP64())
	s := Load(Param("src"), GP64())
	n := Load(Param("n"), GP64())
	Label("narrowF16F16C_loop")
	TESTQ(n, n)
	JZ(LabelRef("narrowF16F16C_done"))
	for m := 0; m < 4; m++ {
		v := YMM()
		VMOVUPS(Mem{Base: s, Disp: 32 * m}, v)
		h := XMM()
		VCVTPS2PH(U8(0), v, h)
		VMOVDQU(h, Mem{Base: d, Disp: 16 * m})
	}
	ADDQ(U32(128), s)
	ADDQ(U32(64), d)
	SUBQ(U32(32), n)
	JMP(LabelRef("narrowF16F16C_loop"))
	Label("narrowF16F16C_done")
	VZEROUPPER()
	RET()
}

// genWidenF16 emits widenF16F16C or, with add, widenAddF16F16C: 32 halves
// an iteration widened by VCVTPH2PS (exact); with add, added to dst
// (VADDPS, the widened value first, as dst[i] += v).
func genWidenF16(add bool) {
	name := "widenF16F16C"
	doc := "widenF16F16C widens n IEEE halves at src to floats at dst."
	if add {
		name = "widenAddF16F16C"
		doc = "widenAddF16F16C adds n IEEE halves at src, widened, to the floats at dst."
	}
	text(name, "func(dst *float32, src *byte, n int)")
	Doc(doc, "n must be a multiple of 32.")
	d := Load(Param("dst"), GP64())
	s := Load(Param("src"), GP64())
	n := Load(Param("n"), GP64())
	Label(name + "_loop")
	TESTQ(n, n)
	JZ(LabelRef(name + "_done"))
	for m := 0; m < 4; m++ {
		v := YMM()
		VCVTPH2PS(Mem{Base: s, Disp: 16 * m}, v)
		if add {
			VADDPS(Mem{Base: d, Disp: 32 * m}, v, v)
		}
		VMOVUPS(v, Mem{Base: d, Disp: 32 * m})
	}
	ADDQ(U32(64), s)
	ADDQ(U32(128), d)
	SUBQ(U32(32), n)
	JMP(LabelRef(name + "_loop"))
	Label(name + "_done")
	VZEROUPPER()
	RET()
}

// bcst32 broadcasts the 32-bit constant v to a new YMM register.
func bcst32(v uint32) reg.VecVirtual {
	g := GP32()
	MOVL(U32(v), g)
	x := XMM()
	VMOVD(g, x)
	y := YMM()
	VPBROADCASTD(x, y)
	return y
}

// genNarrowBF16 emits narrowBF16AVX2: 32 floats an iteration rounded to
// bfloat16 exactly as summation/kernel's F32ToBF16: b + 0x7fff + (b>>16 & 1),
// the top half kept, except that a NaN (VCMPPS unordered) becomes
// b>>16 | 0x40 (quiet, the top of its payload kept). The 32-bit results
// are packed to 16 bits (VPACKUSDW, which works within 128-bit lanes, then
// VPERMQ to put the quarters back in order).
func genNarrowBF16() {
	text("narrowBF16AVX2", "func(dst *byte, src *float32, n int)")
	Doc("narrowBF16AVX2 rounds n floats at src to bfloat16 at dst (2n bytes).",
		"n must be a multiple of 32.")
	d := Load(Param("dst"), GP64())
	s := Load(Param("src"), GP64())
	n := Load(Param("n"), GP64())
	one, bias, quiet := bcst32(1), bcst32(0x7fff), bcst32(0x40)
	round := func(m Mem) reg.VecVirtual {
		v := YMM()
		VMOVDQU(m, v)
		nan := YMM()
		VCMPPS(U8(3), v, v, nan) // unordered: v is a NaN
		hi := YMM()
		VPSRLD(U8(16), v, hi)
		t := YMM()
		VPAND(one, hi, t)
		VPADDD(bias, t, t)
		VPADDD(v, t, t)
		VPSRLD(U8(16), t, t) // rounded
		VPOR(quiet, hi, hi)  // the NaN result
		VPBLENDVB(nan, hi, t, t)
		return t
	}
	Label("narrowBF16AVX2_loop")
	TESTQ(n, n)
	JZ(LabelRef("narrowBF16AVX2_done"))
	for m := 0; m < 2; m++ {
		a := round(Mem{Base: s, Disp: 64 * m})
		b := round(Mem{Base: s, Disp: 64*m + 32})
		VPACKUSDW(b, a, a)
		VPERMQ(U8(0xd8), a, a)
		VMOVDQU(a, Mem{Base: d, Disp: 32 * m})
	}
	ADDQ(U32(128), s)
	ADDQ(U32(64), d)
	SUBQ(U32(32), n)
	JMP(LabelRef("narrowBF16AVX2_loop"))
	Label("narrowBF16AVX2_done")
	VZEROUPPER()
	RET()
}

// genWidenBF16 emits widenBF16AVX2 or, with add, widenAddBF16AVX2: 32
// bfloat16 an iteration, zero-extended to 32 bits (VPMOVZXWD) and shifted
// into the top half, exactly BF16ToF32; with add, added to dst (VADDPS,
// the widened value first).
func genWidenBF16(add bool) {
	name := "widenBF16AVX2"
	doc := "widenBF16AVX2 widens n bfloat16 at src to floats at dst."
	if add {
		name = "widenAddBF16AVX2"
		doc = "widenAddBF16AVX2 adds n bfloat16 at src, widened, to the floats at dst."
	}
	text(name, "func(dst *float32, src *byte, n int)")
	Doc(doc, "n must be a multiple of 32.")
	d := Load(Param("dst"), GP64())
	s := Load(Param("src"), GP64())
	n := Load(Param("n"), GP64())
	Label(name + "_loop")
	TESTQ(n, n)
	JZ(LabelRef(name + "_done"))
	for m := 0; m < 4; m++ {
		v := YMM()
		VPMOVZXWD(Mem{Base: s, Disp: 16 * m}, v)
		VPSLLD(U8(16), v, v)
		if add {
			VADDPS(Mem{Base: d, Disp: 32 * m}, v, v)
		}
		VMOVUPS(v, Mem{Base: d, Disp: 32 * m})
	}
	ADDQ(U32(64), s)
	ADDQ(U32(128), d)
	SUBQ(U32(32), n)
	JMP(LabelRef(name + "_loop"))
	Label(name + "_done")
	VZEROUPPER()
	RET()
}
