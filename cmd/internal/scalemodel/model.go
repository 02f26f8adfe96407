package scalemodel

import (
	"errors"
	"fmt"
	"slices"
	"strings"
)

// Layer is one gradient tensor and the compute that produces it.
type Layer struct {
	Name     string
	Bytes    int     // gradient bytes (float32: 4 per parameter)
	Forward  float64 // seconds of the forward pass spent in its operation
	Backward float64 // seconds of backprop until its gradient is ready, after the layer above's
}

// Model is a network's gradients in forward (declaration) order: backprop
// produces them from the last to the first.
type Model struct {
	Name   string
	GPU    string // the GPU the compute times are for
	Batch  string // the batch they are for, in words
	Source string // where the sizes and times come from
	Layers []Layer
}

// Validate reports a model the simulator cannot run.
func (m Model) Validate() error {
	if len(m.Layers) == 0 {
		return fmt.Errorf("scalemodel: model %q has no layers", m.Name)
	}
	var errs []error
	for i, l := range m.Layers {
		if l.Bytes <= 0 || l.Forward < 0 || l.Backward < 0 {
			errs = append(errs, fmt.Errorf("layer %d (%s): bytes %d, forward %v, backward %v", i, l.Name, l.Bytes, l.Forward, l.Backward))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("scalemodel: model %q: %w", m.Name, err)
	}
	return nil
}

// Bytes is the gradient bytes of one iteration.
func (m Model) Bytes() int {
	n := 0
	for _, l := range m.Layers {
		n += l.Bytes
	}
	return n
}

// Forward is the time of the forward pass.
func (m Model) Forward() float64 {
	t := 0.0
	for _, l := range m.Layers {
		t += l.Forward
	}
	return t
}

// Compute is forward plus backward: one iteration on one GPU.
func (m Model) Compute() float64 {
	t := 0.0
	for _, l := range m.Layers {
		t += l.Forward + l.Backward
	}
	return t
}

// Tensor is a model of one tensor of bytes and no compute: what bpsbench
// psworker push_pulls.
func Tensor(bytes int) Model {
	return Model{Name: fmt.Sprintf("tensor %d B", bytes), Source: "one float32 tensor, no compute (bpsbench psworker)",
		Layers: []Layer{{Name: "tensor", Bytes: bytes}}}
}

// PSWorker is what bpsbench psworker declares: a one-element barrier
// tensor first, then the tensor of bytes it times, with no compute. The
// barrier matters only for where the balancer puts the tensor's
// partitions (its 4 bytes go to the first server first); its own 4-byte
// push is in the simulated iteration too, a few microseconds.
func PSWorker(bytes int) Model {
	return Model{Name: fmt.Sprintf("psworker %d B", bytes), Source: "bpsbench psworker: a 4-byte barrier tensor, then one float32 tensor, no compute",
		Layers: []Layer{{Name: "barrier", Bytes: 4}, {Name: "tensor", Bytes: bytes}}}
}

// flopLayer is a tensor with the forward FLOPs of its operation, before
// they are turned into seconds.
type flopLayer struct {
	name   string
	params int
	flops  float64 // forward FLOPs per sample (multiply and add counted as 2)
}

// timed turns FLOPs into seconds at a sustained rate: the forward pass at
// flops/rate, backprop at twice that (the gradients of the input and of
// the weights each cost about one forward).
func timed(ls []flopLayer, batch, rate float64) []Layer {
	out := make([]Layer, len(ls))
	for i, l := range ls {
		f := l.flops * batch / rate
		out[i] = Layer{Name: l.name, Bytes: 4 * l.params, Forward: f, Backward: 2 * f}
	}
	return out
}

// Presets are the models bpsbench model knows by name.
var presetNames = []string{"resnet50", "vgg16", "bert-large", "gpt2-1.5b"}

// PresetNames lists the presets.
func PresetNames() []string { return slices.Clone(presetNames) }

// Preset returns a model by name (see PresetNames).
func Preset(name string) (Model, error) {
	switch strings.ToLower(name) {
	case "resnet50", "resnet-50":
		return resnet50(), nil
	case "vgg16", "vgg-16":
		return vgg16(), nil
	case "bert-large", "bert":
		return bertLarge(), nil
	case "gpt2-1.5b", "gpt2", "gpt-2":
		return gpt2XL(), nil
	}
	return Model{}, fmt.Errorf("scalemodel: no preset %q (have %s)", name, strings.Join(presetNames, ", "))
}

// The sustained rates that turn FLOPs into seconds. They are assumptions,
// stated so they can be checked: each gives the throughput docs/scale.md
// prints beside it, to compare with what a reader knows of a V100.
const (
	v100FP32Conv = 9e12  // FP32 convolutions, ~58% of the V100-SXM2's 15.7 TFLOP/s
	v100FP16     = 40e12 // mixed-precision transformer layers, ~32% of its 125 TFLOP/s (tensor cores)
)

// resnet50 is torchvision's ResNet-50 (v1.5: the stride on the 3×3
// convolution), 224×224 input: every convolution's weight and every batch
// norm's weight and bias, as PyTorch registers them.
func resnet50() Model {
	var ls []flopLayer
	conv := func(name string, k, cin, cout, hw int) {
		ls = append(ls, flopLayer{name + ".weight", k * k * cin * cout, 2 * float64(k*k*cin*cout*hw*hw)})
	}
	bn := func(name string, c, hw int) {
		// a few elementwise operations per activation
		ls = append(ls, flopLayer{name + ".weight", c, 4 * float64(c*hw*hw)}, flopLayer{name + ".bias", c, 0})
	}
	conv("conv1", 7, 3, 64, 112)
	bn("bn1", 64, 112)
	in := 64
	for s, blocks := range []int{3, 4, 6, 3} {
		w := 64 << s
		hw := 56 >> s
		for b := range blocks {
			p := fmt.Sprintf("layer%d.%d", s+1, b)
			hin := hw
			if b == 0 && s > 0 {
				hin = hw * 2
			}
			conv(p+".conv1", 1, in, w, hin)
			bn(p+".bn1", w, hin)
			conv(p+".conv2", 3, w, w, hw)
			bn(p+".bn2", w, hw)
			conv(p+".conv3", 1, w, 4*w, hw)
			bn(p+".bn3", 4*w, hw)
			if b == 0 {
				conv(p+".downsample.0", 1, in, 4*w, hw)
				bn(p+".downsample.1", 4*w, hw)
			}
			in = 4 * w
		}
	}
	ls = append(ls, flopLayer{"fc.weight", 2048 * 1000, 2 * 2048 * 1000}, flopLayer{"fc.bias", 1000, 0})
	const batch = 64
	return Model{Name: "ResNet-50", GPU: "V100-SXM2, FP32", Batch: "64 images of 224×224 per GPU",
		Source: "tensor shapes of torchvision resnet50 (25.6 M parameters, 161 tensors); forward FLOPs per layer from the shapes (4.1 G multiply-adds per image), backprop 2× forward, at an assumed sustained 9 TFLOP/s",
		Layers: timed(ls, batch, v100FP32Conv)}
}

// vgg16 is torchvision's VGG-16 (no batch norm), 224×224 input.
func vgg16() Model {
	var ls []flopLayer
	cfg := []int{64, 64, 0, 128, 128, 0, 256, 256, 256, 0, 512, 512, 512, 0, 512, 512, 512, 0}
	in, hw, i := 3, 224, 0
	for _, c := range cfg {
		if c == 0 {
			hw /= 2
			i++
			continue
		}
		name := fmt.Sprintf("features.%d", i)
		ls = append(ls, flopLayer{name + ".weight", 9 * in * c, 2 * float64(9*in*c*hw*hw)}, flopLayer{name + ".bias", c, 0})
		in = c
		i += 2
	}
	for j, fc := range [][2]int{{512 * 7 * 7, 4096}, {4096, 4096}, {4096, 1000}} {
		name := fmt.Sprintf("classifier.%d", 3*j)
		ls = append(ls, flopLayer{name + ".weight", fc[0] * fc[1], 2 * float64(fc[0]*fc[1])}, flopLayer{name + ".bias", fc[1], 0})
	}
	const batch = 64
	return Model{Name: "VGG-16", GPU: "V100-SXM2, FP32", Batch: "64 images of 224×224 per GPU",
		Source: "tensor shapes of torchvision vgg16 (138.4 M parameters, 32 tensors; the first fully connected layer alone is 411 MB); forward FLOPs from the shapes (15.5 G multiply-adds per image), backprop 2× forward, at an assumed sustained 9 TFLOP/s",
		Layers: timed(ls, batch, v100FP32Conv)}
}

// transformer appends one encoder or decoder layer's tensors: attention
// (q, k, v and out projections, fused or not), two layer norms and the
// feed-forward pair; flops per token.
func transformer(ls []flopLayer, p string, d, ff, seq int, fused bool) []flopLayer {
	mm := func(name string, in, out int) {
		ls = append(ls, flopLayer{name + ".weight", in * out, 2 * float64(in*out)}, flopLayer{name + ".bias", out, 0})
	}
	ln := func(name string) {
		ls = append(ls, flopLayer{name + ".weight", d, 5 * float64(d)}, flopLayer{name + ".bias", d, 0})
	}
	if fused {
		mm(p+".attn.c_attn", d, 3*d)
	} else {
		mm(p+".attention.query", d, d)
		mm(p+".attention.key", d, d)
		mm(p+".attention.value", d, d)
	}
	// the attention scores and their weighted sum: 2·seq·d each per token,
	// charged to the output projection, which runs right after them
	mm(p+".attention.output", d, d)
	ls[len(ls)-2].flops += 4 * float64(seq*d)
	ln(p + ".ln1")
	mm(p+".ffn.in", d, ff)
	mm(p+".ffn.out", ff, d)
	ln(p + ".ln2")
	return ls
}

// bertLarge is BERT-large (24 layers, hidden 1024, 16 heads, FFN 4096,
// vocabulary 30522), pre-training at sequence length 128.
func bertLarge() Model {
	const d, seq = 1024, 128
	ls := []flopLayer{
		// the masked-LM decoder is tied to the word embeddings: its matmul
		// over the 15% masked positions is charged to them
		{"embeddings.word", 30522 * d, 0.15 * 2 * 30522 * d},
		{"embeddings.position", 512 * d, 0},
		{"embeddings.token_type", 2 * d, 0},
		{"embeddings.ln.weight", d, 5 * d}, {"embeddings.ln.bias", d, 0},
	}
	for i := range 24 {
		ls = transformer(ls, fmt.Sprintf("encoder.%d", i), d, 4*d, seq, false)
	}
	ls = append(ls, flopLayer{"pooler.weight", d * d, 0}, flopLayer{"pooler.bias", d, 0},
		flopLayer{"cls.transform.weight", d * d, 0.15 * 2 * d * d}, flopLayer{"cls.transform.bias", d, 0},
		flopLayer{"cls.ln.weight", d, 0}, flopLayer{"cls.ln.bias", d, 0}, flopLayer{"cls.decoder.bias", 30522, 0})
	const tokens = 64 * seq
	return Model{Name: "BERT-large", GPU: "V100-SXM2, mixed precision (gradients summed as float32)", Batch: "64 sequences of 128 tokens per GPU",
		Source: "tensor shapes of BERT-large (Devlin et al. 2019: 24 layers, hidden 1024, FFN 4096; 336 M parameters with the masked-LM head, 396 tensors); forward FLOPs 2 per parameter per token plus attention, backprop 2× forward, at an assumed sustained 40 TFLOP/s",
		Layers: timed(ls, tokens, v100FP16)}
}

// gpt2XL is GPT-2 1.5B (48 layers, hidden 1600, FFN 6400, vocabulary
// 50257, context 1024).
func gpt2XL() Model {
	const d, seq = 1600, 1024
	ls := []flopLayer{
		// the output layer is tied to the token embeddings
		{"wte", 50257 * d, 2 * 50257 * d},
		{"wpe", seq * d, 0},
	}
	for i := range 48 {
		ls = transformer(ls, fmt.Sprintf("h.%d", i), d, 4*d, seq, true)
	}
	ls = append(ls, flopLayer{"ln_f.weight", d, 5 * d}, flopLayer{"ln_f.bias", d, 0})
	const tokens = 4 * seq
	return Model{Name: "GPT-2 1.5B", GPU: "V100-SXM2 32 GB, mixed precision (gradients summed as float32)", Batch: "4 sequences of 1024 tokens per GPU",
		Source: "tensor shapes of GPT-2 XL (Radford et al. 2019: 48 layers, hidden 1600; 1.56 G parameters, 580 tensors); forward FLOPs 2 per parameter per token plus attention, backprop 2× forward, at an assumed sustained 40 TFLOP/s. Data parallelism alone: whether its optimizer state fits a 32 GB GPU is not modelled",
		Layers: timed(ls, tokens, v100FP16)}
}
