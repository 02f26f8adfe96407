package codec

import (
	"encoding/binary"
	"fmt"
	"math"
	"sync"
)

// K is how many elements a sparse codec (top-k, random-k) keeps of a
// tensor: Count elements if Count > 0, else the fraction Fraction of them,
// rounded up; at least one of a non-empty tensor, and never more than all.
type K struct {
	Count    int
	Fraction float64
}

// Of is the number of elements kept of a tensor of n elements.
func (k K) Of(n int) int {
	if k.Count > 0 {
		return min(k.Count, n)
	}
	c := int(math.Ceil(k.Fraction * float64(n)))
	return min(max(c, 1), n)
}

func (k K) String() string {
	if k.Count > 0 {
		return fmt.Sprint(k.Count)
	}
	return fmt.Sprint(k.Fraction)
}

func (k K) valid() error {
	switch {
	case k.Count > 0 && uint64(k.Count) <= MaxElems && math.Float64bits(k.Fraction) == 0:
	case k.Count == 0 && k.Fraction > 0 && k.Fraction < 1:
	default:
		return fmt.Errorf("k must be a count of at least 1 or a fraction in (0, 1), not count %d, fraction %v", k.Count, k.Fraction)
	}
	return nil
}

// topk is the top-k codec: the k elements of largest magnitude, with their
// indices.
type topk struct{ k K }

// topkSize is the size of a top-k payload that keeps k elements: the header,
// k, k indices and k values.
func topkSize(k int) int { return headerSize + 4 + 8*k }

func (topk) ID() ID              { return TopK }
func (c topk) MaxSize(n int) int { return topkSize(c.k.Of(n)) }

func (c topk) Compress(dst []byte, src []float32, _ Step) ([]byte, error) {
	n := len(src)
	if err := checkCompress(TopK, dst, n, 0); err != nil {
		return nil, err
	}
	k := c.k.Of(n)
	size := topkSize(k)
	if err := checkCompress(TopK, dst, n, size); err != nil {
		return nil, err
	}
	dst = dst[:size]
	putHeader(dst, TopK, 0, 0, n)
	binary.LittleEndian.PutUint32(dst[headerSize:], uint32(k))
	o := headerSize + 4
	selectTop(dst[o:o+4*k], dst[o+4*k:], src, k)
	return dst, nil
}

func (topk) Decompress(dst []float32, payload []byte) error {
	return topkDecode(dst, payload, false)
}

func (topk) DecompressAdd(dst []float32, payload []byte) error {
	return topkDecode(dst, payload, true)
}

func topkDecode(dst []float32, payload []byte, add bool) error {
	a, b, err := openPayload(TopK, payload, len(dst))
	if err != nil {
		return err
	}
	if a != 0 || b != 0 {
		return corrupt("top-k payload with reserved bits set")
	}
	n := len(dst)
	if len(payload) < headerSize+4 {
		return corrupt("top-k payload of %d bytes has no k", len(payload))
	}
	k := int(binary.LittleEndian.Uint32(payload[headerSize:]))
	if k > n || (k == 0) != (n == 0) {
		return corrupt("top-k payload keeps %d of %d elements", k, n)
	}
	if len(payload) != topkSize(k) {
		return corrupt("top-k payload keeping %d elements is %d bytes, want %d", k, len(payload), topkSize(k))
	}
	idx := payload[headerSize+4 : headerSize+4+4*k]
	val := payload[headerSize+4+4*k:]
	// Check every index before writing anything, so that a bad payload
	// leaves a running sum as it was.
	prev := -1
	for i := 0; i < k; i++ {
		j := int(binary.LittleEndian.Uint32(idx[4*i:]))
		if j <= prev || j >= n {
			return corrupt("top-k index %d after %d, of %d elements: indices must increase and be below the element count", j, prev, n)
		}
		prev = j
	}
	if !add {
		clear(dst)
	}
	for i := 0; i < k; i++ {
		j := binary.LittleEndian.Uint32(idx[4*i:])
		v := math.Float32frombits(binary.LittleEndian.Uint32(val[4*i:]))
		if add {
			dst[j] += v
		} else {
			dst[j] = v
		}
	}
	return nil
}

// magKey orders floats by magnitude: the bits without the sign, which as
// unsigned integers order every non-NaN by |x| and put NaNs above +Inf.
func magKey(x float32) uint32 { return math.Float32bits(x) << 1 >> 1 }

// topScratch is the working memory of selectTop, pooled.
type topScratch struct {
	hist [2048]uint32
	// The candidates, the elements at or above the bound: their indices
	// and their bits, kept together so that selecting among them does not
	// go back to the tensor (one cache miss per candidate per pass).
	cand, bits []uint32
	refined    []uint32 // keys of the candidates still in the running
}

