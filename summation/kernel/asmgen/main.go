// Command asmgen generates, with avo, the amd64 summation kernels of
// package kernel and the non-temporal copy of package stream. Run it through
// go generate:
//
//	go generate ./summation/kernel/...
//
// which runs, in summation/kernel and summation/kernel/stream,
//
//	go run ./asmgen -out sum_amd64.s -stubs sum_amd64.go -pkg kernel
//	go run ../asmgen -stream -out copy_amd64.s -stubs copy_amd64.go -pkg stream
//
// Every sum kernel has the signature
//
//	func addXxxYyy(dst, a, b *byte, n int)
//
// and sets dst = a + b, element by element, over n bytes. n must be a
// multiple of the kernel's unit (the bytes of input one vector step consumes,
// listed in kernel's simd_amd64.go); the caller finishes any shorter tail
// with the scalar Go code. dst may be a or b (that is how kernel.Add calls
// them) but must not overlap them otherwise. No alignment is required.
//
// Operand order: every float add is emitted as VADDPx b, a, s, that is, in
// Intel order, s = a + b with a as the first source. It only decides which
// payload a sum of two NaNs carries (x86 returns the first source's), and
// that is left unspecified: the Go compiler may commute a+b in the scalar
// loop, and for float16 it does.
package main

import (
	"flag"
	"fmt"
	"strings"

	. "github.com/mmcloughlin/avo/build"
	"github.com/mmcloughlin/avo/ir"
	. "github.com/mmcloughlin/avo/operand"
	"github.com/mmcloughlin/avo/reg"
)

// unroll is how many vector steps one iteration of the main loop does.
const unroll = 4

// isa describes one instruction-set level: the vector width and the
// instructions whose spelling differs between the VEX and EVEX forms.
type isa struct {
	name  string                  // suffix of the function names
	width int                     // vector bytes
	vec   func() reg.VecVirtual   // allocates a vector register
	half  func() reg.VecVirtual   // a register of half the width
	movu  func(src, dst Op)       // unaligned integer move
	and   func(src, src1, dst Op) // bitwise and
	or    func(src, src1, dst Op) // bitwise or
	xor   func(src, src1, dst Op) // bitwise exclusive or
	bcst  func(v uint32) reg.VecVirtual
}

var avx2 = isa{
	name:  "AVX2",
	width: 32,
	vec:   YMM,
	half:  XMM,
	movu:  func(src, dst Op) { VMOVDQU(src, dst) },
	and:   func(src, src1, dst Op) { VPAND(src, src1, dst) },
	or:    func(src, src1, dst Op) { VPOR(src, src1, dst) },
	xor:   func(src, src1, dst Op) { VPXOR(src, src1, dst) },
	bcst: func(v uint32) reg.VecVirtual {
		g := GP32()
		MOVL(U32(v), g)
		x := XMM()
		VMOVD(g, x) // VEX: a legacy-SSE MOVD here cost 250-400 ns a call (SSE/AVX transition)
		y := YMM()
		VPBROADCASTD(x, y)
		return y
	},
}

var avx512 = isa{
	name:  "AVX512",
	width: 64,
	vec:   ZMM,
	half:  YMM,
	movu: func(src, dst Op) {
		if isZ(src) || isZ(dst) {
			VMOVDQU64(src, dst)
		} else {
			VMOVDQU(src, dst)
		}
	},
	and: func(src, src1, dst Op) { VPANDD(src, src1, dst) },
	or:  func(src, src1, dst Op) { VPORQ(src, src1, dst) },
	xor: func(src, src1, dst Op) { VPXORQ(src, src1, dst) },
	bcst: func(v uint32) reg.VecVirtual {
		g := GP32()
		MOVL(U32(v), g)
		z := ZMM()
		VPBROADCASTD(g, z)
		return z
	},
}

// avx512fp16 is avx512 on CPUs with AVX512-FP16; only its float16 kernel
// differs (see f16fp16).
var avx512fp16 = func() isa { x := avx512; x.name = "AVX512FP16"; return x }()

func isZ(op Op) bool {
	r, ok := op.(reg.Register)
	return ok && r.Size() == 64
}

