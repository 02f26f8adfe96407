package main

import (
	"math"
	"math/rand/v2"
)

// Dataset is a classification problem held in memory: N rows of In
// features, row-major, and a label in 0..Classes-1 for each.
type Dataset struct {
	In, Classes int
	X           []float64 // N*In
	Y           []int     // N
}

// Len is the number of samples.
func (d *Dataset) Len() int { return len(d.Y) }

// Row is sample i's features.
func (d *Dataset) Row(i int) []float64 { return d.X[i*d.In : (i+1)*d.In] }

// MakeBlobs draws a training set of n samples and a held-out test set of
// nTest samples in dim dimensions from 2*classes Gaussian blobs of unit
// variance; blob j belongs to class j%classes, so every class is two blobs
// far apart and a linear model cannot separate them. The same seed gives the
// same data on every worker.
func MakeBlobs(seed uint64, n, nTest, dim, classes int) (train, test *Dataset) {
	r := rand.New(rand.NewPCG(seed, 1))
	const spread = 0.8 // centre coordinates ~ N(0, spread²)
	centres := make([][]float64, 2*classes)
	for j := range centres {
		centres[j] = make([]float64, dim)
		for k := range centres[j] {
			centres[j][k] = spread * r.NormFloat64()
		}
	}
	draw := func(n int) *Dataset {
		d := &Dataset{In: dim, Classes: classes, X: make([]float64, n*dim), Y: make([]int, n)}
		for i := 0; i < n; i++ {
			j := r.IntN(len(centres))
			d.Y[i] = j % classes
			row := d.Row(i)
			for k := range row {
				row[k] = centres[j][k] + r.NormFloat64()
			}
		}
		return d
	}
	return draw(n), draw(nTest)
}

// The parameter tensors of the MLP, in model order (the order every worker
// declares them in).
const (
	W1 = iota // Hidden×In, row-major
	B1        // Hidden
	W2        // Classes×Hidden, row-major
	B2        // Classes
	numTensors
)

var tensorNames = [numTensors]string{W1: "fc1.weight", B1: "fc1.bias", W2: "fc2.weight", B2: "fc2.bias"}

// Params is the parameters (or the gradient) of an MLP
// In → Hidden (tanh) → Classes (softmax), float64, in one flat slice; T
// views it per tensor.
type Params struct {
	In, Hidden, Classes int
	Flat                []float64
	T                   [numTensors][]float64
}

// NewParams returns zeroed parameters of the given shape.
func NewParams(in, hidden, classes int) *Params {
	sizes := [numTensors]int{W1: hidden * in, B1: hidden, W2: classes * hidden, B2: classes}
	n := 0
	for _, s := range sizes {
		n += s
	}
	p := &Params{In: in, Hidden: hidden, Classes: classes, Flat: make([]float64, n)}
	off := 0
	for i, s := range sizes {
		p.T[i] = p.Flat[off : off+s : off+s]
		off += s
	}
	return p
}

// Init draws the weights from N(0, 1/fan_in) and zeroes the biases.
func (p *Params) Init(r *rand.Rand) {
	clear(p.Flat)
	for i := range p.T[W1] {
		p.T[W1][i] = r.NormFloat64() / math.Sqrt(float64(p.In))
	}
	for i := range p.T[W2] {
		p.T[W2][i] = r.NormFloat64() / math.Sqrt(float64(p.Hidden))
	}
}

// Step is one SGD update: p -= lr*g.
func (p *Params) Step(g *Params, lr float64) {
	for i, v := range g.Flat {
		p.Flat[i] -= lr * v
	}
}

// scratch is per-batch working memory of Grad.
type scratch struct {
	h  []float64 // m×Hidden activations
	dz []float64 // m×Classes dLoss/dlogits
	dh []float64 // Hidden
	z  []float64 // Classes
}

func (s *scratch) size(m, hidden, classes int) {
	if cap(s.h) < m*hidden {
		s.h = make([]float64, m*hidden)
	}
	if cap(s.dz) < m*classes {
		s.dz = make([]float64, m*classes)
	}
	s.h, s.dz = s.h[:m*hidden], s.dz[:m*classes]
	if len(s.dh) != hidden {
		s.dh = make([]float64, hidden)
	}
	if len(s.z) != classes {
		s.z = make([]float64, classes)
	}
}

