package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime/pprof"
	"sync"
	"time"

	"github.com/sessiond/sessiond/internal/devstack"
	"github.com/sessiond/sessiond/internal/seed"
)

// FloodOptions configures Flood.
type FloodOptions struct {
	DatabaseURL string // empty: start a throwaway PostgreSQL
	RedisURL    string // empty: start a throwaway redis-server
	Sessions    int
	Seed        int64
	Rate        float64       // never-seen tokens per second offered
	Duration    time.Duration // of the flood, and of the trickle alone before it
	Senders     int           // flood calls in flight at most
	Conns       int           // gRPC connections of the flood
	TrickleRate float64       // valid, cached sessions per second, before and during the flood
	Timeout     time.Duration // per call
	Log         *slog.Logger  // sessiond's log
	Progress    io.Writer
	// CPUProfile, if set, receives a CPU profile of this process (the load
	// generator and sessiond) over the flood.
	CPUProfile io.Writer
}

// FloodReport is what Flood measured.
type FloodReport struct {
	Command       string       `json:"command,omitempty"`
	Seed          seed.Summary `json:"seed"`
	OfferedRate   float64      `json:"offered_rate"`
	Flood         Result       `json:"flood"`
	TrickleBefore Result       `json:"trickle_before"`
	TrickleDuring Result       `json:"trickle_during"`
	// PostgresQueries is the growth of GetStats's cache.postgres_queries
	// (lookups) over the flood; DistinctTokens the never-seen tokens sent
	// (each a fresh random 256-bit value, so every one is distinct).
	PostgresQueries int64   `json:"postgres_queries"`
	DistinctTokens  int     `json:"distinct_tokens"`
	QueriesPerToken float64 `json:"queries_per_token"`
	// RoundTrips is the growth of cache.postgres_round_trips: the queries
	// those lookups took (lookups under way at once share them).
	RoundTrips int64 `json:"postgres_round_trips"`
}

