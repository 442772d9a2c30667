// Package warm loads recently active sessions from Postgres into Redis before
// callers ask for them, so that a fresh instance answers from cache at once.
// One run goes at a time per process; callers who ask while one runs join it.
package warm

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/sessiond/sessiond/internal/tiers"
)

// ErrPostgres and ErrRedis wrap the error that failed a run, saying which
// side failed: a startup run that fails on Postgres is retried (sessiond
// cannot answer anything uncached), one that fails on Redis is not (Postgres
// answers meanwhile).
var (
	ErrPostgres = errors.New("postgres")
	ErrRedis    = errors.New("redis")
)

// MaxBatchSize bounds a batch: each batch is one Redis call (a script over
// about five keys per session), and Redis runs a script alone, so a bigger
// batch would stall every other client of that Redis.
const MaxBatchSize = 5000

// Config is a warming run's settings; Request fields override some per run.
type Config struct {
	Count      int           // sessions per run, most recently active first
	BatchSize  int           // sessions per pipelined Redis write
	BatchDelay time.Duration // pause between batches, 0 for none
	Window     time.Duration // only sessions active within it
	Timeout    time.Duration // bound on a whole run
	// WriteTimeout bounds each batch's Redis write, so that a Redis that
	// stops answering fails the run instead of holding it to Timeout.
	WriteTimeout time.Duration
	// EstimateTTL is how long an estimate is reused (0: 5 s; see Estimate).
	EstimateTTL time.Duration
	Storage     tiers.TokenStorage
}

// Request is one caller's ask. Zero fields take the Config's values.
type Request struct {
	Count      int
	BatchSize  int
	BatchDelay *time.Duration
	// Phase names the run in its progress and logs.
	Phase Phase
	// KeepCached leaves sessions already cached in the current generation
	// as they are (counted as Kept): a new instance beside warm ones
	// writes nothing twice.
	KeepCached bool
	// Paced replaces BatchDelay with a pause that follows Redis's round
	// trip between batches: none while it stays at its best, longer (up to
	// a second) while it rises, so that callers' reads are not held up.
	Paced bool
}

// Phase says why a run runs.
type Phase string

const (
	PhaseManual     Phase = "manual"     // a WarmCache call
	PhaseStartup    Phase = "startup"    // before health turns SERVING
	PhaseBackground Phase = "background" // the rest of the window, after SERVING
	PhaseRewarm     Phase = "rewarm"     // the hit rate fell under the threshold
)

// Outcome is how a run ended.
type Outcome int

const (
	Running Outcome = iota
	Completed
	TimedOut
	Canceled
	Failed
)

func (o Outcome) String() string {
	return [...]string{"running", "completed", "timed_out", "canceled", "failed"}[o]
}

// Progress is a snapshot of a run.
type Progress struct {
	RunID      string
	Total      int // sessions found to warm
	Warmed     int
	Failed     int
	Skipped    int // not written on purpose: invalidated since the snapshot, or expired
	Kept       int // already cached in the current generation, left as they were (Request.KeepCached)
	Phase      Phase
	Batches    int
	Done       bool
	Outcome    Outcome
	Err        error // why the run failed; wraps ErrPostgres or ErrRedis
	StartedAt  time.Time
	FinishedAt time.Time // zero while running
	Elapsed    time.Duration
}

// EstimatedHitRate is warmed / found as a percentage, as the guide defines
// it; 0 when nothing was found.
func (p Progress) EstimatedHitRate() float64 {
	if p.Total == 0 {
		return 0
	}
	return 100 * float64(p.Warmed+p.Kept) / float64(p.Total)
}

// db is what warming needs of Postgres.
type db interface {
	BeginTx(ctx context.Context, opts pgx.TxOptions) (pgx.Tx, error)
}

// cache is what warming needs of Redis.
type cache interface {
	Gen(ctx context.Context) (int64, error)
	Ping(ctx context.Context) (time.Duration, error)
	SetMany(ctx context.Context, entries []tiers.Entry, st tiers.Stamp) ([]tiers.WriteResult, []error)
}

var _ cache = (*tiers.Redis)(nil)

// Warmer runs warming, one run at a time.
type Warmer struct {
	db    db
	cache cache
	cfg   Config
	log   *slog.Logger
	base  context.Context // runs live as long as this, not as long as a caller

	mu      sync.Mutex
	current *Run // the running run, nil when none
	last    *Run // the latest run, running or not

	est    estimates
	totals totals
}

