package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/sessiond/sessiond/internal/devstack"
	"github.com/sessiond/sessiond/internal/seed"
	"github.com/sessiond/sessiond/internal/warm"
)

// Issue 9's targets for warming, printed beside the figures.
const (
	TargetWarmPerSecond       = 150_000
	TargetWarmBytesPerSession = 400
)

// WarmReport is what `sessionbench warm` measured.
type WarmReport struct {
	Command string       `json:"command"`
	Seed    seed.Summary `json:"seed"`
	Options struct {
		BatchSize int    `json:"batch_size"`
		Delay     string `json:"delay"`
		Window    string `json:"window"`
	} `json:"options"`
	Results []WarmResult `json:"results"`
}

func cmdWarm(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("warm", `sessionbench warm seeds a database (the demo shape of "compare") and warms every
warmable session (valid, active within --window) into Redis through sessiond's own
warm package and tiers.ConnectRedis, with --batch-size and --delay, once per
--engines: a fresh single redis-server, then a fresh 3-master Redis Cluster, each
with Redis's default configuration. It reports sessions/s, Redis memory per warmed
session (used_memory growth summed over every master, bookkeeping included) and
how the keys spread over the masters (DBSIZE per master).

Without --database-url it starts a throwaway PostgreSQL; with --redis-url it
measures that one Redis instead of starting engines (it must be empty).

Time: seeding dominates. Measured on the project's shared 2-core machine: 100k
sessions (140k rows with their users) in 3.5 s, 40,000 rows/s; 1M sessions (1.4M
rows) in 98-124 s, 11,000-14,000 rows/s, with the load average at 6-12 (the
"seeded" line says how long it took). Each warm then takes 17-46 s at today's speed:
the default run takes about 3 minutes; --sessions 100000 about 15 s.`, stderr)
	dbURL := fs.String("database-url", "", "Postgres URL of an empty database (empty: start a throwaway PostgreSQL)")
	redisURL := fs.String("redis-url", "", "an empty Redis to measure instead of starting --engines")
	sessions := fs.Int("sessions", 1_000_000, "sessions to seed (demo shape: 10% expired, some users banned or deleted, activity over 30 days)")
	users := fs.Int("users", 0, "users (0: 2 per 5 sessions)")
	s := fs.Int64("seed", 1, "data seed")
	batch := fs.Int("batch-size", 1000, fmt.Sprintf("sessions per Redis batch (at most %d)", warm.MaxBatchSize))
	delay := fs.Duration("delay", 0, "pause between batches")
	window := fs.Duration("window", 31*24*time.Hour, "warm sessions active within this window (the default covers every seeded session)")
	enginesS := fs.String("engines", EngineSingle+","+EngineCluster, "Redis engines to start and measure, in order: single, cluster")
	asJSON := fs.Bool("json", false, "print JSON instead of markdown")
	if err := parse(fs, args); err != nil {
		return err
	}
	engines, err := parseEngines(*enginesS)
	if err != nil {
		return err
	}
	if *sessions < 1 || *batch < 1 || *batch > warm.MaxBatchSize {
		return fmt.Errorf("warm: want --sessions >= 1 and --batch-size in [1, %d]", warm.MaxBatchSize)
	}
	rep := WarmReport{Command: commandLine(append([]string{"warm"}, args...))}
	rep.Options.BatchSize, rep.Options.Delay, rep.Options.Window = *batch, delay.String(), window.String()
	progress := progressTo(stderr)
	st := &stack{progress: progress}
	defer st.stop()
	if *dbURL, err = st.postgres(ctx, *dbURL, devstack.PostgresOptions{}); err != nil {
		return err
	}
	progress("seeding %d sessions…", *sessions)
	rep.Seed, err = loadSeed(ctx, *dbURL, seedOptions(*users, *sessions, *s), func(seed.Truth) error { return nil })
	if err != nil {
		return fmt.Errorf("seed: %w", err)
	}
	progress("seeded %s", summaryLine(rep.Seed))
	pool, err := pgxpool.New(ctx, *dbURL)
	if err != nil {
		return err
	}
	defer pool.Close()
	o := WarmOptions{Count: *sessions, BatchSize: *batch, Delay: *delay, Window: *window,
		Log: slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))}

	measure := func(engine, url string) error {
		progress("%s: warming…", engine)
		res, err := MeasureWarm(ctx, pool, url, o)
		res.Engine = engine
		if err != nil {
			return fmt.Errorf("%s: %w", engine, err)
		}
		rep.Results = append(rep.Results, res)
		progress("%s: %d warmed in %.2f s: %.0f sessions/s, %.0f B/session, CPU s Redis / Postgres / warmer %s", engine, res.Warmed, res.Seconds, res.PerSecond, res.BytesPerSession, cpuSplit(res))
		return nil
	}
	if *redisURL != "" {
		err = measure("given", *redisURL)
	} else {
		for _, e := range engines {
			url, stop, serr := startEngine(ctx, e, progress)
			if serr != nil {
				err = serr
				break
			}
			err = measure(e, url)
			stop()
			if err != nil {
				break
			}
		}
	}
	if len(rep.Results) > 0 {
		if werr := writeReport(stdout, *asJSON, rep, func(w io.Writer) { WriteWarm(w, rep) }); werr != nil {
			return errors.Join(err, werr)
		}
	}
	return err
}

// WriteWarm writes a warm report as markdown: the command, the seed, one
// row per engine, and the keys per master.
func WriteWarm(w io.Writer, rep WarmReport) {
	fmt.Fprintf(w, "command: `%s`\n\nseeded: %s\nbatch size %d, delay %s, window %s\n\n", rep.Command, summaryLine(rep.Seed),
		rep.Options.BatchSize, rep.Options.Delay, rep.Options.Window)
	fmt.Fprintln(w, "| engine | warmable | warmed | seconds | sessions/s | Redis B/session | CPU s: Redis (all masters) / Postgres / warmer | keys per master (DBSIZE) |")
	fmt.Fprintln(w, "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
	for _, r := range rep.Results {
		keys := make([]string, len(r.Masters))
		for i, m := range r.Masters {
			keys[i] = fmt.Sprintf("%d", m.Keys)
		}
		fmt.Fprintf(w, "| %s | %d | %d | %.2f | %.0f | %.0f | %s | %s |\n", r.Engine, r.Found, r.Warmed, r.Seconds, r.PerSecond,
			r.BytesPerSession, cpuSplit(r), strings.Join(keys, " / "))
	}
	fmt.Fprintf(w, "\ntargets (issue 9): ≥ %d sessions/s, ≤ %d B/session with Redis's defaults\n", TargetWarmPerSecond, TargetWarmBytesPerSession)
}

// cpuSplit is a run's CPU seconds, Redis / Postgres / warmer ("?" for a
// Postgres on another machine).
func cpuSplit(r WarmResult) string {
	pg := "?"
	if r.PostgresCPUSeconds != nil {
		pg = fmt.Sprintf("%.2f", *r.PostgresCPUSeconds)
	}
	return fmt.Sprintf("%.2f / %s / %.2f", r.RedisCPUSeconds, pg, r.WarmerCPUSeconds)
}
