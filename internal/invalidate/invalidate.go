// Package invalidate keeps the cache honest when the source of truth
// changes: it listens for the database triggers' notifications (and takes
// InvalidateSessions calls) and has the fence drop what they name from
// Redis, which drops it from every instance's client-side cache. It also
// proves, with heartbeats, that its LISTEN connection hears what is
// committed, and tells the fence when it cannot (see tiers.Fence).
package invalidate

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/cenkalti/backoff/v5"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/sessiond/sessiond/internal/schema"
	"github.com/sessiond/sessiond/internal/tiers"
)

// fence is what invalidation needs of the revocation fence.
type fence interface {
	Heard(b tiers.Batch)
	Apply(ctx context.Context, b tiers.Batch) (int64, error)
	NoteLoss()
	Resync(ctx context.Context, why string) error
	SetListener(s tiers.ListenerState)
	Coverage(ctx context.Context) (int64, error)
	AdvanceCoverage(ctx context.Context, at int64) (bool, error)
	SetCoverage(ctx context.Context, at int64) error
}

var _ fence = (*tiers.Fence)(nil)

// Options configures an Invalidator.
type Options struct {
	DatabaseURL string             // for the dedicated LISTEN and heartbeat connections
	Storage     tiers.TokenStorage // what user_sessions.token holds (the triggers must hash for it)
	Timeout     time.Duration      // bound on each Redis or Postgres call
	// Heartbeat is how often this instance sends a heartbeat through
	// Postgres to every listener. A listener that hears nothing for
	// 3 × Heartbeat is taken for lost: a half-open or silently broken LISTEN
	// is noticed within 3 × Heartbeat + a watchdog tick (1.6 s at 500 ms).
	Heartbeat time.Duration
}

// Invalidator applies invalidations. Its methods are safe for concurrent use.
type Invalidator struct {
	fence fence
	opts  Options
	log   *slog.Logger
	id    string // this instance, in heartbeats

	ready     chan struct{} // closed when the listener first covers
	readyOnce sync.Once

	mu      sync.Mutex
	queue   []string      // payloads received, not yet handled
	arrived chan struct{} // something was queued

	lastHeard atomic.Int64  // Unix ns of the last notification received
	joinSeen  atomic.Uint64 // the last of our joining heartbeats received
	joinNonce atomic.Uint64
	hbNow     chan uint64 // asks the heartbeat sender for a joining heartbeat
	oldFormat atomic.Bool // triggers of version 1 are installed

	lastVouched atomic.Int64 // the latest coverage this instance recorded

	notifications, heartbeats, batches atomic.Int64
}

// New returns an Invalidator that has f apply what it hears.
func New(f fence, o Options, log *slog.Logger) *Invalidator {
	if o.Heartbeat <= 0 {
		o.Heartbeat = 500 * time.Millisecond
	}
	var b [4]byte
	_, _ = rand.Read(b[:])
	return &Invalidator{fence: f, opts: o, log: log, id: hex.EncodeToString(b[:]),
		ready: make(chan struct{}), arrived: make(chan struct{}, 1), hbNow: make(chan uint64, 1)}
}

// Ready is closed once the listener covers for the first time (see
// tiers.ListenerCovering): entries believed after that are kept honest by
// notifications.
func (v *Invalidator) Ready() <-chan struct{} { return v.ready }

// Notifications is how many invalidation notifications have been received.
func (v *Invalidator) Notifications() int64 { return v.notifications.Load() }

// Heartbeats is how many heartbeats (any instance's) have been received.
func (v *Invalidator) Heartbeats() int64 { return v.heartbeats.Load() }

// Batches is how many batches of notifications were applied.
func (v *Invalidator) Batches() int64 { return v.batches.Load() }

// User drops every cached session of a user, returning how many entries.
func (v *Invalidator) User(ctx context.Context, userID string) (int64, error) {
	return v.fence.Apply(ctx, tiers.Batch{Users: []string{userID}})
}

// Token drops the cached entry (or negative) of a raw token.
func (v *Invalidator) Token(ctx context.Context, token string) (int64, error) {
	return v.fence.Apply(ctx, tiers.Batch{Keys: []string{tiers.TokenKey(token)}})
}

// ErrBadPayload is returned, wrapped, for a notification sessiond did not
// send.
var ErrBadPayload = errors.New("unrecognised notification")

