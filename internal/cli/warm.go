package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"strings"
	"time"

	"github.com/schollz/progressbar/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/durationpb"

	sessiondv1 "github.com/sessiond/sessiond/gen/sessiond/v1"
)

// warmOptions are `sessiond warm`'s flags.
type warmOptions struct {
	addr       string
	count      int
	batchSize  int
	batchDelay optionalDuration
	estimate   bool
	json       bool
	timeout    time.Duration
}

// statsTimeout bounds the GetStats call made after a warming run.
const statsTimeout = 10 * time.Second

// warm calls a running server's WarmCache, shows the run's progress, then
// prints a summary and the cache metrics.
func warm(ctx context.Context, args []string, env Env) error {
	var o warmOptions
	fs := newFlagSet("warm", `Warm a running sessiond's Redis cache with its most recently active sessions
(SessionService/WarmCache) and show the progress: a bar on a terminal, a line per
batch otherwise; then a summary and the cache metrics. A run already going is
joined, and its settings stand. Exit status: 0 when the run completed, 1 when it
did not or the call failed, 2 for bad flags.`, env)
	sec := registerAddr(fs, &o.addr)
	fs.IntVar(&o.count, "count", 0, "warm at most this many sessions, most recently active first (0: the server's --warm-count)")
	fs.BoolVar(&o.estimate, "estimate", false, "only count the warmable sessions (at most --count); write nothing")
	fs.IntVar(&o.batchSize, "batch-size", 0, "sessions per pipelined Redis batch (0: the server's --warm-batch-size)")
	fs.Var(&o.batchDelay, "batch-delay", "pause between batches, a `duration`, 0 for none (default: the server's --warm-batch-delay)")
	fs.BoolVar(&o.json, "json", false, "print each progress message as a JSON object, one per line, and nothing else")
	fs.DurationVar(&o.timeout, "timeout", 0, "give up after this long, stopping a run nobody else watches (0: no limit; the server bounds a run by its --warm-timeout)")
	if err := parse(fs, args, env); err != nil {
		return err
	}
	if err := o.validate(); err != nil {
		return err
	}

	conn, err := dial(o.addr, sec)
	if err != nil {
		return err
	}
	defer conn.Close()
	client := sessiondv1.NewSessionServiceClient(conn)

	req := &sessiondv1.WarmCacheRequest{Count: int32(o.count), EstimateOnly: o.estimate, BatchSize: int32(o.batchSize)}
	if o.batchDelay.set {
		req.BatchDelay = durationpb.New(o.batchDelay.d)
	}
	view := o.view(env.Stdout)
	if !o.json {
		fmt.Fprintf(env.Stdout, "🔥 Redis Cache Warming Tool (sessiond at %s)\n\n", o.addr)
		switch {
		case o.estimate:
		case o.count > 0:
			fmt.Fprintf(env.Stdout, "🔄 Warming cache with up to %d sessions...\n\n", o.count)
		default:
			fmt.Fprint(env.Stdout, "🔄 Warming cache with up to the server's default count of sessions...\n\n")
		}
	}

	callCtx := ctx
	if o.timeout > 0 {
		var cancel context.CancelFunc
		callCtx, cancel = context.WithTimeout(ctx, o.timeout)
		defer cancel()
	}
	last, err := follow(callCtx, client, req, view)
	view.close()
	switch {
	case err != nil && ctx.Err() != nil:
		return fmt.Errorf("interrupted: %w (the server cancels the run unless another caller watches it)", rpcError("WarmCache", o.addr, err))
	case err != nil && callCtx.Err() != nil:
		return fmt.Errorf("%w (after --timeout %s)", rpcError("WarmCache", o.addr, err), o.timeout)
	case err != nil:
		return rpcError("WarmCache", o.addr, err)
	}

	completed := last.GetOutcome() == sessiondv1.WarmOutcome_WARM_OUTCOME_COMPLETED
	switch {
	case o.json:
	case o.estimate:
		fmt.Fprintf(env.Stdout, "📊 Warmable sessions: %d (an estimate: nothing was written)\n", last.GetTotal())
	default:
		printSummary(env.Stdout, last)
		sctx, cancel := context.WithTimeout(ctx, statsTimeout)
		st, err := client.GetStats(sctx, &sessiondv1.GetStatsRequest{})
		cancel()
		if err != nil {
			// The run's outcome decides the exit status; the metrics are extra.
			fmt.Fprintf(env.Stderr, "sessiond warm: no updated cache metrics: %v\n", rpcError("GetStats", o.addr, err))
		} else {
			printMetrics(env.Stdout, st.GetCache())
		}
	}
	if !completed {
		return fmt.Errorf("warming run %s on %s ended %s: %s", last.GetRunId(), o.addr, outcomeName(last.GetOutcome()), orNone(last.GetError()))
	}
	return nil
}

