package proto

import "fmt"

// DType is the element type of a tensor.
type DType uint8

// The element types gobps moves and sums. The zero value is not a dtype, so a
// header that carries no tensor data has DType 0.
const (
	Float32 DType = iota + 1
	Float64
	Float16
	BFloat16
	Int32
	Int64
	Uint8
	maxDType
)

var dtypeNames = [...]string{
	Float32:  "float32",
	Float64:  "float64",
	Float16:  "float16",
	BFloat16: "bfloat16",
	Int32:    "int32",
	Int64:    "int64",
	Uint8:    "uint8",
}

var dtypeSizes = [...]int{
	Float32:  4,
	Float64:  8,
	Float16:  2,
	BFloat16: 2,
	Int32:    4,
	Int64:    8,
	Uint8:    1,
}

// Valid reports whether d names a dtype.
func (d DType) Valid() bool { return d > 0 && d < maxDType }

// Size is the size of one element in bytes, or 0 for an invalid dtype.
func (d DType) Size() int {
	if !d.Valid() {
		return 0
	}
	return dtypeSizes[d]
}

// IsFloat reports whether d is a floating-point type (averaging is defined).
func (d DType) IsFloat() bool {
	return d == Float32 || d == Float64 || d == Float16 || d == BFloat16
}

func (d DType) String() string {
	if !d.Valid() {
		return fmt.Sprintf("dtype(%d)", uint8(d))
	}
	return dtypeNames[d]
}

// ParseDType maps a name such as "float32" to its DType.
func ParseDType(s string) (DType, error) {
	for d := Float32; d < maxDType; d++ {
		if dtypeNames[d] == s {
			return d, nil
		}
	}
	return 0, fmt.Errorf("proto: unknown dtype %q", s)
}

// AllDTypes lists every valid dtype, in numeric order.
func AllDTypes() []DType {
	out := make([]DType, 0, int(maxDType)-1)
	for d := Float32; d < maxDType; d++ {
		out = append(out, d)
	}
	return out
}
