// Package lint holds no code: its test, TestForbiddenImports, enforces the
// import direction of DESIGN.md §5 (which gobps packages may import which).
package lint