// New returns a Warmer. Runs are bounded by base (the server's lifetime)
// and by cfg.Timeout, never by the context of the call that started them.
func New(base context.Context, d db, c cache, cfg Config, log *slog.Logger) *Warmer {
	if cfg.WriteTimeout <= 0 {
		cfg.WriteTimeout = 5 * time.Second
	}
	if cfg.EstimateTTL <= 0 {
		cfg.EstimateTTL = 5 * time.Second
	}
	return &Warmer{db: d, cache: c, cfg: cfg, log: log, base: base, est: newEstimates()}
}

// Config returns the settings.
func (w *Warmer) Config() Config { return w.cfg }

// Last returns the latest run's progress, and false when none has started.
func (w *Warmer) Last() (Progress, bool) {
	w.mu.Lock()
	r := w.last
	w.mu.Unlock()
	if r == nil {
		return Progress{}, false
	}
	return r.Snapshot(), true
}

// Start starts a run, or returns the one already running (joined=true),
// whose settings then stand. A run started with held=true is held by its
// starter until it ends (the server's own runs); otherwise it lives while
// anyone watches it: when its last watcher leaves, it is cancelled.
func (w *Warmer) Start(req Request, held bool) (r *Run, joined bool) {
	r, _, _, joined = w.start(req, held, false)
	return r, joined
}

// StartWatching is Start (not held) for a caller who follows the run: its
// watch (see Run.Watch) begins before a new run does, so that it sees every
// batch; a run of a few batches could otherwise end its first ones between
// a Start and a Watch.
func (w *Warmer) StartWatching(req Request) (r *Run, progress <-chan Progress, unwatch func(), joined bool) {
	return w.start(req, false, true)
}

func (w *Warmer) start(req Request, held, watch bool) (r *Run, progress <-chan Progress, unwatch func(), joined bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.current != nil {
		select {
		case <-w.current.Done(): // ended; its goroutine has not cleared it yet
		default:
			if watch {
				progress, unwatch = w.current.Watch()
			}
			return w.current, progress, unwatch, true
		}
	}
	cfg := w.cfg
	if req.Count > 0 {
		cfg.Count = req.Count
	}
	if req.BatchSize > 0 {
		cfg.BatchSize = req.BatchSize
	}
	if req.BatchDelay != nil {
		cfg.BatchDelay = max(0, *req.BatchDelay)
	}
	if req.Phase == "" {
		req.Phase = PhaseManual
	}
	ctx, cancel := context.WithTimeoutCause(w.base, cfg.Timeout, errTimeout)
	r = newRun(newRunID(), cancel, held)
	r.p.Phase = req.Phase
	w.current, w.last = r, r
	if watch {
		progress, unwatch = r.Watch()
	}
	go func() {
		defer cancel()
		w.run(ctx, r, cfg, req)
		w.mu.Lock()
		if w.current == r {
			w.current = nil
		}
		w.mu.Unlock()
	}()
	return r, progress, unwatch, false
}

var errTimeout = errors.New("warming run hit its time limit")

func newRunID() string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// warmable is the warming query's filter, the validity rule of
// tiers.Check in SQL plus the activity window. $1 is the window in seconds.
const warmable = `
FROM platform.user_sessions s
JOIN platform.users u ON u.id = s.user_id
WHERE s.expires_at > now()
  AND u.deleted_at IS NULL
  AND (u.banned_until IS NULL OR u.banned_until <= now())
  AND s.last_activity_at > now() - make_interval(secs => $1)`

const (
	countSQL = `SELECT count(*) FROM (SELECT 1 ` + warmable + ` LIMIT $2) w`
	// rowsAllSQL: every warmable row, in no order: when the count says the
	// run takes them all, sorting a million rows by activity buys nothing.
	rowsAllSQL = `SELECT s.token, ` + tiers.Columns + warmable + ` AND $2::int IS NOT NULL`
	rowsSQL    = `SELECT s.token, ` + tiers.Columns + warmable + `
ORDER BY s.last_activity_at DESC
LIMIT $2`
)

