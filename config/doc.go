// Package config is gobps's environment contract: every environment variable
// a gobps process reads, parsed once into a Config and validated.
//
// Nothing else in gobps calls os.Getenv. A process calls FromEnv once at
// start-up (or Parse with its own lookup function in tests), hands the
// resulting *Config down to the packages that need it, and exits non-zero
// with the returned error if there is one.
//
// The variable names are those of BytePS and ps-lite (DMLC_*, BYTEPS_*), so
// existing launch scripts work unchanged; variables that only gobps has are
// named GOBPS_*. Variables lists them all with their defaults, and
// docs/env.md is checked against it by a test.
//
// # Parsing rules
//
//   - A variable that is unset, empty or only white space counts as unset and
//     takes its default; surrounding white space is trimmed from values.
//   - Integers are decimal.
//   - Booleans are 0, 1, true or false, in any case.
//   - Durations are Go durations ("500ms", "5s", "1m30s") or a plain number of
//     seconds ("5", "0.5").
//   - DMLC_ROLE is case-insensitive and stored lower-case; BYTEPS_LOG_LEVEL is
//     case-insensitive and stored upper-case.
//   - BYTEPS_PARTITION_BYTES is rounded down to a whole number of pages
//     (proto.RoundPartitionBytes), never below one page.
//   - BYTEPS_SCHEDULING_CREDIT is a number of bytes, except that, as in BytePS,
//     a value from 1 to 64 counts partitions (credit = value ×
//     PartitionBytes); 0 or unset means four partitions.
//
// # Errors
//
// Unlike BytePS, which carries on (or exits 0) when a variable is missing or
// malformed, Parse and Validate report every problem at once, joined with
// errors.Join, each naming the variable and its bad value:
//
//	config: DMLC_NUM_WORKER is required (number of worker machines)
//	config: DMLC_PS_ROOT_PORT="abc": not an integer
//
// Neither ever panics, whatever the input.
package config
