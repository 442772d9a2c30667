package bench

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"strings"
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
	// Runs is how many rounds of every scenario and mode to measure (<= 0:
	// one). Rounds are interleaved (round 1 of every scenario, then round
	// 2, ...), so that a slow spell of a noisy machine lands on every
	// scenario rather than on whichever ran during it; the report's
	// Medians are what comparisons use.
	Runs     int
	DevStack devstack.PostgresOptions
	// ProfileDir, if set, receives a CPU profile of this process (load
	// generator and the in-process servers together) for every measured
	// scenario, mode and run: <scenario>-<mode>-run<N>.pprof.
	ProfileDir string
}

// CompareReport is what Compare measured.
type CompareReport struct {
	Command string       `json:"command,omitempty"` // the sessionbench command line, when run by one
	Seed    seed.Summary `json:"seed"`
	Mix     string       `json:"mix"`
	Runs    int          `json:"runs"`
	Results []Result     `json:"results"` // every run of every scenario and mode, in the order measured
	// Medians has one Result per scenario and mode, in the order first
	// measured: each figure the median of its runs (see Medians).
	Medians []Result `json:"medians"`
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
	rep.Runs = max(o.Runs, 1)
	defer func() { rep.Medians = Medians(rep.Results) }()
	for run := 1; run <= rep.Runs; run++ {
		for _, sc := range all {
			if o.Scenarios != nil && !slices.Contains(o.Scenarios, sc.name) {
				continue
			}
			name := sc.name
			if rep.Runs > 1 {
				name = fmt.Sprintf("%s (run %d/%d)", sc.name, run, rep.Runs)
			}
			progress("%s: starting", name)
			start := time.Now()
			t, err := sc.start()
			if err != nil {
				return rep, fmt.Errorf("%s: %w", name, err)
			}
			progress("%s: ready in %v on %s", name, time.Since(start).Round(time.Millisecond), t.addr)
			for i, m := range modes {
				m.Check = sc.check
				// The same traffic for every scenario of a run; fresh tokens
				// for each mode and run, so that one's unknown tokens are not
				// negatively cached by the last.
				m.Seed = uint64(o.Seed)<<32 + uint64(run-1)*100_000_000 + uint64(i+1)*1_000_000
				res, err := profiled(o.ProfileDir, fmt.Sprintf("%s-%s-run%d", sc.name, m.Mode(), run), func() (Result, error) {
					return measure(ctx, t, rank, o.Mix, m, o.Conns)
				})
				res.Scenario, res.Run = sc.name, run
				if err != nil {
					t.stop()
					return rep, fmt.Errorf("%s, %s: %w", name, m.Mode(), err)
				}
				rep.Results = append(rep.Results, res)
				progress("%s, %s: %.0f calls/s, p50 %.3f ms, p99 %.3f ms, hit rate %.1f%%, %d wrong",
					name, res.Mode, res.Throughput, res.Latency.P50, res.Latency.P99, res.HitRate, res.Wrong)
			}
			t.stop()
		}
	}
	return rep, nil
}

// Medians folds the runs of each scenario and mode into one Result, in the
// order each pair first appears: throughput, every latency quantile, hit
// rate and Postgres answers per 1,000 calls are medians of the runs (each
// figure on its own, so the median p99 may come from another run than the
// median p50); calls, seconds, counts by source, code and kind, and wrong
// answers are sums over the runs (a wrong answer in any run shows).
func Medians(results []Result) []Result {
	type key struct{ scenario, mode string }
	var order []key
	groups := map[key][]Result{}
	for _, r := range results {
		k := key{r.Scenario, r.Mode}
		if _, ok := groups[k]; !ok {
			order = append(order, k)
		}
		groups[k] = append(groups[k], r)
	}
	out := make([]Result, 0, len(order))
	for _, k := range order {
		out = append(out, medianOf(groups[k]))
	}
	return out
}

func medianOf(rs []Result) Result {
	m := Result{
		Scenario: rs[0].Scenario, Mode: rs[0].Mode, Checked: true,
		Sources: map[string]int{}, Codes: map[string]int{}, Kinds: map[string]int{},
	}
	pick := func(f func(Result) float64) float64 {
		vs := make([]float64, len(rs))
		for i, r := range rs {
			vs[i] = f(r)
		}
		return median(vs)
	}
	m.Throughput = pick(func(r Result) float64 { return r.Throughput })
	m.HitRate = pick(func(r Result) float64 { return r.HitRate })
	m.Latency = Latency{
		P50:  pick(func(r Result) float64 { return r.Latency.P50 }),
		P90:  pick(func(r Result) float64 { return r.Latency.P90 }),
		P99:  pick(func(r Result) float64 { return r.Latency.P99 }),
		P999: pick(func(r Result) float64 { return r.Latency.P999 }),
		Max:  pick(func(r Result) float64 { return r.Latency.Max }),
	}
	var pg []float64
	for _, r := range rs {
		m.Calls += r.Calls
		m.Seconds += r.Seconds
		m.Wrong += r.Wrong
		m.Checked = m.Checked && r.Checked
		if len(m.WrongExamples) < 5 {
			m.WrongExamples = append(m.WrongExamples, r.WrongExamples...)
		}
		for k, v := range r.Sources {
			m.Sources[k] += v
		}
		for k, v := range r.Codes {
			m.Codes[k] += v
		}
		for k, v := range r.Kinds {
			m.Kinds[k] += v
		}
		if r.PostgresPer1000 != nil {
			pg = append(pg, *r.PostgresPer1000)
		}
	}
	if len(pg) == len(rs) {
		v := median(pg)
		m.PostgresPer1000 = &v
	}
	return m
}

// median of vs (the mean of the middle two when there is an even number);
// it sorts vs.
func median(vs []float64) float64 {
	if len(vs) == 0 {
		return 0
	}
	slices.Sort(vs)
	n := len(vs)
	if n%2 == 1 {
		return vs[n/2]
	}
	return (vs[n/2-1] + vs[n/2]) / 2
}

// profiled runs f under a CPU profile written to dir/<name>.pprof (name
// made a file name), or just runs it when dir is "".
func profiled(dir, name string, f func() (Result, error)) (Result, error) {
	if dir == "" {
		return f()
	}
	name = strings.Map(func(r rune) rune {
		if r == ' ' || r == '/' || r == '=' || r == ',' {
			return '_'
		}
		return r
	}, name)
	file, err := os.Create(filepath.Join(dir, name+".pprof"))
	if err != nil {
		return Result{}, err
	}
	defer file.Close()
	if err := pprof.StartCPUProfile(file); err != nil {
		return Result{}, err
	}
	res, err := f()
	pprof.StopCPUProfile()
	return res, err
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
