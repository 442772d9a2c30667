package cli

import (
	"context"
	"fmt"
	"io"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	sessiondv1 "github.com/sessiond/sessiond/gen/sessiond/v1"
)

// stats prints a running server's GetStats, flagging the warming guide's
// warning and critical thresholds.
func stats(ctx context.Context, args []string, env Env) error {
	var (
		addr   string
		asJSON bool
	)
	fs := newFlagSet("stats", `Print a running sessiond's statistics (SessionService/GetStats): cache counters,
the Postgres pool, the warming configuration and the last warming run, flagging
the warming guide's thresholds (hit rate under 80% or 50%, Redis errors over 5%
of answers, more than 10 or 20 callers waiting for Postgres).`, env)
	sec := registerAddr(fs, &addr)
	fs.BoolVar(&asJSON, "json", false, "print the response as one JSON object")
	if err := parse(fs, args, env); err != nil {
		return err
	}
	if err := checkAddr(addr); err != nil {
		return err
	}
	conn, err := dial(addr, sec)
	if err != nil {
		return err
	}
	defer conn.Close()
	cctx, cancel := context.WithTimeout(ctx, statsTimeout)
	defer cancel()
	st, err := sessiondv1.NewSessionServiceClient(conn).GetStats(cctx, &sessiondv1.GetStatsRequest{})
	if err != nil {
		return rpcError("GetStats", addr, err)
	}
	if asJSON {
		b, err := protojson.MarshalOptions{EmitUnpopulated: true}.Marshal(st)
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(env.Stdout, "%s\n", b)
		return err
	}
	printStats(env.Stdout, addr, st, time.Now())
	return nil
}

// printStats prints st readably; now is for the ages of the last run.
func printStats(w io.Writer, addr string, st *sessiondv1.GetStatsResponse, now time.Time) {
	line := func(label, format string, a ...any) {
		fmt.Fprintf(w, "   %-18s %s\n", label+":", fmt.Sprintf(format, a...))
	}
	fmt.Fprintf(w, "📊 sessiond at %s\n", addr)

	c := st.GetCache()
	ops := c.GetHits() + c.GetMisses()
	fmt.Fprintln(w, "\nCache")
	if c.GetEnabled() {
		line("Enabled", "yes")
	} else {
		line("Enabled", "no   🚨 critical: Redis cannot be reached; answers come from Postgres")
	}
	line("Hit rate", "%s%%%s", percent(c.GetHitRate()), hitRateFlag(c.GetHitRate(), ops))
	line("Hits", "%d (local %d / redis %d / negative %d)", c.GetHits(), c.GetLocalHits(), c.GetRedisHits(), c.GetNegativeHits())
	line("Misses", "%d", c.GetMisses())
	line("Errors", "%d%s", c.GetErrors(), errorsFlag(c.GetErrors(), ops))
	line("Invalidations", "%d (notifications %d, resyncs %d)", c.GetInvalidations(), c.GetNotifications(), c.GetResyncs())
	queries := "queries"
	if c.GetPostgresRoundTrips() == 1 {
		queries = "query"
	}
	line("Postgres lookups", "%d (in %d %s)", c.GetPostgresQueries(), c.GetPostgresRoundTrips(), queries)
	line("TTL", "%s", time.Duration(c.GetTtlSeconds())*time.Second)

	p := st.GetPool()
	fmt.Fprintln(w, "\nPostgres pool")
	line("Size", "%d", p.GetSize())
	line("Available", "%d", p.GetAvailable())
	line("Pending", "%d%s", p.GetPending(), pendingFlag(p.GetPending()))

	cfg := st.GetConfig()
	fmt.Fprintln(w, "\nWarming config")
	line("Default count", "%d", cfg.GetDefaultSessionCount())
	line("Batch size", "%d", cfg.GetBatchSize())
	line("Batch delay", "%s", duration(cfg.GetBatchDelay()))
	line("Window", "%dh", cfg.GetRecentWindowHours())
	line("Max warming time", "%s", duration(cfg.GetMaxWarmingTime()))

	fmt.Fprintln(w, "\nLast warming run")
	lw := st.GetLastWarming()
	if lw == nil {
		fmt.Fprintln(w, "   none since the server started")
		return
	}
	line("Started", "%s (%s ago)", timestamp(lw.GetStartedAt()), now.Sub(lw.GetStartedAt().AsTime()).Round(time.Second))
	if lw.GetFinishedAt() == nil {
		line("Finished", "still running")
	} else {
		line("Finished", "%s (took %s)", timestamp(lw.GetFinishedAt()),
			lw.GetFinishedAt().AsTime().Sub(lw.GetStartedAt().AsTime()).Round(time.Millisecond))
	}
	line("Total", "%d", lw.GetTotal())
	line("Warmed", "%d", lw.GetWarmed())
	line("Failed", "%d", lw.GetFailed())
	outcome := outcomeName(lw.GetOutcome())
	switch lw.GetOutcome() {
	case sessiondv1.WarmOutcome_WARM_OUTCOME_COMPLETED, sessiondv1.WarmOutcome_WARM_OUTCOME_UNSPECIFIED:
	default:
		outcome += "   ⚠️  warning: the run did not complete"
	}
	line("Outcome", "%s", outcome)
	if lw.GetError() == "" {
		line("Error", "-")
	} else {
		line("Error", "%s", lw.GetError())
	}
}

func hitRateFlag(rate float64, ops int64) string {
	switch {
	case ops == 0:
		return "   (no answers yet)"
	case rate < hitRateCritical:
		return fmt.Sprintf("   🚨 critical: below %g%%", hitRateCritical)
	case rate < hitRateWarning:
		return fmt.Sprintf("   ⚠️  warning: below %g%%", hitRateWarning)
	case rate < hitRateTarget:
		return fmt.Sprintf("   (target %g%%)", hitRateTarget)
	}
	return ""
}

func errorsFlag(errs, ops int64) string {
	if ops == 0 {
		return ""
	}
	rate := 100 * float64(errs) / float64(ops)
	s := fmt.Sprintf(" (%s%% of answers)", percent(rate))
	if rate > errorsWarning {
		s += fmt.Sprintf("   ⚠️  warning: over %g%%", errorsWarning)
	}
	return s
}

func pendingFlag(pending int32) string {
	switch {
	case pending > pendingCritical:
		return fmt.Sprintf("   🚨 critical: over %d waiting for a connection", pendingCritical)
	case pending > pendingWarning:
		return fmt.Sprintf("   ⚠️  warning: over %d waiting for a connection", pendingWarning)
	}
	return ""
}

func duration(d *durationpb.Duration) string {
	if d == nil {
		return "-"
	}
	return d.AsDuration().String()
}

func timestamp(t *timestamppb.Timestamp) string {
	return t.AsTime().Local().Format("2006-01-02 15:04:05 MST")
}