// heartbeat is a parsed h:<instance>:<µs>[:j<nonce>] payload.
type heartbeat struct {
	from  string
	at    int64 // Postgres clock, Unix µs
	join  uint64
	isHB  bool
	valid bool
}

func parseHeartbeat(p string) heartbeat {
	rest, ok := strings.CutPrefix(p, "h:")
	if !ok {
		return heartbeat{}
	}
	parts := strings.Split(rest, ":")
	h := heartbeat{isHB: true}
	if len(parts) < 2 {
		return h
	}
	at, err := strconv.ParseInt(parts[1], 10, 64)
	if err != nil {
		return h
	}
	h.from, h.at, h.valid = parts[0], at, true
	if len(parts) == 3 {
		if j, ok := strings.CutPrefix(parts[2], "j"); ok {
			h.join, _ = strconv.ParseUint(j, 10, 64)
		}
	}
	return h
}

// parse adds what payload asks to b. needResync reports a change that names
// nothing precisely (a TRUNCATE, or a first-version notification that would
// need a Postgres query).
func (v *Invalidator) parse(payload string, b *tiers.Batch) (needResync bool, err error) {
	kind, rest, _ := strings.Cut(payload, ":")
	items := strings.Split(rest, ",")
	switch kind {
	case "t":
		return true, nil
	case "u":
		for _, u := range items {
			if !isUUID(u) {
				return false, fmt.Errorf("%w: %q", ErrBadPayload, payload)
			}
			b.Users = append(b.Users, strings.ToLower(u))
		}
		return false, nil
	case "s", "i":
		if sid, uid, ok := strings.Cut(rest, ":"); ok && isUUID(sid) && isUUID(uid) && kind == "s" {
			// Version 1: s:<session id>:<user id>. Dropping the user's
			// entries is coarser but needs no query.
			v.noteOldFormat()
			b.Users = append(b.Users, strings.ToLower(uid))
			return false, nil
		}
		if kind == "i" && isUUID(rest) {
			// Version 1: i:<session id>; its key needs a query.
			v.noteOldFormat()
			return true, nil
		}
		for _, h := range items {
			if !isHex64(h) {
				return false, fmt.Errorf("%w: %q", ErrBadPayload, payload)
			}
			if kind == "s" {
				b.Keys = append(b.Keys, tiers.Key(h))
			} else {
				b.NewKeys = append(b.NewKeys, tiers.Key(h))
			}
		}
		return false, nil
	}
	return false, fmt.Errorf("%w: %q", ErrBadPayload, payload)
}

func (v *Invalidator) noteOldFormat() {
	if !v.oldFormat.Swap(true) {
		v.log.Warn("the invalidation triggers are of an earlier version: run `sessiond migrate` to upgrade them (until then, changes are handled more coarsely)")
	}
}

// work is what the handler has received and not yet applied.
type work struct {
	revocations tiers.Batch // users and keys: applied first, all at once
	newKeys     []string    // new tokens' negative entries: applied in chunks, after revocations
	vouch       int64       // a heartbeat time to vouch for once everything before it is applied
}

func (w *work) empty() bool { return w.revocations.Len() == 0 && len(w.newKeys) == 0 }

// newKeyChunk bounds the new-token drops applied between two looks at the
// queue: a login burst of thousands of sessions must not hold a ban behind
// it (a drop of a negative entry can wait; a revocation cannot).
const newKeyChunk = 250

// take parses payloads received together into w, in order. A change that
// names nothing precisely (a TRUNCATE, or a first-version notification that
// would need a Postgres query) is a loss at once: nothing cached is believed
// until a bump.
func (v *Invalidator) take(payloads []string, w *work) {
	resync := false
	for _, p := range payloads {
		if h := parseHeartbeat(p); h.isHB {
			// Our own heartbeats, and a joining instance's: a joiner needs
			// the shared coverage to pass its LISTEN at once.
			if h.valid && (h.from == v.id || h.join != 0) {
				w.vouch = max(w.vouch, h.at)
			}
			continue
		}
		v.notifications.Add(1)
		var b tiers.Batch
		r, err := v.parse(p, &b)
		if err != nil {
			v.log.Warn("notification ignored", "error", err)
			continue
		}
		resync = resync || r
		w.revocations.Users = append(w.revocations.Users, b.Users...)
		w.revocations.Keys = append(w.revocations.Keys, b.Keys...)
		w.newKeys = append(w.newKeys, b.NewKeys...)
	}
	if resync {
		v.fence.NoteLoss()
		v.log.Info("a change names no entries (a TRUNCATE, or a trigger of an earlier version): resyncing")
	}
}

