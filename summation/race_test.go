//go:build race

package summation

// raceEnabled says the race detector is on: tests that run many schedules
// run fewer, as everything is several times slower.
const raceEnabled = true