// kern describes one dtype's kernel for one ISA.
type kern struct {
	dtype string // function name part: F32, F64, I32, I64, U8, F16, BF16
	doc   string
	// unit returns the input bytes one vector step consumes.
	unit func(x isa) int
	// setup emits the loop-invariant code (constants) and returns the step
	// function, which emits one vector step reading a and b and writing d.
	setup func(x isa) func(a, b, d Mem)
}

// plain is a kernel that adds with one instruction of full vector width.
func plain(dtype, what string, add func(x isa) func(src, src1, dst Op)) kern {
	return kern{
		dtype: dtype,
		doc:   "sets dst = a + b over n bytes of " + what,
		unit:  func(x isa) int { return x.width },
		setup: func(x isa) func(a, b, d Mem) {
			op := add(x)
			return func(a, b, d Mem) {
				v := x.vec()
				x.movu(a, v)
				op(b, v, v) // v = v + b: a is the first source
				x.movu(v, d)
			}
		},
	}
}

var kernels = []kern{
	plain("F32", "float32", func(isa) func(Op, Op, Op) { return func(s, s1, d Op) { VADDPS(s, s1, d) } }),
	plain("F64", "float64", func(isa) func(Op, Op, Op) { return func(s, s1, d Op) { VADDPD(s, s1, d) } }),
	plain("I32", "int32 (wrapping)", func(isa) func(Op, Op, Op) { return func(s, s1, d Op) { VPADDD(s, s1, d) } }),
	plain("I64", "int64 (wrapping)", func(isa) func(Op, Op, Op) { return func(s, s1, d Op) { VPADDQ(s, s1, d) } }),
	plain("U8", "uint8 (wrapping)", func(isa) func(Op, Op, Op) { return func(s, s1, d Op) { VPADDB(s, s1, d) } }),
	{
		dtype: "F16",
		doc: "sets dst = a + b over n bytes of IEEE 754 half: widened with\n" +
			"VCVTPH2PS (exact), added in float32, narrowed with VCVTPS2PH\n" +
			"imm 0 (round to nearest even)",
		// A vector step widens half a vector of halves into a full vector of
		// float32.
		unit: func(x isa) int { return x.width / 2 },
		setup: func(x isa) func(a, b, d Mem) {
			return func(a, b, d Mem) {
				va, vb := x.vec(), x.vec()
				VCVTPH2PS(a, va)
				VCVTPH2PS(b, vb)
				VADDPS(vb, va, va)
				h := x.half()
				VCVTPS2PH(U8(0), va, h)
				x.movu(h, d)
			}
		},
	},
	{
		dtype: "BF16",
		doc: "sets dst = a + b over n bytes of bfloat16: widened by shifts,\n" +
			"added in float32, rounded to nearest even by integer adds, bit for\n" +
			"bit as kernel.F32ToBF16",
		unit:  func(x isa) int { return x.width },
		setup: bf16,
	},
}

// f16fp16 is the float16 kernel for AVX512-FP16: VADDPH adds 32 halves in
// one instruction, where the F16C kernel widens both operands to float32,
// adds and narrows again: per 64 bytes stored, four widenings and two
// narrowings of two micro-ops each and two adds, 14 vector micro-ops
// against one.
//
// It gives the same bits as the F16C kernel and the scalar code, for every
// pair of halves. Both compute round-to-nearest-even(a + b), VADDPH
// directly and the others by rounding the float32 sum a second time; double
// rounding through a format of q bits cannot differ from rounding once to p
// bits when q >= 2p+2 (Figueroa, "When is double rounding innocuous?", 1995),
// and float32's 24 bits are float16's 2·11+2. float32's exponent range also
// holds every float16 sum, denormals included, so neither overflow nor
// underflow rounds twice. NaNs propagate the first source's payload, quieted,
// in both. TestF16FP16AllPairs checks all 2^32 pairs.
//
// Neither avo nor the Go assembler knows AVX512-FP16, so VADDPH is emitted as
// bytes (vaddph) on fixed registers.
var f16fp16 = kern{
	dtype: "F16",
	doc: "sets dst = a + b over n bytes of IEEE 754 half with\n" +
		"VADDPH (AVX512-FP16; round to nearest even), bit for bit as\n" +
		"addF16AVX512",
	unit: func(x isa) int { return x.width },
	setup: func(x isa) func(a, b, d Mem) {
		return func(a, b, d Mem) {
			VMOVDQU64(a, reg.Z0)
			VMOVDQU64(b, reg.Z1)
			vaddph(reg.Z2, reg.Z0, reg.Z1)
			VMOVDQU64(reg.Z2, d)
		}
	},
}

