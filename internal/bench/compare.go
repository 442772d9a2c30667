package bench

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"time"

	"github.com/sessiond/sessiond/internal/devstack"
	"github.com/sessiond/sessiond/internal/seed"
)

// Scenario names, in the order compare runs them.
const (
	ScenarioSessiond       = "sessiond"
	ScenarioSessiondTraced = "sessiond, tracing on"
	ScenarioSessiondNoLoc  = "sessiond, no local cache"
	ScenarioDirectPostgres = "direct postgres"
	ScenarioIdeal          = "ideal cache"
	ScenarioNoop           = "no-op gRPC"
)

// Scenarios lists every scenario, in the order Compare runs them.
var Scenarios = []string{ScenarioSessiond, ScenarioSessiondTraced, ScenarioSessiondNoLoc, ScenarioDirectPostgres, ScenarioIdeal, ScenarioNoop}

// CompareOptions configures Compare.
type CompareOptions struct {
	DatabaseURL string // empty: start a throwaway PostgreSQL
	RedisURL    string // empty: start a throwaway redis-server
	Users       int    // <= 0: 2 per 5 sessions
	Sessions    int
	Seed        int64
	Duration    time.Duration // per scenario and mode
	Concurrency int           // closed-loop callers of the first mode (the second has 1)
	Rate        float64       // > 0 adds an open-loop mode at this rate
	Conns       int           // gRPC connections per run (at most one per caller)
	PoolSize    int           // Postgres pool of the direct baseline (sessiond uses its default, 8)
	Mix         Mix
	Timeout     time.Duration // per call
	Log         *slog.Logger  // sessiond's log
	Progress    io.Writer     // one line per step
	Scenarios   []string      // nil: all of Scenarios
	DevStack    devstack.PostgresOptions
}

// CompareReport is what Compare measured.
type CompareReport struct {
	Command string       `json:"command,omitempty"` // the sessionbench command line, when run by one
	Seed    seed.Summary `json:"seed"`
	Mix     string       `json:"mix"`
	Results []Result     `json:"results"`
}

// Compare seeds a database and drives the same traffic against each
// scenario: sessiond (in process, config.Default with every seeded session
// warmed), sessiond without its in-process cache, a direct-Postgres gRPC
// server (one query per call) and a no-op gRPC server, each over real TCP on
// 127.0.0.1 with real gRPC clients, in this one process. Servers it starts
// are stopped, and their files removed, before it returns, also when ctx
// ends early (it then returns what it measured with ctx's error).
func Compare(ctx context.Context, o CompareOptions) (rep CompareReport, err error) {
	progress := progressTo(o.Progress)
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.Concurrency < 1 || o.Duration <= 0 || o.Sessions < 1 {
		return rep, fmt.Errorf("compare: want concurrency >= 1, duration > 0, sessions >= 1 (got %d, %s, %d)", o.Concurrency, o.Duration, o.Sessions)
	}
	rep.Mix = o.Mix.String()
	st := &stack{progress: progress}
	defer st.stop()
	if o.DatabaseURL, err = st.postgres(ctx, o.DatabaseURL, o.DevStack); err != nil {
		return rep, err
	}
	if o.RedisURL, err = st.redis(ctx, o.RedisURL); err != nil {
		return rep, err
	}

	var truth []seed.Truth
	rep.Seed, err = loadSeed(ctx, o.DatabaseURL, seedOptions(o.Users, o.Sessions, o.Seed), func(t seed.Truth) error {
		truth = append(truth, t)
		return nil
	})
	if err != nil {
		return rep, fmt.Errorf("seed: %w", err)
	}
	progress("seeded %s", summaryLine(rep.Seed))
	rank := NewRanking(truth)

	modes := []RunOptions{
		{Duration: o.Duration, Concurrency: o.Concurrency},
		{Duration: o.Duration, Concurrency: 1},
	}
	if o.Rate > 0 {
		modes = append(modes, RunOptions{Duration: o.Duration, Rate: o.Rate, Concurrency: max(o.Concurrency, 64)})
	}
	for i := range modes {
		modes[i].Timeout = o.Timeout
		// The same traffic for every scenario; fresh tokens for each mode,
		// so one mode's unknown tokens are not negatively cached by the last.
		modes[i].Seed = uint64(o.Seed)<<32 + uint64(i+1)*1_000_000
	}
	type scenario struct {
		name  string
		check bool
		start func() (*target, error)
	}
	all := []scenario{
		{ScenarioSessiond, true, func() (*target, error) {
			return startSessiond(ctx, o.DatabaseURL, o.RedisURL, o.Sessions, true, o.Log)
		}},
		{ScenarioSessiondTraced, true, func() (*target, error) {
			return startSessiondTraced(ctx, o.DatabaseURL, o.RedisURL, o.Sessions, o.Log)
		}},
		{ScenarioSessiondNoLoc, true, func() (*target, error) {
			return startSessiond(ctx, o.DatabaseURL, o.RedisURL, o.Sessions, false, o.Log)
		}},
		{ScenarioDirectPostgres, true, func() (*target, error) {
			return startDirect(ctx, o.DatabaseURL, max(o.PoolSize, 1))
		}},
		{ScenarioIdeal, true, func() (*target, error) { return startIdeal(ctx, o.DatabaseURL) }},
		{ScenarioNoop, false, startNoop},
	}
	for _, sc := range all {
		if o.Scenarios != nil && !slices.Contains(o.Scenarios, sc.name) {
			continue
		}
		progress("%s: starting", sc.name)
		start := time.Now()
		t, err := sc.start()
		if err != nil {
			return rep, fmt.Errorf("%s: %w", sc.name, err)
		}
		progress("%s: ready in %v on %s", sc.name, time.Since(start).Round(time.Millisecond), t.addr)
		for _, m := range modes {
			m.Check = sc.check
			res, err := measure(ctx, t, rank, o.Mix, m, o.Conns)
			res.Scenario = sc.name
			if err != nil {
				t.stop()
				return rep, fmt.Errorf("%s, %s: %w", sc.name, m.Mode(), err)
			}
			rep.Results = append(rep.Results, res)
			progress("%s, %s: %.0f calls/s, p50 %.3f ms, p99 %.3f ms, hit rate %.1f%%, %d wrong",
				sc.name, res.Mode, res.Throughput, res.Latency.P50, res.Latency.P99, res.HitRate, res.Wrong)
		}
		t.stop()
	}
	return rep, nil
}

// measure runs m against t over min(conns, callers) fresh connections and
// fills PostgresPer1000 from t's counter.
func measure(ctx context.Context, t *target, rank *Ranking, mix Mix, m RunOptions, conns int) (Result, error) {
	c, err := dial(ctx, t.addr, min(max(conns, 1), m.Concurrency))
	if err != nil {
		return Result{}, err
	}
	defer c.close()
	var before int64
	known := t.postgres != nil
	if known {
		if before, err = t.postgres(ctx); err != nil {
			known = false
		}
	}
	res, err := Run(ctx, rank, mix, c.callers, m)
	if err != nil {
		return res, err
	}
	if known && res.Calls > 0 {
		if after, err := t.postgres(ctx); err == nil {
			v := float64(after-before) / float64(res.Calls) * 1000
			res.PostgresPer1000 = &v
		}
	}
	return res, nil
}
