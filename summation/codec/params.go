package codec

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
)

// Params are a tensor's compression parameters: which codec, its options,
// and the decorators around it. The zero value compresses nothing. Params
// are comparable: two sides agree on a codec when their Params are equal.
type Params struct {
	Codec ID
	// K is how many elements top-k and random-k keep.
	K K
	// Levels is dithering's s (BytePS passes it as k).
	Levels int
	// Seed seeds random-k and dithering; every worker must use the same.
	Seed uint64
	// Natural selects dithering's natural partition (levels at powers of
	// two) instead of the linear one.
	Natural bool
	// L2 selects dithering's L2 normalisation instead of max.
	L2 bool
	// Scaling makes onebit's scale the mean |x| instead of 1.
	Scaling bool
	// FP16 is BytePS's fp16 option. Alone (Codec FP16) it is the fp16 cast.
	// Beside another codec it says that the framework casts the gradient
	// to float16 before handing it over, as BytePS does: the worker widens
	// it to float32 (Widen) for the codec, whose payload is unchanged.
	FP16 bool
	// EF wraps the codec in error feedback (workers and servers).
	EF bool
	// Momentum wraps it, on workers, in Nesterov momentum with factor Mu.
	Momentum bool
	Mu       float32
}

// DefaultMu is the momentum factor when the parameters do not give one.
const DefaultMu = 0.9

// Keys are the parameter names Parse takes: BytePS's, and mu.
var Keys = []string{"compressor", "ef", "momentum", "mu", "k", "seed", "partition", "normalize", "scaling", "fp16"}

