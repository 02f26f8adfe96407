package codec

import "math/bits"

// The random numbers of random-k and dithering come from SplitMix64 (Steele,
// Lea and Flood, "Fast splittable pseudorandom number generators", 2014):
// one add and a 64-bit mix per number, fully specified, so that every
// worker, in every language, draws the same sequence from the same seed.

const golden = 0x9e3779b97f4a7c15

// mix64 is SplitMix64's finalizer (Stafford's variant 13), a bijection.
func mix64(z uint64) uint64 {
	z = (z ^ z>>30) * 0xbf58476d1ce4e5b9
	z = (z ^ z>>27) * 0x94d049bb133111eb
	return z ^ z>>31
}

// splitmix is a SplitMix64 generator.
type splitmix struct{ s uint64 }

func (r *splitmix) next() uint64 {
	r.s += golden
	return mix64(r.s)
}

// below returns a number in [0, m) from the top of one draw (Lemire's
// multiply-shift, without the rejection step: the bias is below m/2^64).
func (r *splitmix) below(m uint64) uint64 {
	hi, _ := bits.Mul64(r.next(), m)
	return hi
}

// streamSeed is the seed of the sequence a codec seeded with seed draws for
// one key in one round: the same on every worker, different for every key
// and round.
func streamSeed(seed uint64, at Step) uint64 {
	return mix64(mix64(mix64(seed)^uint64(at.Key)) ^ at.Round)
}