// step applies every pending revocation, then one chunk of new-token drops,
// and vouches for the heartbeat once nothing received before it is pending.
// A failed apply is a loss (the fence distrusts until a bump).
func (v *Invalidator) step(ctx context.Context, w *work) error {
	var err error
	if w.revocations.Len() > 0 {
		v.batches.Add(1)
		_, err = v.fence.Apply(ctx, w.revocations)
		w.revocations = tiers.Batch{}
	}
	if err == nil && len(w.newKeys) > 0 {
		n := min(len(w.newKeys), newKeyChunk)
		_, err = v.fence.Apply(ctx, tiers.Batch{NewKeys: w.newKeys[:n]})
		w.newKeys = w.newKeys[n:]
	}
	if err != nil {
		if ctx.Err() == nil {
			v.log.Warn("invalidations not applied; nothing cached is believed until the generation is bumped", "error", err)
		}
		w.newKeys = nil // the bump that clears the loss supersedes them
		return err
	}
	if w.empty() && w.vouch > 0 {
		ok, err := v.fence.AdvanceCoverage(ctx, w.vouch)
		switch {
		case err != nil && ctx.Err() == nil:
			v.log.Debug("coverage not advanced", "error", err)
		case ok:
			v.lastVouched.Store(w.vouch)
		}
		w.vouch = 0
	}
	return nil
}

// Handle applies payloads received together, in order, and reports the
// first error: what the handler loop does, at once.
func (v *Invalidator) Handle(ctx context.Context, payloads []string) error {
	var w work
	v.take(payloads, &w)
	var first error
	for !w.empty() || w.vouch > 0 {
		if err := v.step(ctx, &w); err != nil && first == nil {
			first = err
		}
		if first != nil {
			break
		}
	}
	return first
}

// enqueue is the LISTEN connection's notification callback: it only queues,
// so that reading the connection is never held up by Redis.
func (v *Invalidator) enqueue(_ *pgconn.PgConn, n *pgconn.Notification) {
	v.lastHeard.Store(time.Now().UnixNano())
	if h := parseHeartbeat(n.Payload); h.isHB {
		v.heartbeats.Add(1)
		if h.valid && h.from == v.id && h.join != 0 {
			v.joinSeen.Store(h.join)
		}
	} else {
		// This instance stops believing its local copies of what a
		// revocation names the moment it hears of it, not once it is
		// applied (which a slow Redis delays).
		var b tiers.Batch
		if _, err := v.parse(n.Payload, &b); err == nil {
			v.fence.Heard(b)
		}
	}
	v.mu.Lock()
	v.queue = append(v.queue, n.Payload)
	v.mu.Unlock()
	select {
	case v.arrived <- struct{}{}:
	default:
	}
}

// handleLoop applies what arrives until ctx ends: all that arrived together
// at once, revocations before new-token drops, looking at the queue again
// between chunks of those.
func (v *Invalidator) handleLoop(ctx context.Context) {
	var w work
	for {
		if w.empty() && w.vouch == 0 {
			select {
			case <-ctx.Done():
				return
			case <-v.arrived:
			}
		} else if ctx.Err() != nil {
			return
		}
		v.mu.Lock()
		payloads := v.queue
		v.queue = nil
		v.mu.Unlock()
		v.take(payloads, &w)
		_ = v.step(ctx, &w)
	}
}

