package codec

import (
	"math"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		desc string
		kv   map[string]string
		want Params
	}{
		{"nothing", map[string]string{}, Params{}},
		{"none", map[string]string{"compressor": "none"}, Params{}},
		{"onebit", map[string]string{"compressor": "onebit"}, Params{Codec: OneBit}},
		{"onebit scaling ef momentum", map[string]string{"compressor": "onebit_compressor", "scaling": "True", "ef": "vanilla_ef", "momentum": "nesterov"},
			Params{Codec: OneBit, Scaling: true, EF: true, Momentum: true, Mu: DefaultMu}},
		{"topk fraction", map[string]string{"compressor": "topk", "k": "0.01", "ef": "vanilla"}, Params{Codec: TopK, K: K{Fraction: 0.01}, EF: true}},
		{"topk count", map[string]string{"compressor": "TopK", "k": "100"}, Params{Codec: TopK, K: K{Count: 100}}},
		{"topk count as float", map[string]string{"compressor": "topk", "k": "100.0"}, Params{Codec: TopK, K: K{Count: 100}}},
		{"randomk seed", map[string]string{"compressor": "randomk", "k": "5", "seed": "18446744073709551615"}, Params{Codec: RandomK, K: K{Count: 5}, Seed: math.MaxUint64}},
		{"dithering defaults", map[string]string{"compressor": "dithering", "k": "8"}, Params{Codec: Dithering, Levels: 8}},
		{"dithering all", map[string]string{"compressor": "dithering", "k": "3", "partition": "natural", "normalize": "l2", "seed": "1"},
			Params{Codec: Dithering, Levels: 3, Natural: true, L2: true, Seed: 1}},
		{"fp16 alone", map[string]string{"fp16": "true"}, Params{Codec: FP16, FP16: true}},
		{"fp16 compressor", map[string]string{"compressor": "fp16"}, Params{Codec: FP16, FP16: true}},
		{"fp16 beside topk", map[string]string{"compressor": "topk", "k": "2", "fp16": "1"}, Params{Codec: TopK, K: K{Count: 2}, FP16: true}},
		{"bf16", map[string]string{"compressor": "bf16", "ef": "vanilla"}, Params{Codec: BF16, EF: true}},
		{"mu", map[string]string{"compressor": "onebit", "momentum": "nesterov", "mu": "0.5"}, Params{Codec: OneBit, Momentum: true, Mu: 0.5}},
		{"fp16 false", map[string]string{"fp16": "false"}, Params{}},
	} {
		got, err := Parse(tc.kv)
		if err != nil {
			t.Errorf("%s: %v", tc.desc, err)
			continue
		}
		if !got.Equal(tc.want) {
			t.Errorf("%s: got %+v, want %+v", tc.desc, got, tc.want)
		}
		// The descriptor carries it exactly.
		b := got.Encode(nil)
		if len(b) != DescriptorSize {
			t.Fatalf("%s: descriptor of %d bytes", tc.desc, len(b))
		}
		back, err := Decode(b)
		if err != nil || !back.Equal(got) {
			t.Errorf("%s: descriptor decodes to %+v, %v", tc.desc, back, err)
		}
		if got.Codec != None {
			if _, err := NewWorker(got); err != nil {
				t.Errorf("%s: NewWorker: %v", tc.desc, err)
			}
		}
		_ = got.String()
	}
}