// run does one warming run and publishes its progress.
func (w *Warmer) run(ctx context.Context, r *Run, cfg Config, req Request) {
	log := w.log.With("run_id", r.id, "phase", string(req.Phase))
	log.Info(fmt.Sprintf("[CacheWarming] Starting cache warming for up to %d sessions", cfg.Count),
		"count", cfg.Count, "batch_size", cfg.BatchSize, "batch_delay", cfg.BatchDelay.String(), "paced", req.Paced,
		"keep_cached", req.KeepCached, "window", cfg.Window.String())
	err := w.warm(ctx, r, cfg, req, log)
	p := r.finish(outcomeOf(ctx, err), err)
	w.totals.runs[p.Outcome].Add(1)
	switch p.Outcome {
	case Completed:
		log.Info(fmt.Sprintf("[CacheWarming] Completed in %dms - Warmed: %d/%d (%.2f%% estimated hit rate) - Failed: %d",
			p.Elapsed.Milliseconds(), p.Warmed, p.Total, p.EstimatedHitRate(), p.Failed),
			"duration_ms", p.Elapsed.Milliseconds(), "warmed", p.Warmed, "total", p.Total, "failed", p.Failed,
			"skipped", p.Skipped, "kept", p.Kept, "estimated_hit_rate", p.EstimatedHitRate(), "outcome", p.Outcome.String())
	default:
		log.Warn(fmt.Sprintf("[CacheWarming] Stopped (%s) after %dms - Warmed: %d/%d - Kept: %d - Failed: %d", p.Outcome, p.Elapsed.Milliseconds(), p.Warmed, p.Total, p.Kept, p.Failed),
			"duration_ms", p.Elapsed.Milliseconds(), "warmed", p.Warmed, "total", p.Total, "failed", p.Failed,
			"skipped", p.Skipped, "kept", p.Kept, "estimated_hit_rate", p.EstimatedHitRate(), "outcome", p.Outcome.String(), "error", errString(p.Err))
	}
}