// Run listens for notifications until ctx ends (unless listen is false:
// then there is nothing to run), reconnecting by itself, and sends
// heartbeats. It returns nil when ctx ends.
func (v *Invalidator) Run(ctx context.Context, listen bool) error {
	if !listen {
		v.readyOnce.Do(func() { close(v.ready) })
		return nil
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	wg.Go(func() { v.handleLoop(ctx) })
	wg.Go(func() { v.heartbeatLoop(ctx) })

	b := backoff.NewExponentialBackOff()
	b.InitialInterval, b.MaxInterval = 100*time.Millisecond, 5*time.Second
	down := false
	for ctx.Err() == nil {
		lived, err := v.listen(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if lived {
			b.Reset()
		}
		// Nothing can be committed while Postgres refuses connections, so
		// nothing can be revoked: what is cached stays true, provided
		// nothing was missed before Postgres went away (this listener heard
		// it until moments ago). Look often, since a Postgres that is back
		// accepts revocations before we hear them.
		var refused connectError
		if errors.As(err, &refused) && postgresDown(refused.err) &&
			(down || time.Since(time.Unix(0, v.lastHeard.Load())) <= downGrace) {
			v.fence.SetListener(tiers.ListenerPostgresDown)
			if !down {
				v.log.Warn(MsgPostgresDown, "error", err)
			}
			down = true
			if !sleep(ctx, pgDownRetry) {
				return nil
			}
			continue
		}
		down = false
		v.fence.SetListener(tiers.ListenerLost)
		// At once after a connection that lived (Postgres may be down,
		// which the next attempt tells); with backoff after one that did
		// not.
		d := time.Duration(0)
		if !lived {
			d = b.NextBackOff()
		}
		v.log.Warn(MsgListenerLost, "error", err, "retry_in", d.String())
		if !sleep(ctx, d) {
			return nil
		}
	}
	return nil
}

// Log messages an operator (or a test) looks for.
const (
	MsgListenerLost = "invalidation listener lost; answering from postgres until it hears again"
	MsgPostgresDown = "postgres refuses connections; answering from the cache until it accepts them (nothing can be revoked meanwhile)"
)

// downGrace is how recently the listener must have heard something for a
// refusal to count as Postgres being down with nothing missed: a listener
// that was deaf for longer (a half-open connection, say) may have missed
// revocations committed before Postgres went away, so it distrusts instead.
const downGrace = time.Second

// pgDownRetry is how often the listener tries again while Postgres refuses
// connections. While it does, cached answers are given; this bounds how long
// after Postgres accepts connections again a revocation can go unheard.
const pgDownRetry = 100 * time.Millisecond

func sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// postgresDown reports whether err, a failure to connect, says that
// Postgres refuses connections on every host tried: the TCP connection was
// refused, or reset or closed before the server said anything (what a
// proxy in front of a stopped Postgres does), the server is starting up or
// shutting down (SQLSTATE 57P03), or it is read-only (no primary, with
// target_session_attrs=read-write). A timeout is not: a host that does not
// answer may still commit for others. (A proxy that cannot reach a Postgres
// that others still reach looks down too: that partition is the one case
// where cached answers are given while revocations may be committed; the
// README says so.)
func postgresDown(err error) bool {
	for err != nil {
		if j, ok := err.(interface{ Unwrap() []error }); ok {
			errs := j.Unwrap()
			for _, e := range errs {
				if !postgresDown(e) {
					return false
				}
			}
			return len(errs) > 0
		}
		switch e := err.(type) {
		case syscall.Errno:
			return e == syscall.ECONNREFUSED || e == syscall.ECONNRESET
		case *pgconn.PgError:
			// 57P01 and 57P02 end a backend that was running (an
			// administrator's pg_terminate_backend among them): not a
			// refusal.
			return e.Code == "57P03"
		}
		if err == pgconn.ErrReadOnlyConnection || err == io.EOF || err == io.ErrUnexpectedEOF {
			return true
		}
		err = errors.Unwrap(err)
	}
	return false
}

// connectError is a failure to connect and LISTEN, as opposed to a
// connection lost later: only the former can say that Postgres is down (an
// established connection ends with 57P01 when its backend is terminated).
type connectError struct{ err error }

func (e connectError) Error() string { return e.err.Error() }
func (e connectError) Unwrap() error { return e.err }

var errNotHearing = errors.New("LISTEN connection does not receive notifications (a connection pooler in transaction mode?)")

// listen runs one LISTEN connection: it connects, proves it hears (its own
// joining heartbeat comes back), establishes coverage (see cover), then
// watches that heartbeats keep coming. lived reports whether it covered.
func (v *Invalidator) listen(ctx context.Context) (lived bool, err error) {
	cfg, err := pgx.ParseConfig(v.opts.DatabaseURL)
	if err != nil {
		return false, fmt.Errorf("listen: %w", err)
	}
	cfg.OnNotification = v.enqueue
	cfg.RuntimeParams["application_name"] = ListenerApplicationName
	if cfg.ConnectTimeout == 0 || cfg.ConnectTimeout > v.opts.Timeout {
		cfg.ConnectTimeout = v.opts.Timeout
	}
	cctx, cancel := context.WithTimeout(ctx, v.opts.Timeout)
	conn, err := pgx.ConnectConfig(cctx, cfg)
	var since int64
	if err == nil {
		_, err = conn.Exec(cctx, "LISTEN "+pgx.Identifier{schema.Channel}.Sanitize())
		if err == nil {
			// After LISTEN: everything committed from now on reaches us.
			err = conn.QueryRow(cctx, pgNowMicros).Scan(&since)
		}
		if err == nil {
			err = v.checkTriggers(cctx, conn)
		}
	}
	cancel()
	if err != nil {
		if conn != nil {
			conn.Close(context.WithoutCancel(ctx))
		}
		return false, connectError{fmt.Errorf("listen: %w", err)}
	}
	defer conn.Close(context.WithoutCancel(ctx))
	// Postgres answers again: from now on revocations can be committed, and
	// until this listener covers, what is cached is not believed.
	v.fence.SetListener(tiers.ListenerLost)

	rctx, stop := context.WithCancel(ctx)
	defer stop()
	received := make(chan error, 1)
	go func() { received <- receive(rctx, conn) }()
	defer func() { stop(); <-received }()

	v.lastHeard.Store(time.Now().UnixNano())
	if err := v.join(ctx, received); err != nil {
		return false, err
	}
	v.cover(ctx, since)
	v.fence.SetListener(tiers.ListenerCovering)
	v.readyOnce.Do(func() { close(v.ready) })
	v.log.Info("invalidation listener covering", "instance", v.id)

	tick := time.NewTicker(watchdogTick)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return true, ctx.Err()
		case err := <-received:
			received <- err // for the deferred wait
			return true, err
		case <-tick.C:
			if quiet := time.Since(time.Unix(0, v.lastHeard.Load())); quiet > 3*v.opts.Heartbeat {
				return true, fmt.Errorf("no heartbeat heard for %s", quiet.Round(time.Millisecond))
			}
		}
	}
}