func TestParseErrors(t *testing.T) {
	for _, tc := range []struct {
		kv   map[string]string
		want string // in the error
	}{
		{map[string]string{"compresor": "onebit"}, `unknown compression parameter "compresor"`},
		{map[string]string{"compressor": "twobit"}, `compressor="twobit": want onebit`},
		{map[string]string{"compressor": "topk"}, "needs parameter k"},
		{map[string]string{"compressor": "topk", "k": "0"}, "k=\"0\""},
		{map[string]string{"compressor": "topk", "k": "-3"}, "k=\"-3\""},
		{map[string]string{"compressor": "topk", "k": "1.5"}, "k=\"1.5\""},
		{map[string]string{"compressor": "topk", "k": "NaN"}, "k=\"NaN\""},
		{map[string]string{"compressor": "topk", "k": "1e20"}, "k=\"1e20\""},
		{map[string]string{"compressor": "onebit", "k": "3"}, "k applies to topk and randomk and dithering, not to compressor onebit"},
		{map[string]string{"compressor": "dithering", "k": "0.5"}, "number of levels"},
		{map[string]string{"compressor": "dithering", "k": "256"}, "number of levels"},
		{map[string]string{"compressor": "dithering", "k": "33", "partition": "natural"}, "at most 32 levels"},
		{map[string]string{"compressor": "dithering", "k": "3", "partition": "log"}, "linear or natural"},
		{map[string]string{"compressor": "dithering", "k": "3", "normalize": "l1"}, "max or l2"},
		{map[string]string{"compressor": "topk", "k": "3", "partition": "linear"}, "partition applies to dithering"},
		{map[string]string{"compressor": "topk", "k": "3", "scaling": "true"}, "scaling applies to onebit"},
		{map[string]string{"compressor": "onebit", "scaling": "yes"}, "scaling=\"yes\": want a boolean"},
		{map[string]string{"compressor": "onebit", "seed": "1"}, "seed applies to randomk and dithering"},
		{map[string]string{"compressor": "randomk", "k": "1", "seed": "-1"}, "unsigned 64-bit"},
		{map[string]string{"compressor": "onebit", "ef": "fancy"}, "vanilla or none"},
		{map[string]string{"compressor": "onebit", "momentum": "heavy"}, "nesterov or none"},
		{map[string]string{"compressor": "onebit", "mu": "0.5"}, "mu without momentum"},
		{map[string]string{"compressor": "onebit", "momentum": "nesterov", "mu": "1"}, "(0, 1)"},
		{map[string]string{"ef": "vanilla"}, "need a compressor"},
		{map[string]string{"fp16": "maybe"}, "fp16=\"maybe\""},
		{map[string]string{"compressor": "fp16", "fp16": "false"}, "compressor fp16 with fp16=false"},
		{map[string]string{"compressor": "bf16", "fp16": "true"}, "compressor bf16 with fp16=true"},
	} {
		_, err := Parse(tc.kv)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: error %v, want one saying %q", tc.kv, err, tc.want)
		}
	}
}

// TestDescriptor checks that Decode refuses what Encode cannot write.
func TestDescriptor(t *testing.T) {
	p, _ := Parse(map[string]string{"compressor": "dithering", "k": "4", "seed": "5", "ef": "vanilla"})
	good := p.Encode(nil)
	q, _ := Parse(map[string]string{"compressor": "dithering", "k": "4", "seed": "6", "ef": "vanilla"})
	if p.Equal(q) {
		t.Error("different seeds compare equal")
	}
	if _, err := Decode(good[:DescriptorSize-1]); err == nil {
		t.Error("short descriptor accepted")
	}
	for i, mut := range map[int]byte{
		0:  2,    // version
		1:  9,    // codec
		2:  0x80, // flags
		3:  0,    // no levels
		4:  1,    // k count for dithering
		28: 1,    // mu without momentum
	} {
		b := append([]byte(nil), good...)
		b[i] = mut
		if _, err := Decode(b); err == nil {
			t.Errorf("descriptor with byte %d = %#x accepted", i, mut)
		}
	}
	// Every single-bit change decodes to an error or to valid Params.
	for i := range good {
		for bit := 0; bit < 8; bit++ {
			b := append([]byte(nil), good...)
			b[i] ^= 1 << bit
			if q, err := Decode(b); err == nil {
				if err := q.Validate(); err != nil {
					t.Fatalf("Decode returned invalid %+v: %v", q, err)
				}
				if q.Equal(p) {
					t.Fatalf("bit %d of byte %d changed and the descriptor still equals the original", bit, i)
				}
			}
		}
	}
}