func outcomeOf(ctx context.Context, err error) Outcome {
	switch {
	case errors.Is(context.Cause(ctx), errTimeout):
		return TimedOut
	case ctx.Err() != nil:
		return Canceled
	case err != nil:
		return Failed
	}
	return Completed
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// warm counts and streams the warmable rows in one read-only snapshot (so
// the count announced first is the number of rows that follow), and writes
// them to Redis batch by batch. Reading the next batch overlaps writing the
// previous one. It returns nil when every row was attempted.
func (w *Warmer) warm(ctx context.Context, r *Run, cfg Config, req Request, log *slog.Logger) error {
	// The stamp is taken before the snapshot: entries of sessions
	// invalidated after it are refused by Redis (see tiers.Redis.SetMany).
	gctx, cancel := context.WithTimeout(ctx, cfg.WriteTimeout)
	gen, genErr := w.cache.Gen(gctx)
	cancel()
	st := tiers.Stamp{ReadStart: time.Now(), Gen: gen, KeepCached: req.KeepCached}
	tx, err := w.db.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return fmt.Errorf("%w: begin: %w", ErrPostgres, err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck // read-only
	var total int
	if err := tx.QueryRow(ctx, countSQL, cfg.Window.Seconds(), cfg.Count).Scan(&total); err != nil {
		return fmt.Errorf("%w: count warmable sessions: %w", ErrPostgres, err)
	}
	r.found(total)
	log.Info(fmt.Sprintf("[CacheWarming] Found %d active sessions to warm", total), "total", total)
	if total == 0 {
		return nil
	}
	if genErr != nil { // Redis is down: say how many were found, write none
		return fmt.Errorf("%w: %w", ErrRedis, genErr)
	}

	query := rowsSQL
	if total < cfg.Count {
		query = rowsAllSQL
	}
	// Not kept prepared: a migration that changes a column it returns
	// would make Postgres refuse the kept statement on each pooled
	// connection in turn, failing one run each ("cached plan must not
	// change result type"). Describing it afresh costs a round trip a run.
	rows, err := tx.Query(ctx, query, pgx.QueryExecModeDescribeExec, cfg.Window.Seconds(), cfg.Count)
	if err != nil {
		return fmt.Errorf("%w: query warmable sessions: %w", ErrPostgres, err)
	}
	defer rows.Close()

	// One batch being filled from the rows while others are written. Rows
	// are streamed, never all held: at most writers+1 batches exist. A run
	// that pauses between batches (a delay, or paced) has one writer, so
	// its pause means what it says; an unpaused one has several, so that
	// Redis executes one batch while the next is encoded and sent (Redis
	// runs one script at a time: more writers than that buy nothing).
	writers := 1
	if cfg.BatchDelay == 0 && !req.Paced {
		writers = fullSpeedWriters
	}
	batches := make(chan batch, 1)
	free := make(chan []tiers.Entry, writers+1)
	for range writers + 1 {
		free <- make([]tiers.Entry, 0, cfg.BatchSize)
	}
	// A writer that gives up (Redis down) stops the reader and the other
	// writers through rctx.
	rctx, stopReading := context.WithCancel(ctx)
	defer stopReading()
	writeErr := make(chan error, writers)
	for range writers {
		go func() {
			err := w.write(rctx, r, cfg, req.Paced, st, batches, free, log)
			if err != nil {
				stopReading()
			}
			writeErr <- err
		}()
	}

	readErr := func() error {
		defer close(batches)
		// Each batch's turn opens when the one before it has been counted.
		turn := make(chan struct{})
		close(turn)
		send := func(entries []tiers.Entry) bool {
			next := make(chan struct{})
			select {
			case batches <- batch{entries: entries, turn: turn, next: next}:
				turn = next
				return true
			case <-rctx.Done():
				return false
			}
		}
		batch := <-free
		var rs tiers.RowScan
		var stored string
		dest := append([]any{&stored}, rs.Dest()...)
		var scan *rawScanner // planned at the first row: a query that failed has no fields
		for rows.Next() {
			if scan == nil {
				scan = newRawScanner(rows.Conn().TypeMap(), rows.FieldDescriptions(), dest)
			}
			// Column by column from the raw values, not rows.Scan: a failed
			// Scan closes the rows, and one row an application wrote in a
			// way sessiond cannot read must not fail every warm (and hold
			// health at NOT_SERVING). It is skipped, and said which.
			raw := rows.RawValues()
			if col, err := scan.row(raw); err != nil {
				r.unreadable()
				log.Warn("[CacheWarming] session row skipped: sessiond cannot read it", "session_id", string(raw[1]), "column", col, "error", err)
				continue
			}
			batch = append(batch, tiers.Entry{Key: tiers.RowKey(stored, cfg.Storage), Record: rs.Record()})
			if len(batch) == cfg.BatchSize {
				if !send(batch) {
					return rctx.Err()
				}
				select {
				case batch = <-free:
				case <-rctx.Done():
					return rctx.Err()
				}
			}
		}
		if err := rows.Err(); err != nil {
			return fmt.Errorf("%w: read session rows: %w", ErrPostgres, err)
		}
		if len(batch) > 0 && !send(batch) {
			return rctx.Err()
		}
		return nil
	}()
	var werr error
	for range writers {
		// A writer's own error is the cause; a writer that another one
		// stopped says only context.Canceled.
		if err := <-writeErr; err != nil && (werr == nil || errors.Is(werr, context.Canceled)) {
			werr = err
		}
	}
	if werr != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return werr // a writer stopping made the reader stop too
	}
	return readErr
}

// fullSpeedWriters is the number of batches an unpaused run writes at once.
const fullSpeedWriters = 3

// batch is a batch of entries to write, and its place in the run: writers
// write batches at once, but count and report them in the order of the
// rows, so that progress reads as it would with one writer.
type batch struct {
	entries []tiers.Entry
	turn    <-chan struct{} // closed when the batch before it is counted
	next    chan struct{}   // closed when this one is
}

// write writes batches as they come, pausing between them (BatchDelay, or
// paced by Redis's round trip). A batch whose every entry failed means Redis
// is down: the run fails.
func (w *Warmer) write(ctx context.Context, r *Run, cfg Config, paced bool, st tiers.Stamp, batches <-chan batch, free chan<- []tiers.Entry, log *slog.Logger) error {
	first := true
	pace := pacer{delay: cfg.BatchDelay}
	if paced {
		pace.delay = 0
	}
	for b := range batches {
		if err := w.writeOne(ctx, r, cfg, paced, &pace, first, st, b, log); err != nil {
			return err
		}
		first = false
		free <- b.entries[:0]
	}
	return nil
}

// writeOne writes one batch, then counts it once the batch before it is
// counted (which always happens: every batch, even one that fails or is
// abandoned, opens the next one's turn).
func (w *Warmer) writeOne(ctx context.Context, r *Run, cfg Config, paced bool, pace *pacer, first bool, st tiers.Stamp, b batch, log *slog.Logger) error {
	defer close(b.next)
	batch := b.entries
	if !first && paced {
		pctx, cancel := context.WithTimeout(ctx, cfg.WriteTimeout)
		rtt, err := w.cache.Ping(pctx)
		cancel()
		pace.observe(rtt, err)
	}
	if !first && pace.delay > 0 {
		t := time.NewTimer(pace.delay)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		}
	}
	wctx, cancel := context.WithTimeout(ctx, cfg.WriteTimeout)
	res, errs := w.cache.SetMany(wctx, batch, st)
	cancel()
	<-b.turn
	var warmed, failed, skipped, kept int
	var firstErr error
	for i, r := range res {
		switch r {
		case tiers.Written:
			warmed++
		case tiers.Skipped:
			skipped++
		case tiers.Kept:
			kept++
		default:
			failed++
			if firstErr == nil {
				firstErr = errs[i]
			}
		}
	}
	// Counted before a timeout is acted on: what was written is reported.
	p := r.batchDone(warmed, failed, skipped, kept)
	w.totals.add(warmed, failed, skipped)
	if ctx.Err() != nil {
		return ctx.Err()
	}
	done := p.Warmed + p.Failed + p.Skipped + p.Kept
	log.Info(fmt.Sprintf("[CacheWarming] Progress: %d/%d (%d%%) - Failed: %d", done, p.Total, percent(done, p.Total), p.Failed),
		"done", done, "total", p.Total, "failed", p.Failed, "skipped", p.Skipped, "kept", p.Kept, "batch", p.Batches, "pause", pace.delay.String())
	if failed == len(batch) {
		return fmt.Errorf("%w: %w", ErrRedis, firstErr)
	}
	if failed > 0 {
		log.Warn("[CacheWarming] some sessions could not be written", "failed", failed, "error", firstErr)
	}
	return nil
}