// vaddph emits VADDPH src2, src1, dst (Intel: VADDPH dst, src1, src2; dst =
// src1 + src2) on 512-bit registers, encoded by hand:
//
//	EVEX.512.NP.MAP5.W0 58 /r
//
// that is 62, then P0 = R̄ X̄ B̄ R̄' 0 101 (the register bits inverted: R and R'
// extend ModRM.reg, B and X ModRM.rm), P1 = W v̄v̄v̄v̄ 1 pp (W 0, vvvv src1
// inverted, pp 00), P2 = z L'L b V̄' aaa (L'L 10 for 512 bits, V' src1's bit 4
// inverted, no masking), the opcode 58 and ModRM 11 reg rm.
// TestVADDPHEncoding checks the bytes against the disassembler.
func vaddph(dst, src1, src2 reg.VecPhysical) {
	Comment(fmt.Sprintf("VADDPH %s, %s, %s", src2.Asm(), src1.Asm(), dst.Asm()))
	for i, c := range vaddphBytes(int(dst.PhysicalIndex()), int(src1.PhysicalIndex()), int(src2.PhysicalIndex())) {
		in := &ir.Instruction{Opcode: "BYTE", Operands: []Op{U8(c)}}
		if i == 0 {
			// Tell avo's liveness what the instruction reads and writes.
			in.Inputs = []Op{src1, src2}
			in.Outputs = []Op{dst}
			in.ISA = []string{"AVX512F", "AVX512FP16"}
		}
		Instruction(in)
	}
}

// vaddphBytes encodes VADDPH zmm<d>, zmm<s1>, zmm<s2> (Intel order), for
// register numbers 0 to 31.
func vaddphBytes(d, s1, s2 int) []byte {
	inv := func(v, bit int) byte { return byte(^v>>bit) & 1 }
	return []byte{
		0x62,
		inv(d, 3)<<7 | inv(s2, 4)<<6 | inv(s2, 3)<<5 | inv(d, 4)<<4 | 0b101,
		byte(^s1&15)<<3 | 1<<2,
		0b10<<5 | inv(s1, 4)<<3,
		0x58,
		0b11<<6 | byte(d&7)<<3 | byte(s2&7),
	}
}

// bf16 emits the bfloat16 step. A vector of 2k bfloat16 values is, seen as
// k 32-bit lanes, the even-indexed elements in the low halves and the
// odd-indexed ones in the high halves. Shifting each lane left by 16 gives
// the even elements as float32; masking off the low halves gives the odd
// ones. The two float32 sums are rounded to bfloat16 in the high half of
// each lane (b += 0x7fff + (b>>16)&1), the even results are shifted down
// again and a word blend puts each element back where it came from: no
// shuffles across lanes.
//
// NaN: kernel.F32ToBF16 returns b>>16 | 0x40 for a NaN instead of rounding.
// Here no special case is needed: the float32 sum of two widened bfloat16
// values is NaN only if it is an input NaN, which the add quiets (sets
// 0x00400000) and whose low 16 bits are zero, or the default NaN of
// Inf-Inf (0xffc00000). Either way the low half is zero, the rounding
// increment (at most 0x8000) cannot carry into the high half, and the
// result is b>>16 with the quiet bit set, which is what F32ToBF16 returns.
func bf16(x isa) func(a, b, d Mem) {
	hi := x.bcst(0xffff0000)
	one := x.bcst(1)
	bias := x.bcst(0x7fff)
	var blendMask reg.OpmaskVirtual
	if x.width == 64 {
		g := GP32()
		MOVL(U32(0xaaaaaaaa), g) // odd words
		blendMask = K()
		KMOVD(g, blendMask)
	}
	var lsb reg.VecVirtual
	if x.width == 64 {
		lsb = x.bcst(0x10000)
	}
	// round adds 0x7fff + (s>>16)&1 to s.
	round := func(s reg.VecVirtual) {
		if x.width == 64 {
			// Three ops instead of four: test the bit into a mask and
			// add its 1 under that mask.
			k := K()
			VPTESTMD(lsb, s, k)
			VPADDD(bias, s, s)
			VPADDD(one, s, k, s)
			return
		}
		t := x.vec()
		VPSRLD(U8(16), s, t)
		x.and(one, t, t)
		VPADDD(bias, t, t)
		VPADDD(t, s, s)
	}
	return func(a, b, d Mem) {
		va, vb := x.vec(), x.vec()
		x.movu(a, va)
		x.movu(b, vb)
		ea, eb := x.vec(), x.vec()
		VPSLLD(U8(16), va, ea)
		VPSLLD(U8(16), vb, eb)
		x.and(hi, va, va)
		x.and(hi, vb, vb)
		VADDPS(eb, ea, ea) // even elements
		VADDPS(vb, va, va) // odd elements
		round(ea)
		round(va)
		VPSRLD(U8(16), ea, ea)
		if x.width == 64 {
			VPBLENDMW(va, ea, blendMask, ea)
		} else {
			VPBLENDW(U8(0xaa), va, ea, ea)
		}
		x.movu(ea, d)
	}
}

