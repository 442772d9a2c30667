package bench

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/sessiond/sessiond/internal/seed"
)

const usage = `sessionbench measures sessiond.

  sessionbench seed      --database-url URL [--users N] [--sessions N] [--seed S] [--tokens FILE]
  sessionbench load      --addr HOST:PORT --tokens FILE [--rate R | --concurrency C] [--duration D] [--mix ...] [--json] [--plot out.png]
  sessionbench compare   [--database-url URL --redis-url URL] [--sessions N] [--duration D] [--concurrency C] [--rate R] [--json] [--plot out.png]
  sessionbench warm      [--database-url URL] [--sessions N] [--batch-size B] [--delay D] [--engines single,cluster] [--json]
  sessionbench flood     [--database-url URL --redis-url URL] [--sessions N] [--rate R] [--duration D] [--trickle-rate R] [--json]
  sessionbench coldstart [--database-url URL] [--sessions N] [--duration D] [--concurrency C] [--runs N] [--sessiond BIN] [--json]

Run "sessionbench COMMAND --help" for a command's flags. ext_authz Check and
forward-auth GET beside ValidateSession: make bench-callers (BenchmarkCallers in
internal/server).
`

// Main runs the sessionbench command line: args without the program name.
// It returns flag.ErrHelp after printing help.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return errors.New("missing command")
	}
	switch args[0] {
	case "seed":
		return cmdSeed(ctx, args[1:], stdout, stderr)
	case "load":
		return cmdLoad(ctx, args[1:], stdout, stderr)
	case "compare":
		return cmdCompare(ctx, args[1:], stdout, stderr)
	case "warm":
		return cmdWarm(ctx, args[1:], stdout, stderr)
	case "flood":
		return cmdFlood(ctx, args[1:], stdout, stderr)
	case "coldstart":
		return cmdColdStart(ctx, args[1:], stdout, stderr)
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, usage)
		return flag.ErrHelp
	}
	fmt.Fprint(stderr, usage)
	return fmt.Errorf("unknown command %q", args[0])
}

func newFlagSet(name, about string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("sessionbench "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "%s\n\nFlags:\n", about)
		fs.PrintDefaults()
	}
	return fs
}

func parse(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	return nil
}

func cmdSeed(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("seed", `sessionbench seed migrates the database (schema.Migrate, triggers included), loads
deterministic users and sessions with COPY, writes every session's raw token and
expected verdict to the tokens file, and runs ANALYZE. The database must hold no
sessions yet. Verdicts are for the time of seeding; they hold for at least an hour
(no seeded session expires, and no ban ends, within an hour of it).`, stderr)
	dbURL := fs.String("database-url", os.Getenv("DATABASE_URL"), "Postgres URL [$DATABASE_URL]")
	users := fs.Int("users", 0, "users (0: 2 per 5 sessions)")
	sessions := fs.Int("sessions", 100_000, "sessions")
	s := fs.Int64("seed", 1, "random seed: the same seed gives the same rows and tokens")
	tokens := fs.String("tokens", "sessionbench-tokens.tsv", "tokens file to write (token, session, user, valid, reason, last activity)")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *dbURL == "" {
		return errors.New("seed: --database-url is required")
	}
	f, err := os.Create(*tokens)
	if err != nil {
		return err
	}
	w := bufio.NewWriterSize(f, 1<<20)
	sum, err := loadSeed(ctx, *dbURL, seedOptions(*users, *sessions, *s), seed.WriteTokens(w))
	if err == nil {
		err = w.Flush()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("seed: %w", err)
	}
	fmt.Fprintf(stdout, "seeded %s\ntokens: %s\n", summaryLine(sum), *tokens)
	return nil
}

