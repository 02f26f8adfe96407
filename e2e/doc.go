// Package e2e holds gobps's end-to-end tests: real bpsrun, coordinator,
// server and worker processes on loopback, checked from the outside.
package e2e
