// Package logging is how gobps's programs (bpsrun and the roles it runs)
// and its C library write log lines: zerolog, as readable console lines
// by default or, with GOBPS_LOG_FORMAT=json, one JSON object a line for
// log collectors. Every line names the process's role and rank; JSON
// lines add host and pid. Libraries (core, cluster, server, ...) do not
// log themselves: they return errors and take a Logf hook, which this
// package provides.
package logging

import (
	"fmt"
	"io"
	"os"
	"strings"
	"sync/atomic"

	"github.com/mattn/go-isatty"
	"github.com/rs/zerolog"
)

// Field names of every line.
const (
	FieldRole = "role"
	FieldRank = "rank"
	FieldHost = "host"
	FieldPID  = "pid"
	FieldKey  = "key"
)

// timeFormat is the JSON lines' time: RFC 3339 with milliseconds.
const timeFormat = "2006-01-02T15:04:05.000Z07:00"

func init() {
	zerolog.TimeFieldFormat = timeFormat
}

// JSON is GOBPS_LOG_FORMAT's value for JSON lines (config.LogJSON); any
// other value (console) gives readable console lines.
const JSON = "json"

// Options describe a Logger.
type Options struct {
	Format  string // GOBPS_LOG_FORMAT: "console" (or "") or "json"
	Level   string // BYTEPS_LOG_LEVEL's value, such as "WARNING"
	Verbose bool   // log at DEBUG whatever Level says (bpsrun -v)
	Role    string // scheduler, server, worker, coordinator, bpsrun, ...
	Rank    int    // -1 while unknown; see SetRank
}

// Logger writes a process's log lines. Its rank can change once it is
// known (after joining the job); it is safe for concurrent use.
type Logger struct {
	zl   zerolog.Logger
	rank atomic.Int64
}

// Level maps BYTEPS_LOG_LEVEL's values onto zerolog's levels (TRACE and
// DEBUG are DEBUG; ERROR and FATAL are ERROR; anything else is WARNING).
func Level(s string, verbose bool) zerolog.Level {
	if verbose {
		return zerolog.DebugLevel
	}
	switch strings.ToUpper(s) {
	case "TRACE", "DEBUG":
		return zerolog.DebugLevel
	case "INFO":
		return zerolog.InfoLevel
	case "ERROR", "FATAL":
		return zerolog.ErrorLevel
	}
	return zerolog.WarnLevel
}

// New returns a Logger writing to w.
func New(w io.Writer, o Options) *Logger {
	var zl zerolog.Logger
	if strings.EqualFold(o.Format, JSON) {
		host, _ := os.Hostname()
		zl = zerolog.New(w).With().Timestamp().Str(FieldRole, o.Role).
			Str(FieldHost, host).Int(FieldPID, os.Getpid()).Logger()
	} else {
		cw := zerolog.ConsoleWriter{Out: w, NoColor: !isTerminal(w), TimeFormat: "15:04:05.000",
			PartsOrder:    []string{zerolog.TimestampFieldName, zerolog.LevelFieldName, FieldRole, FieldRank, zerolog.MessageFieldName},
			FieldsExclude: []string{FieldRole, FieldRank}}
		// Full level names (INFO, WARN, ERROR, DEBUG), as the lines of
		// Go's slog and of Python's logging read, rather than zerolog's
		// three letters: scripts and people grep for WARN.
		cw.FormatLevel = func(v any) string {
			if s, ok := v.(string); ok && s != "" {
				return fmt.Sprintf("%-5s", strings.ToUpper(s))
			}
			return "-    " // a line with no level (Logf's NOTICE)
		}
		cw.FormatPartValueByName = func(v any, name string) string {
			if v == nil {
				return ""
			}
			return fmt.Sprintf("%s=%v", name, v)
		}
		zl = zerolog.New(cw).With().Timestamp().Str(FieldRole, o.Role).Logger()
	}
	l := &Logger{zl: zl.Level(Level(o.Level, o.Verbose))}
	l.rank.Store(int64(o.Rank))
	return l
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && (isatty.IsTerminal(f.Fd()) || isatty.IsCygwinTerminal(f.Fd()))
}

// SetRank names rank on the lines from now on.
func (l *Logger) SetRank(rank int) { l.rank.Store(int64(rank)) }

func (l *Logger) event(ev *zerolog.Event) *zerolog.Event {
	return ev.Int(FieldRank, int(l.rank.Load()))
}

// Debugf logs at DEBUG.
func (l *Logger) Debugf(format string, a ...any) {
	l.event(l.zl.Debug()).Msgf(format, a...)
}

// Infof logs at INFO.
func (l *Logger) Infof(format string, a ...any) {
	l.event(l.zl.Info()).Msgf(format, a...)
}

// Warnf logs at WARN.
func (l *Logger) Warnf(format string, a ...any) {
	l.event(l.zl.Warn()).Msgf(format, a...)
}

// Errorf logs at ERROR.
func (l *Logger) Errorf(format string, a ...any) {
	l.event(l.zl.Error()).Msgf(format, a...)
}

// Logf is the roles' and libraries' hook: a line at INFO, or at WARN when
// it starts with "WARNING: " (such as the notice that a job is
// unauthenticated, which must show at the default level), or with no level
// (shown at every level: the progress lines someone asked for) when it
// starts with "NOTICE: ", without that prefix.
func (l *Logger) Logf(format string, a ...any) {
	msg := fmt.Sprintf(format, a...)
	if rest, ok := strings.CutPrefix(msg, "WARNING: "); ok {
		l.event(l.zl.Warn()).Msg(rest)
		return
	}
	if rest, ok := strings.CutPrefix(msg, "NOTICE: "); ok {
		l.event(l.zl.Log()).Msg(rest)
		return
	}
	l.event(l.zl.Info()).Msg(msg)
}

// KeyLogf logs a line about one key as Logf does, with the key (as the
// messages write it: "tensor.partition") in the key field, so that a log
// collector can select every line about one tensor.
func (l *Logger) KeyLogf(key string, format string, a ...any) {
	msg := fmt.Sprintf(format, a...)
	ev := l.zl.Info()
	if rest, ok := strings.CutPrefix(msg, "WARNING: "); ok {
		ev, msg = l.zl.Warn(), rest
	}
	l.event(ev).Str(FieldKey, key).Msg(msg)
}
