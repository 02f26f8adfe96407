//go:build noasm

package e2e

// buildTags passes this test binary's noasm tag on to the programs it
// builds, so a noasm run exercises the pure-Go kernels end to end.
const buildTags = "noasm"