// Flood measures sessiond (in process, every seeded session warmed, as in
// Compare) under a flood of never-seen tokens: a trickle of valid, cached
// sessions runs alone for Duration, then beside an open loop of Rate
// never-seen tokens per second for Duration (calls the machine cannot send
// in that time are not sent, and counted). Every answer is checked.
func Flood(ctx context.Context, o FloodOptions) (rep FloodReport, err error) {
	progress := progressTo(o.Progress)
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.Sessions < 1 || o.Rate <= 0 || o.TrickleRate <= 0 || o.Duration <= 0 || o.Senders < 1 {
		return rep, fmt.Errorf("flood: want sessions >= 1, rate > 0, trickle rate > 0, duration > 0, senders >= 1")
	}
	rep.OfferedRate = o.Rate
	st := &stack{progress: progress}
	defer st.stop()
	if o.DatabaseURL, err = st.postgres(ctx, o.DatabaseURL, devstack.PostgresOptions{}); err != nil {
		return rep, err
	}
	if o.RedisURL, err = st.redis(ctx, o.RedisURL); err != nil {
		return rep, err
	}
	var valid []seed.Truth
	rep.Seed, err = loadSeed(ctx, o.DatabaseURL, seedOptions(0, o.Sessions, o.Seed), func(t seed.Truth) error {
		if t.Valid {
			valid = append(valid, t)
		}
		return nil
	})
	if err != nil {
		return rep, fmt.Errorf("seed: %w", err)
	}
	progress("seeded %s", summaryLine(rep.Seed))
	if len(valid) == 0 {
		return rep, errors.New("flood: no valid session seeded for the trickle")
	}
	start := time.Now()
	t, err := startSessiond(ctx, o.DatabaseURL, o.RedisURL, o.Sessions, true, o.Log)
	if err != nil {
		return rep, fmt.Errorf("sessiond: %w", err)
	}
	defer t.stop()
	progress("sessiond ready in %v on %s", time.Since(start).Round(time.Millisecond), t.addr)

	// The trickle: the hot set (1%) of the valid sessions, all warmed.
	trickleRank := NewRanking(valid)
	trickle := RunOptions{Duration: o.Duration, Rate: o.TrickleRate, Concurrency: 16, Timeout: o.Timeout, Check: true}
	tc, err := dial(ctx, t.addr, 1)
	if err != nil {
		return rep, err
	}
	defer tc.close()
	// One pass over the hot set first, so that every trickle call is a hit
	// from process memory, before as during.
	for i := range trickleRank.HotLen() {
		if _, err := tc.callers[0](ctx, trickleRank.rows[i].Token); err != nil {
			return rep, fmt.Errorf("prime the trickle: %w", err)
		}
	}
	progress("trickle alone: %g calls/s for %v…", o.TrickleRate, o.Duration)
	trickle.Seed = uint64(o.Seed)<<32 + 1
	rep.TrickleBefore, err = Run(ctx, trickleRank, Mix{Hot: 1}, tc.callers, trickle)
	if err != nil {
		return rep, err
	}

	fc, err := dial(ctx, t.addr, min(max(o.Conns, 1), o.Senders))
	if err != nil {
		return rep, err
	}
	defer fc.close()
	before, err := stats(ctx, t.addr, "")
	if err != nil {
		return rep, fmt.Errorf("GetStats: %w", err)
	}
	progress("flood: %g never-seen tokens/s for %v, beside the trickle…", o.Rate, o.Duration)
	flood := RunOptions{Duration: o.Duration, Rate: o.Rate, Concurrency: o.Senders, Timeout: o.Timeout, Check: true,
		DropLate: true, Seed: uint64(o.Seed)<<32 + 2}
	trickle.Seed = uint64(o.Seed)<<32 + 3
	if o.CPUProfile != nil {
		if err := pprof.StartCPUProfile(o.CPUProfile); err != nil {
			return rep, err
		}
	}
	var wg sync.WaitGroup
	var floodErr, trickleErr error
	wg.Go(func() { rep.Flood, floodErr = Run(ctx, NewRanking(nil), Mix{Unknown: 1}, fc.callers, flood) })
	wg.Go(func() { rep.TrickleDuring, trickleErr = Run(ctx, trickleRank, Mix{Hot: 1}, tc.callers, trickle) })
	wg.Wait()
	if o.CPUProfile != nil {
		pprof.StopCPUProfile()
	}
	if err := errors.Join(floodErr, trickleErr); err != nil {
		return rep, err
	}
	after, err := stats(ctx, t.addr, "")
	if err != nil {
		return rep, fmt.Errorf("GetStats: %w", err)
	}
	rep.Flood.Scenario, rep.TrickleBefore.Scenario, rep.TrickleDuring.Scenario = "flood", "trickle, before", "trickle, during"
	rep.PostgresQueries = after.GetCache().GetPostgresQueries() - before.GetCache().GetPostgresQueries()
	rep.RoundTrips = after.GetCache().GetPostgresRoundTrips() - before.GetCache().GetPostgresRoundTrips()
	rep.DistinctTokens = rep.Flood.Kinds[KindUnknown.String()]
	if rep.DistinctTokens > 0 {
		rep.QueriesPerToken = float64(rep.PostgresQueries) / float64(rep.DistinctTokens)
	}
	return rep, nil
}