// The application_name of the LISTEN and heartbeat connections in
// pg_stat_activity, so that an operator (or a test) can find them.
const (
	ListenerApplicationName  = "sessiond-listener"
	HeartbeatApplicationName = "sessiond-heartbeat"
)

func connectAs(ctx context.Context, url, name string) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig(url)
	if err != nil {
		return nil, err
	}
	cfg.RuntimeParams["application_name"] = name
	return pgx.ConnectConfig(ctx, cfg)
}

// watchdogTick is how often the listener checks that heartbeats still come.
const watchdogTick = 100 * time.Millisecond

// pgNowMicros is Postgres's clock in Unix µs: heartbeats and coverage use
// Postgres's clock, not the instances', so skew between them plays no part.
const pgNowMicros = `SELECT (extract(epoch from clock_timestamp()) * 1000000)::bigint`

func receive(ctx context.Context, conn *pgx.Conn) error {
	for {
		if err := conn.PgConn().WaitForNotification(ctx); err != nil {
			return err
		}
	}
}

// checkTriggers warns of triggers that do not send what this instance needs.
func (v *Invalidator) checkTriggers(ctx context.Context, conn *pgx.Conn) error {
	version, storage, err := schema.InstalledTriggers(ctx, conn)
	if err != nil {
		return err
	}
	switch {
	case version == 0:
		v.log.Info("no invalidation triggers installed: only InvalidateSessions calls and heartbeats will be heard")
	case version == 1:
		v.noteOldFormat()
	case storage != string(v.opts.Storage):
		// The triggers would send keys this instance does not use: every
		// revocation would be missed. Refuse to cover.
		return fmt.Errorf("the invalidation triggers were installed for --token-storage=%s but sessiond runs with %s: run `sessiond migrate --token-storage=%s`", storage, v.opts.Storage, v.opts.Storage)
	}
	return nil
}

// join asks for a joining heartbeat and waits until this listener hears it:
// proof that notifications committed by others reach it.
func (v *Invalidator) join(ctx context.Context, received chan error) error {
	nonce := v.joinNonce.Add(1)
	select {
	case v.hbNow <- nonce:
	default:
		// One is pending already; replace it.
		select {
		case <-v.hbNow:
		default:
		}
		v.hbNow <- nonce
	}
	deadline := time.NewTimer(joinTimeout)
	defer deadline.Stop()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for v.joinSeen.Load() < nonce {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case err := <-received:
			received <- err
			return err
		case <-deadline.C:
			v.log.Error("the LISTEN connection did not hear its own heartbeat: no revocation would be heard; answering from postgres", "error", errNotHearing)
			return errNotHearing
		case <-tick.C:
		}
	}
	return nil
}