func (o *warmOptions) validate() error {
	if err := checkAddr(o.addr); err != nil {
		return err
	}
	for _, n := range []struct {
		flag, env string
		v         int
	}{{"count", "SESSIOND_COUNT", o.count}, {"batch-size", "SESSIOND_BATCH_SIZE", o.batchSize}} {
		if n.v < 0 || n.v > math.MaxInt32 {
			return usageError{fmt.Errorf("invalid --%s ($%s) %d: want 0 (the server's default) or a positive number", n.flag, n.env, n.v)}
		}
	}
	if o.timeout < 0 {
		return usageError{fmt.Errorf("invalid --timeout ($SESSIOND_TIMEOUT) %s: must not be negative (0 for no limit)", o.timeout)}
	}
	return nil
}

// view picks how progress is shown on w.
func (o *warmOptions) view(w io.Writer) progressView {
	switch {
	case o.json:
		return jsonView{w}
	case o.estimate:
		return discardView{}
	case isTerminal(w):
		return &barView{w: w}
	}
	return &lineView{w: w}
}

// follow calls WarmCache and shows each progress message until the one with
// done=true, which it returns.
func follow(ctx context.Context, client sessiondv1.SessionServiceClient, req *sessiondv1.WarmCacheRequest, view progressView) (*sessiondv1.WarmCacheProgress, error) {
	stream, err := client.WarmCache(ctx, req)
	if err != nil {
		return nil, err
	}
	for {
		p, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil, errors.New("the stream ended before the run did")
		}
		if err != nil {
			return nil, err
		}
		if err := view.show(p); err != nil {
			return nil, err
		}
		if p.GetDone() {
			return p, nil
		}
	}
}

// progressView shows a run's progress messages as they arrive.
type progressView interface {
	show(p *sessiondv1.WarmCacheProgress) error
	// close leaves the output at the start of a line, whether or not the
	// run's last message was shown.
	close()
}

// jsonView prints each message as one protojson object per line.
type jsonView struct{ w io.Writer }

func (v jsonView) show(p *sessiondv1.WarmCacheProgress) error {
	b, err := protojson.MarshalOptions{EmitUnpopulated: true}.Marshal(p)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(v.w, "%s\n", b)
	return err
}

func (jsonView) close() {}

type discardView struct{}

func (discardView) show(*sessiondv1.WarmCacheProgress) error { return nil }
func (discardView) close()                                   {}

// lineView prints the warming guide's log lines, one per message.
type lineView struct {
	w    io.Writer
	seen bool
}

