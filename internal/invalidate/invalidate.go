// Package invalidate keeps the cache honest when the source of truth
// changes: it listens for the database triggers' notifications (and takes
// InvalidateSessions calls), drops what they name from Redis, which drops it
// from every instance's client-side cache, and, when it cannot know what it
// missed, drops everything by bumping the cache generation.
package invalidate

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v5"
	"github.com/jackc/pgx/v5"

	"github.com/sessiond/sessiond/internal/schema"
	"github.com/sessiond/sessiond/internal/tiers"
)

// cache is what invalidation needs of the Redis tier.
type cache interface {
	DropUser(ctx context.Context, userID string) (int64, error)
	DropSession(ctx context.Context, sessionID, userID string) (int64, error)
	DropKey(ctx context.Context, key string) (int64, error)
	DropNegative(ctx context.Context, key string) (int64, error)
	BumpGen(ctx context.Context) (int64, error)
	Distrust()
	Trust()
}

var _ cache = (*tiers.Redis)(nil)

// tokens finds the stored token of a session.
type tokens interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// Options configures an Invalidator.
type Options struct {
	DatabaseURL string             // for the dedicated LISTEN connection
	Storage     tiers.TokenStorage // what user_sessions.token holds
	Timeout     time.Duration      // bound on each Redis or Postgres call
}

// Invalidator applies invalidations. Its methods are safe for concurrent use.
type Invalidator struct {
	cache cache
	db    tokens
	opts  Options
	log   *slog.Logger

	ready     chan struct{} // closed after the first LISTEN and resync
	readyOnce sync.Once
	dirty     chan struct{} // a failed drop asks the resync loop for a bump

	notifications, resyncs atomic.Int64
}

// New returns an Invalidator dropping from c; db looks up inserted
// sessions' tokens.
func New(c cache, db tokens, o Options, log *slog.Logger) *Invalidator {
	return &Invalidator{cache: c, db: db, opts: o, log: log, ready: make(chan struct{}), dirty: make(chan struct{}, 1)}
}

// Ready is closed once the listener has listened and resynced for the first
// time: entries written after that are covered by notifications.
func (v *Invalidator) Ready() <-chan struct{} { return v.ready }

// Notifications is how many notifications have been handled.
func (v *Invalidator) Notifications() int64 { return v.notifications.Load() }

// Resyncs is how many times everything cached was dropped because
// notifications may have been missed.
func (v *Invalidator) Resyncs() int64 { return v.resyncs.Load() }

// ErrBadPayload is returned, wrapped, for a notification sessiond did not
// send.
var ErrBadPayload = errors.New("unrecognised notification")

// Handle applies one notification payload (see schema.Channel).
func (v *Invalidator) Handle(ctx context.Context, payload string) error {
	v.notifications.Add(1)
	kind, rest, _ := strings.Cut(payload, ":")
	var err error
	switch kind {
	case "u":
		_, err = v.User(ctx, rest)
	case "s":
		sid, uid, ok := strings.Cut(rest, ":")
		if !ok {
			return fmt.Errorf("%w: %q", ErrBadPayload, payload)
		}
		err = v.call(ctx, func(ctx context.Context) (int64, error) { return v.cache.DropSession(ctx, sid, uid) })
	case "i":
		err = v.inserted(ctx, rest)
	default:
		return fmt.Errorf("%w: %q", ErrBadPayload, payload)
	}
	return err
}

// inserted drops a cached "no such session" for the token a session was
// just given.
func (v *Invalidator) inserted(ctx context.Context, sessionID string) error {
	qctx, cancel := context.WithTimeout(ctx, v.opts.Timeout)
	defer cancel()
	var stored string
	err := v.db.QueryRow(qctx, `SELECT token FROM platform.user_sessions WHERE id = $1`, sessionID).Scan(&stored)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil // gone already; its deletion was notified too
	}
	if err != nil {
		// Without the token the negative entry cannot be found: drop all.
		v.markDirty()
		return fmt.Errorf("look up inserted session %s: %w", sessionID, err)
	}
	return v.call(ctx, func(ctx context.Context) (int64, error) {
		return v.cache.DropNegative(ctx, tiers.RowKey(stored, v.opts.Storage))
	})
}

// User drops every cached session of a user, returning how many entries.
func (v *Invalidator) User(ctx context.Context, userID string) (int64, error) {
	var n int64
	err := v.call(ctx, func(ctx context.Context) (int64, error) {
		var err error
		n, err = v.cache.DropUser(ctx, userID)
		return n, err
	})
	return n, err
}