// joinTimeout bounds how long a new LISTEN connection may take to hear its
// first heartbeat.
const joinTimeout = 2 * time.Second

// cover makes sure that every invalidation committed before since (when this
// listener began to hear) is in Redis: when the shared coverage already
// reaches since, others applied them and nothing needs doing (a new or
// reconnected instance does not empty the shared cache). A covering
// instance vouches for a joining heartbeat at once, so it waits a little for
// that: up to coverWait when the coverage is live and was not last moved by
// this instance, else shortCoverWait. Past that, invalidations may have been
// missed while nobody listened: it bumps the generation, then records the
// coverage it now vouches for.
func (v *Invalidator) cover(ctx context.Context, since int64) {
	var deadline time.Time
	for {
		c, err := v.fence.Coverage(ctx)
		if err != nil {
			// Redis cannot say: it cannot be believed until a bump lands.
			v.fence.NoteLoss()
			return
		}
		if c >= since {
			return
		}
		if c == 0 {
			break // nobody ever covered (or Redis lost it): nobody to wait for
		}
		if deadline.IsZero() {
			wait := shortCoverWait
			if c >= since-3*v.opts.Heartbeat.Microseconds() && c != v.lastVouched.Load() {
				wait = coverWait
			}
			deadline = time.Now().Add(wait)
		}
		if time.Now().After(deadline) {
			break
		}
		if !sleep(ctx, 5*time.Millisecond) {
			return
		}
	}
	if err := v.fence.Resync(ctx, "listening (again) after a gap nobody covered: changes made meanwhile were not heard"); err != nil {
		v.fence.NoteLoss()
		return
	}
	if err := v.fence.SetCoverage(ctx, since); err != nil {
		v.log.Debug("coverage not recorded", "error", err)
	}
}

// coverWait bounds the wait for another instance to vouch for a joining
// heartbeat when the shared coverage shows one is covering; shortCoverWait
// when nothing shows it.
const (
	coverWait      = time.Second
	shortCoverWait = 200 * time.Millisecond
)

// heartbeatLoop sends a heartbeat every Heartbeat (and a joining one when
// asked) on its own connection, so that a busy pool does not delay it.
func (v *Invalidator) heartbeatLoop(ctx context.Context) {
	var conn *pgx.Conn
	defer func() {
		if conn != nil {
			conn.Close(context.WithoutCancel(ctx))
		}
	}()
	t := time.NewTicker(v.opts.Heartbeat)
	defer t.Stop()
	var pendingJoin uint64
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case pendingJoin = <-v.hbNow:
		}
		suffix := ""
		if pendingJoin != 0 {
			suffix = ":j" + strconv.FormatUint(pendingJoin, 10)
		}
		cctx, cancel := context.WithTimeout(ctx, v.opts.Timeout)
		var err error
		if conn == nil {
			conn, err = connectAs(cctx, v.opts.DatabaseURL, HeartbeatApplicationName)
		}
		if err == nil {
			_, err = conn.Exec(cctx, `SELECT pg_notify($1, $2 || `+pgNowColumn+` || $3)`, schema.Channel, "h:"+v.id+":", suffix)
		}
		cancel()
		if err != nil {
			if conn != nil {
				conn.Close(context.WithoutCancel(ctx))
				conn = nil
			}
			if ctx.Err() == nil {
				v.log.Debug("heartbeat not sent", "error", err)
			}
			continue
		}
		pendingJoin = 0
	}
}

// pgNowColumn is pgNowMicros as text, for the heartbeat payload.
const pgNowColumn = `((extract(epoch from clock_timestamp()) * 1000000)::bigint)::text`

// isUUID accepts the 8-4-4-4-12 hex form, any case.
func isUUID(s string) bool {
	if len(s) != 36 {
		return false
	}
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case i == 8 || i == 13 || i == 18 || i == 23:
			if c != '-' {
				return false
			}
		case !isHexDigit(c):
			return false
		}
	}
	return true
}

func isHex64(s string) bool {
	if len(s) != 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !isHexDigit(s[i]) {
			return false
		}
	}
	return true
}

func isHexDigit(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}