// pacer sets the pause between a paced run's batches from Redis's round
// trip (a PING before each batch), against the median of the last
// pacerWindow round trips: what Redis answers in now, under the callers'
// load as it is. Over twice that plus a millisecond means Redis just got
// busier (with us or with callers), and the pause doubles, up to a second;
// otherwise it halves, down to none. A rise that lasts becomes the new
// baseline once it fills half the window, and the run goes on at its pace.
//
// Against the best round trip ever seen, as before, a loaded machine never
// got back under the bar (a round trip's spread under load is wide): in
// `sessionbench coldstart` (32 callers from SERVING) the background warm
// paused before most batches and was done after 5.0 s, 8.7 s, or not
// within the 10 s (31,000 of 38,377), while the sessions it had not written
// yet cost callers a Postgres read each: a hit rate over the 10 s of 95.7 %
// (93.5–96.9). Against the median, with batches of 250 (see the server's
// backgroundBatch), it was done after 1.7–2.1 s: 96.4 % (96.3–96.8).
type pacer struct {
	delay  time.Duration
	recent [pacerWindow]time.Duration // 0: not yet observed
	next   int
}

const pacerWindow = 16

func (p *pacer) observe(rtt time.Duration, err error) {
	var seen []time.Duration
	for _, r := range p.recent {
		if r > 0 {
			seen = append(seen, r)
		}
	}
	var base time.Duration
	if len(seen) > 0 {
		slices.Sort(seen)
		base = seen[(len(seen)-1)/2] // the lower median
	}
	if err == nil {
		p.recent[p.next%pacerWindow] = max(rtt, 1) // 0 means not observed
		p.next++
	}
	if err != nil || base > 0 && rtt > 2*base+time.Millisecond {
		p.delay = min(max(2*p.delay, 5*time.Millisecond), time.Second)
		return
	}
	if p.delay /= 2; p.delay < time.Millisecond {
		p.delay = 0
	}
}

// rawScanner scans rows' raw values into fixed destinations, column by
// column, and names the column that failed. Each column's scan plan is made
// once per run: planning it for every value (pgtype.Map.Scan) was a third of
// the reader's CPU. A plan depends only on the column's type, format and
// the destination's type, which do not change within one query.
type rawScanner struct {
	fields []pgconn.FieldDescription
	dest   []any
	plans  []pgtype.ScanPlan
}

func newRawScanner(types *pgtype.Map, fields []pgconn.FieldDescription, dest []any) *rawScanner {
	s := &rawScanner{fields: fields, dest: dest, plans: make([]pgtype.ScanPlan, len(dest))}
	for i := range min(len(dest), len(fields)) {
		s.plans[i] = types.PlanScan(fields[i].DataTypeOID, fields[i].Format, dest[i])
	}
	return s
}

func (s *rawScanner) row(raw [][]byte) (string, error) {
	if len(raw) != len(s.plans) || len(s.fields) != len(s.plans) {
		return "", fmt.Errorf("%d columns, want %d", len(raw), len(s.plans))
	}
	for i, p := range s.plans {
		if err := p.Scan(raw[i], s.dest[i]); err != nil {
			return s.fields[i].Name, err
		}
	}
	return "", nil
}

func percent(n, total int) int {
	if total == 0 {
		return 100
	}
	return n * 100 / total
}