var topPool = sync.Pool{New: func() any { return new(topScratch) }}

// findBin walks h from the top bin down and returns the bin where the
// running count reaches k (k >= 1, at most the sum of h) and how many of
// that bin's elements make up k.
func findBin(h []uint32, k int) (bin, need int) {
	for bin = len(h) - 1; bin > 0; bin-- {
		if int(h[bin]) >= k {
			return bin, k
		}
		k -= int(h[bin])
	}
	return 0, k
}

// sampleSize is how many elements selectTop samples to bound the k-th
// largest key from below; tensors of fewer than 16 times as many elements
// are not sampled.
const sampleSize = 1 << 13

// selectTop writes to idx and val (4 bytes each per element, little-endian)
// the indices, increasing, and the values of the k elements of src with the
// largest magKey; among equal keys the lower indices win.
//
// It samples sampleSize evenly spaced elements and takes a key bound below
// which, by the sample, hardly more than k·(1+margin) elements lie above;
// one pass over src collects, in index order, the candidates: every element
// whose key is at or above the bound. If there are at least k of them, the
// k largest are among them, and a radix select over the candidates alone
// (histograms of 11, 10 and 10 key bits) finds the k-th largest key T and
// how many elements equal to T to keep; otherwise (a sample that missed,
// as a periodic tensor can make it) every element is a candidate. A last
// pass over the candidates writes the kept ones, in index order. The result
// does not depend on the sample: only the speed does.
func selectTop(idx, val []byte, src []float32, k int) {
	n := len(src)
	put := func(o int, i uint32) {
		binary.LittleEndian.PutUint32(idx[4*o:], i)
		binary.LittleEndian.PutUint32(val[4*o:], math.Float32bits(src[i]))
	}
	if k == n {
		for i := range src {
			put(i, uint32(i))
		}
		return
	}
	s := topPool.Get().(*topScratch)
	defer topPool.Put(s)
	h := s.hist[:]

	bound := uint32(0)
	if n >= 16*sampleSize {
		// The sample's histogram of the top 11 key bits; the bound is the
		// lower edge of the bin holding the sample's r-th largest, where r
		// is the sample's expected share of k plus four standard
		// deviations and some.
		clear(h)
		stride := n / sampleSize
		for i := 0; i < sampleSize; i++ {
			h[magKey(src[i*stride])>>20]++
		}
		f := float64(k) / float64(n)
		r := int(math.Ceil(1.1*f*sampleSize + 4*math.Sqrt(f*sampleSize) + 8))
		if r < sampleSize {
			bin, _ := findBin(h, r)
			bound = uint32(bin) << 20
		}
	}
	cand, bits := s.cand[:0], s.bits[:0]
	if bound > 0 {
		cand, bits = collect(cand, bits, src, bound)
	}
	if len(cand) < k {
		// No sample, or one that missed: the bound is the lower edge of
		// the bin that holds the k-th largest key, by a histogram of all
		// of src (in four tables, so that runs of equal bins do not wait
		// on each other's increments).
		var h4 [3][2048]uint32
		clear(h)
		h1, h2, h3 := &h4[0], &h4[1], &h4[2]
		i := 0
		for ; i+4 <= n; i += 4 {
			v := src[i : i+4 : i+4]
			h[magKey(v[0])>>20]++
			h1[magKey(v[1])>>20]++
			h2[magKey(v[2])>>20]++
			h3[magKey(v[3])>>20]++
		}
		for ; i < n; i++ {
			h[magKey(src[i])>>20]++
		}
		for b := range h {
			h[b] += h1[b] + h2[b] + h3[b]
		}
		bin, _ := findBin(h, k)
		cand, bits = collect(cand[:0], bits[:0], src, uint32(bin)<<20)
	}
	s.cand, s.bits = cand, bits

	// Radix select among the candidates: bits 30..20, 19..10, 9..0.
	refined := grow(&s.refined, len(cand))
	for i, b := range bits {
		refined[i] = b << 1 >> 1
	}
	need := k
	t := uint32(0)
	for _, lv := range [3]struct {
		shift uint
		bins  int
	}{{20, 2048}, {10, 1024}, {0, 1024}} {
		hist := h[:lv.bins]
		clear(hist)
		mask := uint32(lv.bins - 1)
		for _, key := range refined {
			hist[key>>lv.shift&mask]++
		}
		var b int
		b, need = findBin(hist, need)
		t |= uint32(b) << lv.shift
		m := 0
		for _, key := range refined {
			if key>>lv.shift&mask == uint32(b) {
				refined[m] = key
				m++
			}
		}
		refined = refined[:m]
	}

	// Keep every candidate above t and the first need equal to it.
	o := 0
	for j, c := range cand {
		key := bits[j] << 1 >> 1
		if key < t || key == t && need == 0 {
			continue
		}
		if key == t {
			need--
		}
		binary.LittleEndian.PutUint32(idx[4*o:], c)
		binary.LittleEndian.PutUint32(val[4*o:], bits[j])
		o++
	}
	if o != k {
		panic(fmt.Sprintf("codec: top-k selected %d of %d elements, want %d", o, n, k))
	}
}