func cmdFlood(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("flood", `sessionbench flood seeds a database (the demo shape of "compare"), starts sessiond in
this process with every seeded session warmed (as "compare" does), and measures a flood
of never-seen tokens:
  1. a trickle of valid, cached sessions (the hot 1% of the valid ones, each already
     in sessiond's process memory), --trickle-rate calls/s in an open loop, alone
     for --duration;
  2. the same trickle beside an open loop of --rate never-seen tokens per second
     (fresh random 64-hex tokens) for --duration. A machine that cannot send --rate
     sends what it can: the calls not sent within --duration are counted as unsent,
     not sent later.
It reports the Postgres queries per distinct token (GetStats postgres_queries over
the flood / tokens sent), the flood's latency from each call's due time (what a
caller at --rate would wait, queueing in the generator included) and from its send,
and the trickle's latency before and during the flood. Every answer is checked
against the seeded truth: a wrong answer fails the command. About 40 s.`, stderr)
	dbURL := fs.String("database-url", "", "Postgres URL of an empty database (empty: start a throwaway PostgreSQL)")
	redisURL := fs.String("redis-url", "", "Redis URL (empty: start a throwaway redis-server)")
	sessions := fs.Int("sessions", 100_000, "sessions to seed")
	s := fs.Int64("seed", 1, "data and traffic seed")
	rate := fs.Float64("rate", 50_000, "never-seen tokens per second offered")
	dur := fs.Duration("duration", 10*time.Second, "duration of the flood, and of the trickle alone before it")
	senders := fs.Int("senders", 256, "flood calls in flight at most")
	conns := fs.Int("conns", 4, "gRPC connections of the flood (the trickle has its own)")
	trickle := fs.Float64("trickle-rate", 200, "valid, cached sessions per second, before and during the flood")
	timeout := fs.Duration("timeout", 5*time.Second, "deadline of each call")
	logLevel := fs.String("log-level", "warn", "sessiond's log level (to stderr)")
	asJSON := fs.Bool("json", false, "print JSON instead of markdown")
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile of the flood (load generator and sessiond, one process) to this file")
	if err := parse(fs, args); err != nil {
		return err
	}
	log, err := sessiondLog(stderr, *logLevel)
	if err != nil {
		return err
	}
	var prof io.Writer
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			return err
		}
		defer f.Close()
		prof = f
	}
	rep, err := Flood(ctx, FloodOptions{
		DatabaseURL: *dbURL, RedisURL: *redisURL, Sessions: *sessions, Seed: *s, Rate: *rate, Duration: *dur,
		Senders: *senders, Conns: *conns, TrickleRate: *trickle, Timeout: *timeout,
		Log: log, Progress: stderr, CPUProfile: prof,
	})
	if err != nil {
		return err
	}
	rep.Command = commandLine(append([]string{"flood"}, args...))
	if err := writeReport(stdout, *asJSON, rep, func(w io.Writer) { WriteFlood(w, rep) }); err != nil {
		return err
	}
	for _, r := range []Result{rep.Flood, rep.TrickleBefore, rep.TrickleDuring} {
		if r.Wrong > 0 {
			return fmt.Errorf("%s: %d wrong answers", r.Scenario, r.Wrong)
		}
	}
	return nil
}

// WriteFlood writes a flood report as markdown.
func WriteFlood(w io.Writer, rep FloodReport) {
	fmt.Fprintf(w, "command: `%s`\n\nseeded: %s\n\n", rep.Command, summaryLine(rep.Seed))
	f := rep.Flood
	fmt.Fprintln(w, "| flood of never-seen tokens | value |\n| --- | --- |")
	row := func(k, format string, a ...any) { fmt.Fprintf(w, "| %s | %s |\n", k, fmt.Sprintf(format, a...)) }
	row("offered", "%.0f calls/s for %.1f s (%s)", rep.OfferedRate, f.Seconds, f.Mode)
	row("sent / not sent in time", "%d / %d (%.0f calls/s answered)", f.Calls, f.Unsent, f.Throughput)
	row("postgres lookups per distinct token", "%.3f (%d lookups, %d tokens)", rep.QueriesPerToken, rep.PostgresQueries, rep.DistinctTokens)
	if rep.RoundTrips > 0 {
		row("postgres queries those lookups took", "%d (%.2f lookups per query)", rep.RoundTrips, float64(rep.PostgresQueries)/float64(rep.RoundTrips))
	}
	row("latency from due time p50 / p99 / max", "%.3f / %.3f / %.3f ms", f.Latency.P50, f.Latency.P99, f.Latency.Max)
	if f.Service != nil {
		row("latency from send p50 / p99 / max", "%.3f / %.3f / %.3f ms", f.Service.P50, f.Service.P99, f.Service.Max)
	}
	row("generator's lag behind schedule, max", "%.0f ms", f.MaxSendLagMS)
	row("calls by gRPC code", "%s", counts(f.Codes))
	row("wrong answers", "%s", fmtWrong(f))
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| valid, cached sessions (trickle) | mode | calls | p50 ms | p99 ms | p99.9 ms | max ms | p50 / p99 from send ms | hit rate | codes | wrong |")
	fmt.Fprintln(w, "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |")
	for _, r := range []Result{rep.TrickleBefore, rep.TrickleDuring} {
		fromSend := "n/a"
		if r.Service != nil {
			fromSend = fmt.Sprintf("%.3f / %.3f", r.Service.P50, r.Service.P99)
		}
		fmt.Fprintf(w, "| %s | %s | %d | %.3f | %.3f | %.3f | %.3f | %s | %.1f %% | %s | %s |\n", r.Scenario, r.Mode, r.Calls,
			r.Latency.P50, r.Latency.P99, r.Latency.P999, r.Latency.Max, fromSend, r.HitRate, counts(r.Codes), fmtWrong(r))
	}
	fmt.Fprintln(w, "\nLatencies count from each call's due time (open loop), so they include the load generator's own lag on this machine; \"from send\" leaves it out.")
}