var (
	prefetch = flag.Int("prefetch", 4096, "software prefetch distance in bytes (0: none)")
	stream   = flag.Bool("stream", false, "generate package stream's copy kernel instead of the sum kernels")
)

func main() {
	flag.Parse()
	ConstraintExpr("!noasm,gc")
	if *stream {
		genCopy()
		genRead(avx2)
		genRead(avx512)
	} else {
		for _, x := range []isa{avx2, avx512} {
			for _, k := range kernels {
				gen(x, k)
			}
		}
		gen(avx512fp16, f16fp16)
		genCPUID()
	}
	Generate()
}

// gen emits one kernel: an unrolled loop of unroll vector steps, with and
// then without prefetching, then single steps until n is used up.
func gen(x isa, k kern) {
	name := "add" + k.dtype + x.name
	unit := k.unit(x)
	text(name, "func(dst, a, b *byte, n int)")
	Doc(append(strings.Split(name+" "+k.doc+".", "\n"), fmt.Sprintf("n must be a multiple of %d.", unit))...)
	d := Load(Param("dst"), GP64())
	a := Load(Param("a"), GP64())
	b := Load(Param("b"), GP64())
	n := Load(Param("n"), GP64())
	step := k.setup(x)

	// While at least *prefetch bytes are left past this iteration, prefetch
	// as we go; then the same loop without prefetching, so that no
	// prefetch reaches past the end of the buffers (into pages that may not
	// be mapped, which costs page walks and made 4 KiB sums twice as slow).
	if *prefetch > 0 {
		Label(name + "_prefetching")
		CMPQ(n, U32(*prefetch+unroll*unit))
		JB(LabelRef(name + "_loop"))
		prefetchAhead(unroll*unit, a, b)
		for i := 0; i < unroll; i++ {
			off := i * unit
			step(Mem{Base: a, Disp: off}, Mem{Base: b, Disp: off}, Mem{Base: d, Disp: off})
		}
		advance(unroll*unit, d, a, b, n)
		JMP(LabelRef(name + "_prefetching"))
	}

	Label(name + "_loop")
	CMPQ(n, U32(unroll*unit))
	JB(LabelRef(name + "_single"))
	for i := 0; i < unroll; i++ {
		off := i * unit
		step(Mem{Base: a, Disp: off}, Mem{Base: b, Disp: off}, Mem{Base: d, Disp: off})
	}
	advance(unroll*unit, d, a, b, n)
	JMP(LabelRef(name + "_loop"))

	Label(name + "_single")
	TESTQ(n, n)
	JZ(LabelRef(name + "_done"))
	step(Mem{Base: a}, Mem{Base: b}, Mem{Base: d})
	advance(unit, d, a, b, n)
	JMP(LabelRef(name + "_single"))

	Label(name + "_done")
	VZEROUPPER()
	RET()
}

// prefetchAhead emits a PREFETCHT0 for every cache line of the next span
// bytes, *prefetch bytes ahead, of each source. The hardware prefetchers
// stop at 4 KiB page boundaries; fetching a page ahead keeps more misses in
// flight, which on the development machine (Xeon, 64 MiB buffers) raised
// float16 and bfloat16 from about 17 to 20-30 GB/s and left the in-cache
// sizes unchanged. Prefetches past the end of a buffer do not fault.
func prefetchAhead(span int, srcs ...reg.Register) {
	if *prefetch == 0 {
		return
	}
	for off := 0; off < span; off += 64 {
		for _, p := range srcs {
			PREFETCHT0(Mem{Base: p, Disp: *prefetch + off})
		}
	}
}

