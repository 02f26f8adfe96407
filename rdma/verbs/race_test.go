//go:build race

package verbs

// raceEnabled: the tests run under the race detector, which makes the
// randomized schedules about ten times slower.
const raceEnabled = true