func cmdLoad(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("load", `sessionbench load drives ValidateSession traffic at a running server and checks every
answer against the tokens file written by "sessionbench seed".

Token choice (--mix): invalid=F of calls carry a malformed token (expect
INVALID_ARGUMENT); unknown=F a fresh random 64-hex token (expect valid=false,
NOT_FOUND); hot=F a session drawn uniformly from the hot set, the top 1% of the
file's sessions by last_activity_at; the rest a session drawn by Zipf with
exponent zipf=S (> 1) over the whole file ranked by last_activity_at, newest first
(uniformly when zipf is 0). The file holds every seeded session, valid or not, and
each is expected to get its recorded verdict.

--rate R runs an open loop: call i is due at start + i/R and its latency is measured
from then (no coordinated omission); --concurrency is then the sender pool. Without
--rate, --concurrency callers run a closed loop. Latency quantiles are exact, from
every call's sample.`, stderr)
	addr := fs.String("addr", "localhost:50051", "sessiond's gRPC address")
	tokens := fs.String("tokens", "sessionbench-tokens.tsv", "tokens file from sessionbench seed")
	rate := fs.Float64("rate", 0, "open loop: calls per second (0: closed loop)")
	conc := fs.Int("concurrency", 32, "closed loop: callers; open loop: senders (calls in flight at most)")
	dur := fs.Duration("duration", 10*time.Second, "how long to send")
	mixS := fs.String("mix", DefaultMix, "token mix (see above)")
	conns := fs.Int("conns", 4, "gRPC connections (at most one per caller)")
	timeout := fs.Duration("timeout", 5*time.Second, "deadline of each call")
	s := fs.Uint64("seed", 1, "traffic seed")
	admin := fs.String("admin-token", os.Getenv("SESSIOND_ADMIN_TOKEN"), "bearer token for GetStats [$SESSIOND_ADMIN_TOKEN]")
	asJSON := fs.Bool("json", false, "print JSON instead of markdown")
	plotPath := fs.String("plot", "", "write hit rate and p99 per second to this PNG")
	if err := parse(fs, args); err != nil {
		return err
	}
	mix, err := ParseMix(*mixS)
	if err != nil {
		return err
	}
	f, err := os.Open(*tokens)
	if err != nil {
		return err
	}
	truth, err := seed.ReadTokens(f)
	f.Close()
	if err != nil {
		return err
	}
	o := RunOptions{Duration: *dur, Rate: *rate, Concurrency: *conc, Timeout: *timeout, Check: true, Seed: *s}
	c, err := dial(ctx, *addr, min(max(*conns, 1), *conc))
	if err != nil {
		return err
	}
	defer c.close()
	before, statsErr := statsMisses(ctx, *addr, *admin)
	res, runErr := Run(ctx, NewRanking(truth), mix, c.callers, o)
	if statsErr == nil && res.Calls > 0 {
		if after, err := statsMisses(context.WithoutCancel(ctx), *addr, *admin); err == nil {
			v := float64(after-before) / float64(res.Calls) * 1000
			res.PostgresPer1000 = &v
		}
	} else if statsErr != nil {
		fmt.Fprintf(stderr, "GetStats failed (%v): postgres answers per 1,000 calls unknown\n", statsErr)
	}
	if err := writeReport(stdout, *asJSON, res, func(w io.Writer) { WriteResult(w, res) }); err != nil {
		return err
	}
	if *plotPath != "" {
		if err := WritePlot(*plotPath, []PlotLine{{Name: res.Mode, Series: res.Series}}); err != nil {
			return err
		}
	}
	if runErr != nil {
		return runErr
	}
	if res.Wrong > 0 {
		return fmt.Errorf("%d wrong answers", res.Wrong)
	}
	return nil
}