// Token drops the cached entry (or negative) of a raw token.
func (v *Invalidator) Token(ctx context.Context, token string) (int64, error) {
	var n int64
	err := v.call(ctx, func(ctx context.Context) (int64, error) {
		var err error
		n, err = v.cache.DropKey(ctx, tiers.Key(tiers.TokenHash(token)))
		return n, err
	})
	return n, err
}

// call runs one drop within the timeout. When it fails, the drop is lost:
// nothing cached is believed until the resync loop has bumped the
// generation.
func (v *Invalidator) call(ctx context.Context, drop func(context.Context) (int64, error)) error {
	cctx, cancel := context.WithTimeout(ctx, v.opts.Timeout)
	defer cancel()
	if _, err := drop(cctx); err != nil {
		v.markDirty()
		return err
	}
	return nil
}

func (v *Invalidator) markDirty() {
	v.cache.Distrust()
	select {
	case v.dirty <- struct{}{}:
	default:
	}
}

// resync drops everything cached, everywhere, by bumping the generation.
func (v *Invalidator) resync(ctx context.Context, why string) error {
	cctx, cancel := context.WithTimeout(ctx, v.opts.Timeout)
	defer cancel()
	g, err := v.cache.BumpGen(cctx)
	if err != nil {
		return err
	}
	v.cache.Trust()
	v.resyncs.Add(1)
	v.log.Info("cache generation bumped: every cached session will be read again from postgres", "generation", g, "why", why)
	return nil
}

// Run listens for notifications on a dedicated connection until ctx ends
// (unless listen is false: then it only retries failed drops), reconnecting
// with backoff. Each (re)connection bumps the generation once
// LISTEN is in place: what changed while nobody listened is unknown, so
// nothing cached before is believed. It also retries, with backoff, the bump
// a failed drop asked for. It returns nil when ctx ends.
func (v *Invalidator) Run(ctx context.Context, listen bool) error {
	if !listen {
		v.readyOnce.Do(func() { close(v.ready) })
		v.resyncLoop(ctx)
		return nil
	}
	done := make(chan struct{})
	defer func() { <-done }()
	go func() {
		defer close(done)
		v.resyncLoop(ctx)
	}()
	b := backoff.NewExponentialBackOff()
	b.InitialInterval, b.MaxInterval = 100*time.Millisecond, 5*time.Second
	for ctx.Err() == nil {
		err := v.listen(ctx)
		if ctx.Err() != nil {
			return nil
		}
		d := b.NextBackOff()
		v.log.Warn("invalidation listener lost its connection; reconnecting", "error", err, "in", d.String())
		select {
		case <-ctx.Done():
		case <-time.After(d):
		}
		if err == nil {
			b.Reset()
		}
	}
	return nil
}

func (v *Invalidator) listen(ctx context.Context) error {
	cctx, cancel := context.WithTimeout(ctx, v.opts.Timeout)
	conn, err := pgx.Connect(cctx, v.opts.DatabaseURL)
	if err == nil {
		_, err = conn.Exec(cctx, "LISTEN "+pgx.Identifier{schema.Channel}.Sanitize())
	}
	cancel()
	if err != nil {
		if conn != nil {
			conn.Close(context.WithoutCancel(ctx))
		}
		return fmt.Errorf("listen: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if err := v.resync(ctx, "listening (again): changes made meanwhile were not heard"); err != nil {
		v.log.Warn("could not bump the cache generation after (re)connecting; retrying", "error", err)
		v.markDirty()
	}
	v.readyOnce.Do(func() { close(v.ready) })
	for {
		n, err := conn.WaitForNotification(ctx)
		if err != nil {
			return err
		}
		if err := v.Handle(ctx, n.Payload); err != nil && ctx.Err() == nil {
			v.log.Warn("invalidation not applied; nothing cached is believed until the generation is bumped", "payload", n.Payload, "error", err)
		}
	}
}

// resyncLoop bumps the generation after failed drops, retrying with backoff
// until Redis takes it.
func (v *Invalidator) resyncLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-v.dirty:
		}
		_, _ = backoff.Retry(ctx, func() (struct{}, error) {
			return struct{}{}, v.resync(ctx, "an invalidation could not be applied")
		}, backoff.WithMaxElapsedTime(0))
	}
}