func (v *lineView) show(p *sessiondv1.WarmCacheProgress) error {
	first := !v.seen
	v.seen = true
	processed := p.GetWarmed() + p.GetFailed()
	// A run that failed before counting has no total worth announcing.
	if first && (!p.GetDone() || p.GetOutcome() == sessiondv1.WarmOutcome_WARM_OUTCOME_COMPLETED || p.GetTotal() > 0) {
		if p.GetBatches() > 0 {
			fmt.Fprintf(v.w, "[CacheWarming] Joined run %s, already in progress\n", p.GetRunId())
		}
		fmt.Fprintf(v.w, "[CacheWarming] Found %d active sessions to warm\n", p.GetTotal())
	}
	if !p.GetDone() {
		if p.GetBatches() > 0 {
			fmt.Fprintf(v.w, "[CacheWarming] Progress: %d/%d (%d%%) - Failed: %d\n", processed, p.GetTotal(), progressPercent(processed, p.GetTotal()), p.GetFailed())
		}
		return nil
	}
	ms := p.GetElapsed().AsDuration().Milliseconds()
	if p.GetOutcome() == sessiondv1.WarmOutcome_WARM_OUTCOME_COMPLETED {
		_, err := fmt.Fprintf(v.w, "[CacheWarming] Completed in %dms - Warmed: %d/%d (%.2f%% estimated hit rate) - Failed: %d\n",
			ms, p.GetWarmed(), p.GetTotal(), p.GetEstimatedHitRate(), p.GetFailed())
		return err
	}
	_, err := fmt.Fprintf(v.w, "[CacheWarming] Stopped (%s) after %dms - Warmed: %d/%d - Failed: %d - Error: %s\n",
		outcomeName(p.GetOutcome()), ms, p.GetWarmed(), p.GetTotal(), p.GetFailed(), orNone(p.GetError()))
	return err
}

func (*lineView) close() {}

// progressPercent is done/total rounded as the guide shows it, but never
// 100 before the end.
func progressPercent(done, total int32) int {
	if total <= 0 {
		return 100
	}
	pct := int(math.Round(100 * float64(done) / float64(total)))
	if pct == 100 && done < total {
		pct = 99
	}
	return pct
}

// barView draws a progress bar, for a terminal.
type barView struct {
	w    io.Writer
	bar  *progressbar.ProgressBar
	open bool // the bar's line has not been ended yet
}

func (v *barView) show(p *sessiondv1.WarmCacheProgress) error {
	if v.bar == nil {
		if p.GetTotal() <= 0 {
			return nil // nothing to draw: the summary says why
		}
		v.bar = progressbar.NewOptions64(int64(p.GetTotal()),
			progressbar.OptionSetWriter(v.w),
			progressbar.OptionSetDescription(fmt.Sprintf("Warming %d sessions", p.GetTotal())),
			progressbar.OptionShowCount(),
			progressbar.OptionSetWidth(30),
			progressbar.OptionSetRenderBlankState(true),
		)
		v.open = true
	}
	if p.GetFailed() > 0 {
		v.bar.Describe(fmt.Sprintf("Warming %d sessions, %d failed", p.GetTotal(), p.GetFailed()))
	}
	// The bar's errors (a count past its max) are not worth stopping for.
	_ = v.bar.Set64(int64(p.GetWarmed() + p.GetFailed()))
	if p.GetDone() {
		if p.GetOutcome() == sessiondv1.WarmOutcome_WARM_OUTCOME_COMPLETED {
			_ = v.bar.Finish()
		}
		v.close()
	}
	return nil
}

func (v *barView) close() {
	if !v.open {
		return
	}
	_ = v.bar.Exit()
	fmt.Fprintln(v.w)
	v.open = false
}

// Thresholds from the warming guide.
const (
	hitRateTarget   = 90.0 // percent, the guide's goal within 5 minutes
	hitRateWarning  = 80.0
	hitRateCritical = 50.0
	errorsWarning   = 5.0 // percent of operations
	pendingWarning  = 10
	pendingCritical = 20
)