func cmdCompare(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("compare", `sessionbench compare seeds a database and drives the same traffic (see "load --help"
for --mix) against six gRPC servers, all in this process, over TCP on 127.0.0.1
with real gRPC clients:
  sessiond                  config.Default(), every seeded session warmed (warm window
                            31 days, no batch delay), ready before measuring
  sessiond, tracing on      the same with OpenTelemetry tracing, every call sampled, spans
                            batched to an exporter that drops them: the cost of tracing
  sessiond, no local cache  the same with LocalCache=false: a Redis round trip per call
  direct postgres           one pgx query per call (tiers.Postgres.Lookup + tiers.Check)
  ideal cache               every seeded session in a Go map keyed by the token's SHA-256,
                            loaded before measuring, answered with tiers.Check and
                            service.Response: the floor of any caching design
  no-op gRPC                a constant answer (a valid session of the usual size): the floor of any gRPC service here
each in a closed loop with --concurrency callers, then with 1 caller (and, with
--rate, an open loop at that rate), --runs times, interleaved (run 1 of every
scenario, then run 2, ...); the table shows the median of the runs and, below it,
each run. Without --database-url/--redis-url it starts throwaway servers and removes
them when done, also on Ctrl-C. The default run (3 runs) takes about 7 minutes. See
also "warm", "flood" and "coldstart".`, stderr)
	dbURL := fs.String("database-url", "", "Postgres URL of an empty database (empty: start a throwaway PostgreSQL)")
	redisURL := fs.String("redis-url", "", "Redis URL (empty: start a throwaway redis-server)")
	sessions := fs.Int("sessions", 100_000, "sessions to seed (demo shape: 10% expired, some users banned or deleted, activity over 30 days)")
	users := fs.Int("users", 0, "users (0: 2 per 5 sessions)")
	s := fs.Int64("seed", 1, "data and traffic seed")
	dur := fs.Duration("duration", 10*time.Second, "duration of each scenario and mode")
	conc := fs.Int("concurrency", 32, "closed-loop callers")
	rate := fs.Float64("rate", 0, "if > 0, also run an open loop at this many calls per second")
	conns := fs.Int("conns", 4, "gRPC connections per run (at most one per caller)")
	pool := fs.Int("pool-size", 8, "Postgres pool of the direct baseline (sessiond's default is 8)")
	mixS := fs.String("mix", DefaultMix, "token mix (see load --help)")
	timeout := fs.Duration("timeout", 5*time.Second, "deadline of each call")
	logLevel := fs.String("log-level", "warn", "sessiond's log level (to stderr)")
	asJSON := fs.Bool("json", false, "print JSON instead of markdown")
	plotPath := fs.String("plot", "", "write hit rate and p99 per second of each scenario's first mode to this PNG")
	scenariosS := fs.String("scenarios", "", "comma-separated scenarios to run (empty: all): "+strings.Join(Scenarios, ", "))
	runs := fs.Int("runs", 3, "rounds of every scenario and mode, interleaved; the table shows their medians")
	profDir := fs.String("cpuprofile-dir", "", "write a CPU profile of each scenario, mode and run (load generator and the in-process servers, one process) to this directory")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *profDir != "" {
		if err := os.MkdirAll(*profDir, 0o755); err != nil {
			return err
		}
	}
	if *runs < 1 {
		return fmt.Errorf("--runs %d: want at least 1", *runs)
	}
	scenarios, err := parseScenarios(*scenariosS)
	if err != nil {
		return err
	}
	mix, err := ParseMix(*mixS)
	if err != nil {
		return err
	}
	log, err := sessiondLog(stderr, *logLevel)
	if err != nil {
		return err
	}
	rep, err := Compare(ctx, CompareOptions{
		DatabaseURL: *dbURL, RedisURL: *redisURL, Users: *users, Sessions: *sessions, Seed: *s,
		Duration: *dur, Concurrency: *conc, Rate: *rate, Conns: *conns, PoolSize: *pool, Mix: mix, Timeout: *timeout,
		Log: log, Progress: stderr, Scenarios: scenarios, Runs: *runs, ProfileDir: *profDir,
	})
	if err != nil && len(rep.Results) == 0 {
		return err
	}
	rep.Command = commandLine(append([]string{"compare"}, args...))
	if err := writeReport(stdout, *asJSON, rep, func(w io.Writer) { WriteCompare(w, rep) }); err != nil {
		return err
	}
	if *plotPath != "" && len(rep.Results) > 0 {
		var lines []PlotLine
		first := rep.Results[0].Mode
		for _, r := range rep.Results {
			if r.Mode == first && r.Run == 1 {
				lines = append(lines, PlotLine{Name: r.Scenario, Series: r.Series})
			}
		}
		if perr := WritePlot(*plotPath, lines); perr != nil && err == nil {
			err = perr
		}
	}
	if err != nil {
		return err
	}
	for _, r := range rep.Results {
		if r.Wrong > 0 {
			return fmt.Errorf("%s, %s, run %d: %d wrong answers", r.Scenario, r.Mode, r.Run, r.Wrong)
		}
	}
	return nil
}

// parseScenarios reads --scenarios: nil (all) when empty.
func parseScenarios(s string) ([]string, error) {
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	var out []string
	for name := range strings.SplitSeq(s, ",") {
		name = strings.TrimSpace(name)
		if !slices.Contains(Scenarios, name) {
			return nil, fmt.Errorf("invalid --scenarios: %q is not one of: %s", name, strings.Join(Scenarios, ", "))
		}
		if !slices.Contains(out, name) {
			out = append(out, name)
		}
	}
	return out, nil
}