// Grad sets g to the gradient of the mean cross-entropy loss of p over the
// samples idx of d, and returns the summed (not mean) loss and the number of
// samples classified correctly, both measured before the update.
//
// The gradient is computed layer by layer from the output back, and ready
// is called with a tensor index as soon as that tensor's gradient is final,
// so that the caller can start communicating it while Grad goes on with the
// layers below (BytePS's overlap of backward and push_pull). Grad does not
// write a tensor of g again after announcing it. ready may be nil.
func (p *Params) Grad(d *Dataset, idx []int, g *Params, s *scratch, ready func(tensor int)) (lossSum float64, correct int) {
	in, hid, cls := p.In, p.Hidden, p.Classes
	m := len(idx)
	s.size(m, hid, cls)
	clear(g.Flat)
	w1, b1, w2, b2 := p.T[W1], p.T[B1], p.T[W2], p.T[B2]

	// Forward, and dLoss_i/dz for every sample.
	for n, i := range idx {
		x := d.Row(i)
		h := s.h[n*hid : (n+1)*hid]
		for j := range h {
			a := b1[j]
			for k, xk := range x {
				a += w1[j*in+k] * xk
			}
			h[j] = math.Tanh(a)
		}
		z := s.z
		best := 0
		for c := range z {
			a := b2[c]
			for j, hj := range h {
				a += w2[c*hid+j] * hj
			}
			z[c] = a
			if a > z[best] {
				best = c
			}
		}
		if best == d.Y[i] {
			correct++
		}
		// softmax, stably; loss = logsumexp(z) - z[y]
		zmax := z[best]
		var sum float64
		for _, zc := range z {
			sum += math.Exp(zc - zmax)
		}
		lse := zmax + math.Log(sum)
		lossSum += lse - z[d.Y[i]]
		dz := s.dz[n*cls : (n+1)*cls]
		for c, zc := range z {
			dz[c] = math.Exp(zc - lse)
		}
		dz[d.Y[i]] -= 1
	}
	// Layer 2: gW2 = Σ dz hᵀ / m, gb2 = Σ dz / m.
	gw2, gb2 := g.T[W2], g.T[B2]
	for n := 0; n < m; n++ {
		h, dz := s.h[n*hid:(n+1)*hid], s.dz[n*cls:(n+1)*cls]
		for c, dzc := range dz {
			gb2[c] += dzc
			row := gw2[c*hid : (c+1)*hid]
			for j, hj := range h {
				row[j] += dzc * hj
			}
		}
	}
	divide(gw2, m)
	divide(gb2, m)
	if ready != nil {
		ready(W2)
		ready(B2)
	}

	// Layer 1: dh = W2ᵀ dz ⊙ (1 - h²); gW1 = Σ dh xᵀ / m, gb1 = Σ dh / m.
	gw1, gb1 := g.T[W1], g.T[B1]
	dh := s.dh
	for n, i := range idx {
		x := d.Row(i)
		h, dz := s.h[n*hid:(n+1)*hid], s.dz[n*cls:(n+1)*cls]
		for j, hj := range h {
			var a float64
			for c, dzc := range dz {
				a += w2[c*hid+j] * dzc
			}
			dh[j] = a * (1 - hj*hj)
		}
		for j, dhj := range dh {
			gb1[j] += dhj
			row := gw1[j*in : (j+1)*in]
			for k, xk := range x {
				row[k] += dhj * xk
			}
		}
	}
	divide(gw1, m)
	divide(gb1, m)
	if ready != nil {
		ready(W1)
		ready(B1)
	}
	return lossSum, correct
}

// divide divides by m rather than multiplying by 1/m, so that a mean over
// one sample is the sample itself.
func divide(v []float64, m int) {
	f := float64(m)
	for i := range v {
		v[i] /= f
	}
}

// Accuracy is the fraction of d that p classifies correctly.
func (p *Params) Accuracy(d *Dataset) float64 {
	hid := p.Hidden
	h := make([]float64, hid)
	correct := 0
	for i := 0; i < d.Len(); i++ {
		x := d.Row(i)
		for j := range h {
			a := p.T[B1][j]
			for k, xk := range x {
				a += p.T[W1][j*p.In+k] * xk
			}
			h[j] = math.Tanh(a)
		}
		best, bestZ := 0, math.Inf(-1)
		for c := 0; c < p.Classes; c++ {
			a := p.T[B2][c]
			for j, hj := range h {
				a += p.T[W2][c*hid+j] * hj
			}
			if a > bestZ {
				best, bestZ = c, a
			}
		}
		if best == d.Y[i] {
			correct++
		}
	}
	return float64(correct) / float64(d.Len())
}