// printSummary prints the end of a run in the shape of the guide's example.
func printSummary(w io.Writer, p *sessiondv1.WarmCacheProgress) {
	rule := strings.Repeat("=", 60)
	fmt.Fprintf(w, "\n%s\n", rule)
	switch p.GetOutcome() {
	case sessiondv1.WarmOutcome_WARM_OUTCOME_COMPLETED:
		fmt.Fprintln(w, "✅ Cache warming completed successfully!")
	case sessiondv1.WarmOutcome_WARM_OUTCOME_TIMED_OUT:
		fmt.Fprintf(w, "❌ Cache warming timed out (outcome TIMED_OUT): %s; what was warmed stays warm\n", orNone(p.GetError()))
	case sessiondv1.WarmOutcome_WARM_OUTCOME_CANCELED:
		fmt.Fprintf(w, "❌ Cache warming was canceled (outcome CANCELED): %s\n", orNone(p.GetError()))
	default:
		fmt.Fprintf(w, "❌ Cache warming failed (outcome %s): %s\n", outcomeName(p.GetOutcome()), orNone(p.GetError()))
	}
	fmt.Fprintf(w, "   Duration: %.2fs\n", p.GetElapsed().AsDuration().Seconds())
	fmt.Fprintf(w, "   Sessions warmed: %d/%d\n", p.GetWarmed(), p.GetTotal())
	fmt.Fprintf(w, "   Failed: %d\n", p.GetFailed())
	fmt.Fprintf(w, "   Estimated hit rate: %s%%\n\n", percent(p.GetEstimatedHitRate()))
	switch {
	case p.GetTotal() == 0 && p.GetOutcome() == sessiondv1.WarmOutcome_WARM_OUTCOME_COMPLETED:
		fmt.Fprintln(w, "ℹ️  No session was active within the warming window: nothing to warm.")
	case p.GetEstimatedHitRate() >= hitRateTarget:
		fmt.Fprintf(w, "🎯 Target hit rate achieved (>=%g%%)!\n", hitRateTarget)
	default:
		fmt.Fprintf(w, "⚠️  Estimated hit rate %s%% is below the %g%% target\n", percent(p.GetEstimatedHitRate()), hitRateTarget)
	}
	fmt.Fprintln(w, rule)
}

// printMetrics prints the guide's "Updated Cache Metrics" block.
func printMetrics(w io.Writer, c *sessiondv1.CacheStats) {
	ops := c.GetHits() + c.GetMisses()
	note := ""
	if ops == 0 {
		note = "   (will increase with actual traffic)"
	}
	fmt.Fprintf(w, "\n📊 Updated Cache Metrics:\n")
	if !c.GetEnabled() {
		fmt.Fprintln(w, "   🚨 Cache disabled: Redis cannot be reached; answers come from Postgres")
	}
	fmt.Fprintf(w, "   Hit Rate: %s%%%s\n", percent(c.GetHitRate()), note)
	fmt.Fprintf(w, "   Total Operations: %d\n", ops)
	fmt.Fprintf(w, "   Cache Hits: %d\n", c.GetHits())
	fmt.Fprintf(w, "   Cache Misses: %d\n", c.GetMisses())
}

// percent formats a percentage with at most two decimals: 100, 92.5, 66.67.
func percent(v float64) string {
	return fmt.Sprint(math.Round(v*100) / 100)
}

// outcomeName is the outcome without its enum prefix: COMPLETED, FAILED...
func outcomeName(o sessiondv1.WarmOutcome) string {
	if o == sessiondv1.WarmOutcome_WARM_OUTCOME_UNSPECIFIED {
		return "RUNNING"
	}
	return strings.TrimPrefix(o.String(), "WARM_OUTCOME_")
}

func orNone(s string) string {
	if s == "" {
		return "no error given"
	}
	return s
}

// optionalDuration is a duration flag that knows whether it was set, for
// settings where unset (the server's default) differs from zero.
type optionalDuration struct {
	d   time.Duration
	set bool
}

func (o *optionalDuration) String() string {
	if o == nil || !o.set {
		return ""
	}
	return o.d.String()
}

func (o *optionalDuration) Set(s string) error {
	d, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	if d < 0 {
		return errors.New("must not be negative (0 for no pause)")
	}
	o.d, o.set = d, true
	return nil
}