// Parse reads compression parameters given as strings under BytePS's keys
// (the compression_params of BytePS's DistributedOptimizer), for example
//
//	{"compressor": "topk", "k": "0.01", "ef": "vanilla"}
//	{"compressor": "onebit", "scaling": "true", "ef": "vanilla", "momentum": "nesterov"}
//	{"compressor": "dithering", "k": "8", "partition": "natural", "normalize": "l2", "seed": "7"}
//
// The keys:
//   - compressor: onebit, topk, randomk, dithering, fp16, bf16 or none
//     (BytePS's names with "_compressor" after them too);
//   - ef: vanilla (or vanilla_ef) for error feedback, none;
//   - momentum: nesterov (or nesterov_momentum), none; mu: its factor in
//     (0, 1), DefaultMu if not given;
//   - k: for topk and randomk a count (an integer >= 1) or a fraction in
//     (0, 1); for dithering the number of levels s, 1 to MaxLevels (linear)
//     or MaxNaturalLevels (natural);
//   - seed: an unsigned 64-bit integer, for randomk and dithering;
//   - partition: linear or natural, normalize: max or l2, for dithering;
//   - scaling: a boolean, for onebit;
//   - fp16: a boolean; alone, the fp16 cast.
//
// Booleans are those of strconv.ParseBool ("true", "True", "1", ...). A key
// that is unknown, or that does not apply to the compressor, is an error.
func Parse(kv map[string]string) (Params, error) {
	var p Params
	for k := range kv {
		if !slices.Contains(Keys, k) {
			return Params{}, fmt.Errorf("codec: unknown compression parameter %q (known: %s)", k, strings.Join(Keys, ", "))
		}
	}
	get := func(k string) (string, bool) {
		v, ok := kv[k]
		return strings.TrimSpace(v), ok
	}
	bad := func(k, v, want string) error {
		return fmt.Errorf("codec: compression parameter %s=%q: want %s", k, v, want)
	}
	if v, ok := get("compressor"); ok {
		name := strings.TrimSuffix(strings.ToLower(v), "_compressor")
		switch name {
		case "", "none":
		case "onebit", "topk", "randomk", "dithering", "fp16", "bf16":
			for id := OneBit; id < maxID; id++ {
				if idNames[id] == name {
					p.Codec = id
				}
			}
		default:
			return Params{}, bad("compressor", v, "onebit, topk, randomk, dithering, fp16, bf16 or none")
		}
		p.FP16 = p.Codec == FP16
	}
	if v, ok := get("fp16"); ok {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return Params{}, bad("fp16", v, "a boolean")
		}
		p.FP16 = b
		if b && p.Codec == None {
			p.Codec = FP16
		}
	}
	applies := func(k string, ok bool, ids ...ID) error {
		if ok && !slices.Contains(ids, p.Codec) {
			names := make([]string, len(ids))
			for i, id := range ids {
				names[i] = id.String()
			}
			return fmt.Errorf("codec: compression parameter %s applies to %s, not to compressor %s", k, strings.Join(names, " and "), p.Codec)
		}
		return nil
	}
	v, ok := get("k")
	if err := applies("k", ok, TopK, RandomK, Dithering); err != nil {
		return Params{}, err
	}
	switch {
	case !ok && (p.Codec == TopK || p.Codec == RandomK || p.Codec == Dithering):
		return Params{}, fmt.Errorf("codec: compressor %s needs parameter k", p.Codec)
	case ok && p.Codec == Dithering:
		s, err := strconv.Atoi(v)
		if err != nil || s < 1 || s > MaxLevels {
			return Params{}, bad("k", v, fmt.Sprintf("dithering's number of levels, an integer from 1 to %d", MaxLevels))
		}
		p.Levels = s
	case ok:
		if c, err := strconv.ParseUint(v, 10, 64); err == nil && c >= 1 && c <= MaxElems && uint64(int(c)) == c {
			p.K.Count = int(c)
		} else if f, err := strconv.ParseFloat(v, 64); err == nil && f > 0 && f < 1 {
			p.K.Fraction = f
		} else if err == nil && f >= 1 && f <= MaxElems && f == math.Trunc(f) {
			p.K.Count = int(f)
		} else {
			return Params{}, bad("k", v, fmt.Sprintf("a count from 1 to %d or a fraction in (0, 1)", uint64(MaxElems)))
		}
	}
	v, ok = get("seed")
	if err := applies("seed", ok, RandomK, Dithering); err != nil {
		return Params{}, err
	}
	if ok {
		s, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			return Params{}, bad("seed", v, "an unsigned 64-bit integer")
		}
		p.Seed = s
	}
	v, ok = get("partition")
	if err := applies("partition", ok, Dithering); err != nil {
		return Params{}, err
	}
	if ok {
		switch strings.ToLower(v) {
		case "linear":
		case "natural":
			p.Natural = true
		default:
			return Params{}, bad("partition", v, "linear or natural")
		}
	}
	if p.Natural && p.Levels > MaxNaturalLevels {
		return Params{}, fmt.Errorf("codec: dithering with the natural partition takes at most %d levels, not k=%d", MaxNaturalLevels, p.Levels)
	}
	v, ok = get("normalize")
	if err := applies("normalize", ok, Dithering); err != nil {
		return Params{}, err
	}
	if ok {
		switch strings.ToLower(v) {
		case "max":
		case "l2":
			p.L2 = true
		default:
			return Params{}, bad("normalize", v, "max or l2")
		}
	}
	v, ok = get("scaling")
	if err := applies("scaling", ok, OneBit); err != nil {
		return Params{}, err
	}
	if ok {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return Params{}, bad("scaling", v, "a boolean")
		}
		p.Scaling = b
	}
	if v, ok := get("ef"); ok {
		switch strings.ToLower(v) {
		case "", "none":
		case "vanilla", "vanilla_ef":
			p.EF = true
		default:
			return Params{}, bad("ef", v, "vanilla or none")
		}
	}
	if v, ok := get("momentum"); ok {
		switch strings.ToLower(v) {
		case "", "none":
		case "nesterov", "nesterov_momentum":
			p.Momentum = true
			p.Mu = DefaultMu
		default:
			return Params{}, bad("momentum", v, "nesterov or none")
		}
	}
	if v, ok := get("mu"); ok {
		if !p.Momentum {
			return Params{}, errors.New("codec: compression parameter mu without momentum=nesterov")
		}
		f, err := strconv.ParseFloat(v, 32)
		if err != nil || !(f > 0 && f < 1) {
			return Params{}, bad("mu", v, "a momentum factor in (0, 1)")
		}
		p.Mu = float32(f)
	}
	if (p.EF || p.Momentum) && p.Codec == None {
		return Params{}, errors.New("codec: error feedback and momentum need a compressor")
	}
	if err := p.Validate(); err != nil {
		return Params{}, err // INVARIANT: Parse builds only valid Params
	}
	return p, nil
}

