// Package scenario runs the scripted scenario tests of gobps's state
// machines (the scheduler's queue, the partition lifecycle, the verbs
// protocol), in the style of pebble's datadriven files: one command per
// line, '#' starts a comment, blank lines are ignored, and a command that
// produces a result states it after "->":
//
//	push key=1 prio=2 bytes=40
//	next                     -> key=1 prio=2 bytes=40
//
// Words are separated by blanks; a "double-quoted" word keeps its blanks
// (the quotes are dropped). A command that produces nothing (its step
// returns "" or "none") needs no "->"; one that produces something must
// state it. A mismatch fails the test with the script's file and line.
//
// Run the tests with -rewrite to write every command's result into the
// scripts instead of checking it: review the diff before committing it.
package scenario

import (
	"bufio"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var rewrite = flag.Bool("rewrite", false, "write the results into the scenario scripts instead of checking them")

// Step runs one command, given as its words, and returns what it produced
// ("" or "none" for nothing), or an error for a command that is malformed
// or broke an invariant.
type Step func(words []string) (string, error)

// Files runs every script matching pattern (e.g. "testdata/*.txt") as a
// subtest named after the file; start makes the step function of one
// script (a fresh state for each). It fails if no file matches.
func Files(t *testing.T, pattern string, start func(t *testing.T) Step) {
	t.Helper()
	files, err := filepath.Glob(pattern)
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Fatalf("no scenario files match %s", pattern)
	}
	for _, file := range files {
		t.Run(strings.TrimSuffix(filepath.Base(file), filepath.Ext(file)), func(t *testing.T) {
			File(t, file, start(t))
		})
	}
}

// File runs one script with step.
func File(t *testing.T, file string, step Step) {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []string
	in := bufio.NewScanner(f)
	for lineno := 1; in.Scan(); lineno++ {
		text := in.Text()
		line, comment, hasComment := strings.Cut(text, "#")
		cmd, want, hasWant := strings.Cut(line, "->")
		words, err := Words(cmd)
		if err != nil {
			t.Fatalf("%s:%d: %v", file, lineno, err)
		}
		want = strings.Join(strings.Fields(want), " ")
		if hasWant && want == "" {
			t.Fatalf("%s:%d: empty expectation after ->", file, lineno)
		}
		if len(words) == 0 {
			if hasWant {
				t.Fatalf("%s:%d: expectation without a command", file, lineno)
			}
			out = append(out, text)
			continue
		}
		got, err := step(words)
		if err != nil {
			t.Fatalf("%s:%d: %s: %v", file, lineno, strings.Join(words, " "), err)
		}
		if got == "none" && !hasWant {
			got = ""
		}
		if *rewrite {
			l := strings.TrimRight(cmd, " \t")
			if got != "" || hasWant {
				if got == "" {
					got = "none"
				}
				l += " -> " + got
			}
			if hasComment {
				l += "  #" + comment
			}
			out = append(out, l)
			continue
		}
		switch {
		case !hasWant && got == "":
		case !hasWant:
			t.Fatalf("%s:%d: %s: result not stated (add -> %s)", file, lineno, strings.Join(words, " "), got)
		case got != want:
			t.Fatalf("%s:%d: %s:\n got: %s\nwant: %s", file, lineno, strings.Join(words, " "), got, want)
		}
	}
	if err := in.Err(); err != nil {
		t.Fatal(err)
	}
	if *rewrite && !t.Failed() {
		if err := os.WriteFile(file, []byte(strings.Join(out, "\n")+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// Words splits a command into words, keeping "quoted words" whole.
func Words(s string) ([]string, error) {
	var out []string
	for {
		s = strings.TrimLeft(s, " \t")
		if s == "" {
			return out, nil
		}
		var w string
		if i := strings.Index(s, "\""); i >= 0 && !strings.ContainsAny(s[:i], " \t") {
			j := strings.Index(s[i+1:], "\"")
			if j < 0 {
				return nil, fmt.Errorf("unterminated quote in %q", s)
			}
			w, s = s[:i]+s[i+1:i+1+j], s[i+2+j:]
		} else if k := strings.IndexAny(s, " \t"); k >= 0 {
			w, s = s[:k], s[k:]
		} else {
			w, s = s, ""
		}
		out = append(out, w)
	}
}

// Args splits a command's words after the first into key=value pairs and
// the rest, in order. A word whose '=' comes after a blank (a quoted
// phrase) is not a pair.
func Args(words []string) (kv map[string]string, pos []string) {
	kv = map[string]string{}
	for _, w := range words {
		if k, v, ok := strings.Cut(w, "="); ok && !strings.ContainsAny(k, " \t") {
			kv[k] = v
		} else {
			pos = append(pos, w)
		}
	}
	return kv, pos
}