// genCopy emits package stream's copy kernel: 32-byte loads and
// non-temporal 32-byte stores (VMOVNTDQ), which write whole lines without
// reading them first, then an SFENCE so that the stores are ordered before
// whatever the caller does next.
func genCopy() {
	const span = 128
	text("copyNT", "func(dst, src *byte, n int)")
	Doc("copyNT copies n bytes from src to dst with non-temporal stores.",
		fmt.Sprintf("dst must be 32-byte aligned and n a multiple of %d.", span))
	d := Load(Param("dst"), GP64())
	s := Load(Param("src"), GP64())
	n := Load(Param("n"), GP64())
	Label("loop")
	TESTQ(n, n)
	JZ(LabelRef("done"))
	prefetchAhead(span, s)
	var v [span / 32]reg.VecVirtual
	for i := range v {
		v[i] = YMM()
		VMOVDQU(Mem{Base: s, Disp: 32 * i}, v[i])
	}
	for i := range v {
		VMOVNTDQ(v[i], Mem{Base: d, Disp: 32 * i})
	}
	ADDQ(U32(span), s)
	ADDQ(U32(span), d)
	SUBQ(U32(span), n)
	JMP(LabelRef("loop"))
	Label("done")
	SFENCE()
	VZEROUPPER()
	RET()
}

// text starts a NOSPLIT function that takes pointers and keeps none, so
// its stub says //go:noescape: without it every pointer passed in escapes,
// and a caller's stack buffer would move to the heap.
func text(name, signature string) {
	TEXT(name, NOSPLIT, signature)
	Pragma("noescape")
}

// genCPUID emits cpuid, for the features golang.org/x/sys/cpu does not
// report (AVX512-FP16).
func genCPUID() {
	TEXT("cpuid", NOSPLIT, "func(leaf, sub uint32) (eax, ebx, ecx, edx uint32)")
	Doc("cpuid executes CPUID with EAX = leaf and ECX = sub.")
	Load(Param("leaf"), reg.EAX)
	Load(Param("sub"), reg.ECX)
	CPUID()
	Store(reg.EAX, Return("eax"))
	Store(reg.EBX, Return("ebx"))
	Store(reg.ECX, Return("ecx"))
	Store(reg.EDX, Return("edx"))
	RET()
}

// genRead emits package stream's read kernel: it only loads, four vectors of
// each buffer an iteration, ORing each into its own accumulator so that no
// load waits for another, and stores the OR of them all to out.
func genRead(x isa) {
	const unroll = 4
	span := unroll * x.width
	name := "read" + x.name
	text(name, "func(a, b *byte, n int, out *[64]byte)")
	Doc(name+" ORs every vector of a and b (n bytes each) into out.",
		fmt.Sprintf("n must be a multiple of %d.", span))
	a := Load(Param("a"), GP64())
	b := Load(Param("b"), GP64())
	n := Load(Param("n"), GP64())
	var acc [2 * unroll]reg.VecVirtual
	for i := range acc {
		acc[i] = x.vec()
		x.xor(acc[i], acc[i], acc[i])
	}
	Label(name + "_loop")
	TESTQ(n, n)
	JZ(LabelRef(name + "_done"))
	for i := 0; i < unroll; i++ {
		x.or(Mem{Base: a, Disp: i * x.width}, acc[i], acc[i])
		x.or(Mem{Base: b, Disp: i * x.width}, acc[unroll+i], acc[unroll+i])
	}
	ADDQ(U32(span), a)
	ADDQ(U32(span), b)
	SUBQ(U32(span), n)
	JMP(LabelRef(name + "_loop"))
	Label(name + "_done")
	for i := 1; i < len(acc); i++ {
		x.or(acc[i], acc[0], acc[0])
	}
	out := Load(Param("out"), GP64())
	x.movu(acc[0], Mem{Base: out})
	VZEROUPPER()
	RET()
}

func advance(by int, d, a, b, n reg.Register) {
	ADDQ(U32(by), d)
	ADDQ(U32(by), a)
	ADDQ(U32(by), b)
	SUBQ(U32(by), n)
}