// Validate checks that p is a consistent set of parameters: the options
// that apply to p.Codec in range, the others zero.
func (p Params) Validate() error {
	if p.Codec >= maxID {
		return fmt.Errorf("codec: unknown codec %d", uint8(p.Codec))
	}
	sparse := p.Codec == TopK || p.Codec == RandomK
	if sparse {
		if err := p.K.valid(); err != nil {
			return fmt.Errorf("codec: %s: %w", p.Codec, err)
		}
	} else if p.K.Count != 0 || math.Float64bits(p.K.Fraction) != 0 {
		return fmt.Errorf("codec: k=%v given to %s", p.K, p.Codec)
	}
	if p.Codec == Dithering {
		if p.Levels < 1 || p.Levels > MaxLevels || p.Natural && p.Levels > MaxNaturalLevels {
			return fmt.Errorf("codec: dithering with %d levels", p.Levels)
		}
	} else if p.Levels != 0 || p.Natural || p.L2 {
		return fmt.Errorf("codec: dithering options given to %s", p.Codec)
	}
	if p.Seed != 0 && p.Codec != RandomK && p.Codec != Dithering {
		return fmt.Errorf("codec: seed given to %s", p.Codec)
	}
	if p.Scaling && p.Codec != OneBit {
		return fmt.Errorf("codec: scaling given to %s", p.Codec)
	}
	if (p.EF || p.Momentum) && p.Codec == None {
		return errors.New("codec: error feedback and momentum need a codec")
	}
	if p.Momentum != (p.Mu > 0 && p.Mu < 1) || !p.Momentum && math.Float32bits(p.Mu) != 0 {
		return fmt.Errorf("codec: momentum %v with factor %v", p.Momentum, p.Mu)
	}
	if p.Codec == FP16 && !p.FP16 {
		return errors.New("codec: compressor fp16 with fp16=false")
	}
	if p.Codec == None && p.FP16 {
		return errors.New("codec: fp16 without a compressor is compressor fp16")
	}
	if p.Codec == BF16 && p.FP16 {
		return errors.New("codec: compressor bf16 with fp16=true")
	}
	return nil
}

// Equal reports whether p and q are the same parameters.
func (p Params) Equal(q Params) bool { return p == q }

func (p Params) String() string {
	var b strings.Builder
	b.WriteString(p.Codec.String())
	switch p.Codec {
	case TopK, RandomK:
		fmt.Fprintf(&b, " k=%v", p.K)
	case Dithering:
		part, norm := "linear", "max"
		if p.Natural {
			part = "natural"
		}
		if p.L2 {
			norm = "l2"
		}
		fmt.Fprintf(&b, " k=%d partition=%s normalize=%s", p.Levels, part, norm)
	case OneBit:
		fmt.Fprintf(&b, " scaling=%v", p.Scaling)
	}
	if p.Codec == RandomK || p.Codec == Dithering {
		fmt.Fprintf(&b, " seed=%d", p.Seed)
	}
	if p.FP16 && p.Codec != FP16 {
		b.WriteString(" fp16")
	}
	if p.EF {
		b.WriteString(" ef=vanilla")
	}
	if p.Momentum {
		fmt.Fprintf(&b, " momentum=nesterov mu=%v", p.Mu)
	}
	return b.String()
}

// DescriptorSize is the size of an encoded Params.
const DescriptorSize = 32

const descriptorVersion = 1

// The flag bits of a descriptor's byte 2.
const (
	descEF = 1 << iota
	descMomentum
	descScaling
	descFP16
	descNatural
	descL2
)

