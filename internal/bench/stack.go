package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"

	"github.com/sessiond/sessiond/internal/devstack"
)

// progressTo returns a printer of one progress line per call to w (nil:
// nothing printed).
func progressTo(w io.Writer) func(format string, a ...any) {
	return func(format string, a ...any) {
		if w != nil {
			fmt.Fprintf(w, format+"\n", a...)
		}
	}
}

// stack is the throwaway servers a command started; stop stops them, the
// last started first.
type stack struct {
	progress func(format string, a ...any)
	stops    []func()
	pg       *devstack.Postgres // the throwaway PostgreSQL, if one was started
}

func (s *stack) stop() {
	for i := len(s.stops) - 1; i >= 0; i-- {
		s.stops[i]()
	}
	s.stops = nil
}

// postgres returns url, or when it is empty starts a throwaway PostgreSQL
// and returns the URL of a new database on it.
func (s *stack) postgres(ctx context.Context, url string, opts devstack.PostgresOptions) (string, error) {
	if url != "" {
		return url, nil
	}
	s.progress("starting a throwaway PostgreSQL…")
	pg, err := devstack.StartPostgres(ctx, opts)
	if err != nil {
		return "", err
	}
	s.stops = append(s.stops, func() { _ = pg.Stop() })
	s.pg = pg
	return pg.CreateDatabase(ctx, "sessionbench")
}

// redis returns url, or when it is empty starts a throwaway redis-server
// (Redis's default configuration) and returns its URL.
func (s *stack) redis(ctx context.Context, url string) (string, error) {
	if url != "" {
		return url, nil
	}
	u, stop, err := startEngine(ctx, EngineSingle, s.progress)
	if err != nil {
		return "", err
	}
	s.stops = append(s.stops, stop)
	return u, nil
}

// Redis engines a command can start.
const (
	EngineSingle  = "single"  // one redis-server
	EngineCluster = "cluster" // a Redis Cluster of three masters
)

// startEngine starts a throwaway Redis of the engine's kind, with Redis's
// default configuration, and returns its URL and how to stop it.
func startEngine(ctx context.Context, engine string, progress func(string, ...any)) (string, func(), error) {
	switch engine {
	case EngineSingle:
		progress("starting a throwaway redis-server…")
		rs, err := devstack.StartRedis(ctx, devstack.RedisOptions{})
		if err != nil {
			return "", nil, err
		}
		return rs.URL(), func() { _ = rs.Stop() }, nil
	case EngineCluster:
		progress("starting a throwaway Redis Cluster (3 masters)…")
		rc, err := devstack.StartRedisCluster(ctx, devstack.RedisClusterOptions{})
		if err != nil {
			return "", nil, err
		}
		return rc.URL(), func() { _ = rc.Stop() }, nil
	}
	return "", nil, fmt.Errorf("unknown redis engine %q (want %s or %s)", engine, EngineSingle, EngineCluster)
}

// parseEngines reads a comma-separated list of engines.
func parseEngines(s string) ([]string, error) {
	var out []string
	for e := range strings.SplitSeq(s, ",") {
		e = strings.TrimSpace(e)
		switch e {
		case EngineSingle, EngineCluster:
		default:
			return nil, fmt.Errorf("invalid --engines %q: %q is not %s or %s", s, e, EngineSingle, EngineCluster)
		}
		if slices.Contains(out, e) {
			return nil, fmt.Errorf("invalid --engines %q: %s given twice", s, e)
		}
		out = append(out, e)
	}
	return out, nil
}

// writeReport prints rep as indented JSON, or as markdown by md.
func writeReport(w io.Writer, asJSON bool, rep any, md func(io.Writer)) error {
	if !asJSON {
		md(w)
		return nil
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(rep)
}

// sessiondLog is sessiond's log at level (a slog level name), in text to w.
func sessiondLog(w io.Writer, level string) (*slog.Logger, error) {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("invalid --log-level: %w", err)
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: lvl})), nil
}

// commandLine renders a sessionbench invocation for a report, each argument
// quoted for a POSIX shell when it needs it, so that it can be pasted and
// run again.
func commandLine(args []string) string {
	parts := []string{"sessionbench"}
	for _, a := range args {
		parts = append(parts, shellQuote(a))
	}
	return strings.Join(parts, " ")
}

func shellQuote(s string) string {
	if s != "" && strings.IndexFunc(s, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_./:=,@%+", r))
	}) < 0 {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
