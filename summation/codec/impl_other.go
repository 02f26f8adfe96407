//go:build !amd64 || noasm || !gc

package codec

// available lists the implementations this build runs: without assembly
// (another architecture, gccgo, or the noasm tag), only "generic".
func available() []*impl { return []*impl{generic} }
