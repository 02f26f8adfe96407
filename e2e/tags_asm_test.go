//go:build !noasm

package e2e

const buildTags = ""