// collect appends to cand the indices and to bits the bits of the elements
// of src whose magKey is at least bound, in order.
func collect(cand, bits []uint32, src []float32, bound uint32) ([]uint32, []uint32) {
	for i, x := range src {
		if b := math.Float32bits(x); b<<1>>1 >= bound {
			cand = append(cand, uint32(i))
			bits = append(bits, b)
		}
	}
	return cand, bits
}

// grow returns (*p)[:n], reallocating *p if it is shorter.
func grow(p *[]uint32, n int) []uint32 {
	if cap(*p) < n {
		*p = make([]uint32, n)
	}
	return (*p)[:n]
}

// randomk is the random-k codec: k elements chosen at random, one from each
// of k equal strata of the tensor, from a sequence that the seed, the key
// and the round decide; the payload carries that sequence's seed, so the
// indices need not travel.
type randomk struct {
	k    K
	seed uint64
}

// randomkSize is the size of a random-k payload that keeps k elements: the
// header, the stream seed, k and k values.
func randomkSize(k int) int { return headerSize + 8 + 4 + 4*k }

func (randomk) ID() ID              { return RandomK }
func (c randomk) MaxSize(n int) int { return randomkSize(c.k.Of(n)) }

// randomIndex is the index random-k keeps in stratum i of k over n
// elements: stratum i is [i·n/k, (i+1)·n/k), never empty when k <= n, and r
// draws one number per stratum, in order.
func randomIndex(r *splitmix, i, k, n uint64) uint64 {
	lo, hi := i*n/k, (i+1)*n/k
	return lo + r.below(hi-lo)
}

func (c randomk) Compress(dst []byte, src []float32, at Step) ([]byte, error) {
	n := len(src)
	if err := checkCompress(RandomK, dst, n, 0); err != nil {
		return nil, err
	}
	k := c.k.Of(n)
	size := randomkSize(k)
	if err := checkCompress(RandomK, dst, n, size); err != nil {
		return nil, err
	}
	dst = dst[:size]
	s := streamSeed(c.seed, at)
	putHeader(dst, RandomK, 0, 0, n)
	binary.LittleEndian.PutUint64(dst[headerSize:], s)
	binary.LittleEndian.PutUint32(dst[headerSize+8:], uint32(k))
	val := dst[headerSize+12:]
	r := splitmix{s}
	for i := 0; i < k; i++ {
		j := randomIndex(&r, uint64(i), uint64(k), uint64(n))
		binary.LittleEndian.PutUint32(val[4*i:], math.Float32bits(src[j]))
	}
	return dst, nil
}

func (randomk) Decompress(dst []float32, payload []byte) error {
	return randomkDecode(dst, payload, false)
}

func (randomk) DecompressAdd(dst []float32, payload []byte) error {
	return randomkDecode(dst, payload, true)
}

func randomkDecode(dst []float32, payload []byte, add bool) error {
	a, b, err := openPayload(RandomK, payload, len(dst))
	if err != nil {
		return err
	}
	if a != 0 || b != 0 {
		return corrupt("random-k payload with reserved bits set")
	}
	n := len(dst)
	if len(payload) < headerSize+12 {
		return corrupt("random-k payload of %d bytes has no seed and k", len(payload))
	}
	k := int(binary.LittleEndian.Uint32(payload[headerSize+8:]))
	if k > n || (k == 0) != (n == 0) {
		return corrupt("random-k payload keeps %d of %d elements", k, n)
	}
	if len(payload) != randomkSize(k) {
		return corrupt("random-k payload keeping %d elements is %d bytes, want %d", k, len(payload), randomkSize(k))
	}
	if !add {
		clear(dst)
	}
	r := splitmix{binary.LittleEndian.Uint64(payload[headerSize:])}
	val := payload[headerSize+12:]
	for i := 0; i < k; i++ {
		j := randomIndex(&r, uint64(i), uint64(k), uint64(n))
		v := math.Float32frombits(binary.LittleEndian.Uint32(val[4*i:]))
		if add {
			dst[j] += v
		} else {
			dst[j] = v
		}
	}
	return nil
}