// Encode appends p's descriptor to b: 32 bytes, little-endian,
//
//	0     version (1)
//	1     codec ID
//	2     flags: 1 ef, 2 momentum, 4 scaling, 8 fp16, 16 natural, 32 l2
//	3     dithering's levels s, else 0
//	4-11  k as a count (uint64), else 0
//	12-19 k as a fraction (float64 bits), else 0
//	20-27 seed
//	28-31 mu (float32 bits), 0 without momentum
func (p Params) Encode(b []byte) []byte {
	var f byte
	for _, x := range []struct {
		on  bool
		bit byte
	}{{p.EF, descEF}, {p.Momentum, descMomentum}, {p.Scaling, descScaling}, {p.FP16, descFP16}, {p.Natural, descNatural}, {p.L2, descL2}} {
		if x.on {
			f |= x.bit
		}
	}
	b = append(b, descriptorVersion, byte(p.Codec), f, byte(p.Levels))
	b = binary.LittleEndian.AppendUint64(b, uint64(p.K.Count))
	b = binary.LittleEndian.AppendUint64(b, math.Float64bits(p.K.Fraction))
	b = binary.LittleEndian.AppendUint64(b, p.Seed)
	return binary.LittleEndian.AppendUint32(b, math.Float32bits(p.Mu))
}

// Decode reads a descriptor that Encode wrote, and checks it: Decode(b)
// succeeds only where b is Encode of a valid Params.
func Decode(b []byte) (Params, error) {
	if len(b) != DescriptorSize {
		return Params{}, fmt.Errorf("codec: descriptor of %d bytes, want %d", len(b), DescriptorSize)
	}
	if b[0] != descriptorVersion {
		return Params{}, fmt.Errorf("codec: descriptor version %d, want %d", b[0], descriptorVersion)
	}
	f := b[2]
	if f >= descL2<<1 {
		return Params{}, fmt.Errorf("codec: descriptor flags %#x", f)
	}
	le := binary.LittleEndian
	count := le.Uint64(b[4:])
	if count > MaxElems {
		return Params{}, fmt.Errorf("codec: descriptor k=%d", count)
	}
	if uint64(int(count)) != count {
		return Params{}, fmt.Errorf("codec: descriptor k=%d does not fit an int here", count)
	}
	p := Params{
		Codec:    ID(b[1]),
		Levels:   int(b[3]),
		K:        K{Count: int(count), Fraction: math.Float64frombits(le.Uint64(b[12:]))},
		Seed:     le.Uint64(b[20:]),
		Mu:       math.Float32frombits(le.Uint32(b[28:])),
		EF:       f&descEF != 0,
		Momentum: f&descMomentum != 0,
		Scaling:  f&descScaling != 0,
		FP16:     f&descFP16 != 0,
		Natural:  f&descNatural != 0,
		L2:       f&descL2 != 0,
	}
	if err := p.Validate(); err != nil {
		return Params{}, fmt.Errorf("codec: bad descriptor: %w", err)
	}
	return p, nil
}

// New returns the codec p names, without decorators.
func New(p Params) (Compressor, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	switch p.Codec {
	case OneBit:
		return onebit{scaling: p.Scaling}, nil
	case TopK:
		return topk{k: p.K}, nil
	case RandomK:
		return randomk{k: p.K, seed: p.Seed}, nil
	case Dithering:
		return dither{s: p.Levels, natural: p.Natural, l2: p.L2, seed: p.Seed}, nil
	case FP16, BF16:
		return cast{id: p.Codec}, nil
	}
	return nil, errors.New("codec: no codec in the parameters")
}

// NewWorker returns a worker's compressor for p: the codec, in error
// feedback if p.EF, in Nesterov momentum if p.Momentum (outermost, as in
// BytePS: momentum, then error feedback, then the codec).
func NewWorker(p Params) (Compressor, error) {
	c, err := New(p)
	if err != nil {
		return nil, err
	}
	if p.EF {
		c = NewErrorFeedback(c)
	}
	if p.Momentum {
		c = NewMomentum(c, p.Mu)
	}
	return c, nil
}

// NewServer returns a server's compressor for p, which recompresses sums:
// the codec, in error feedback if p.EF. Momentum is the workers' alone.
func NewServer(p Params) (Compressor, error) {
	c, err := New(p)
	if err != nil {
		return nil, err
	}
	if p.EF {
		c = NewErrorFeedback(c)
	}
	return c, nil
}
