package tiers

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v5"
	"github.com/redis/rueidis"
)

// The fence is sessiond's revocation protocol: what one instance may believe
// of what Redis holds, and the bookkeeping in Redis that makes the belief
// safe. The README's "Revocation" section states it as rules; this file is
// those rules in code. In short, an instance answers from its caches only
// while all of these hold (see Trusted):
//
//  1. Redis is verified: every Redis connection this process opened, and
//     every "flush" Redis told it of, has been followed by a check that the
//     dataset is the one sessiond last verified (the Redis process's run_id
//     recorded in the fence key). A restart, a restore from a snapshot, a
//     failover to a replica or a FLUSHALL fails that check, and the check
//     then bumps the generation: every entry written before is disbelieved,
//     on every instance.
//  2. No invalidation this instance handled is missing from Redis: a drop
//     that failed is a loss, and losses are cleared only by a generation
//     bump that started after them (epochs, so a loss that comes during a
//     bump is not cleared by it).
//  3. Someone hears every invalidation: this instance's listener is covering
//     (its LISTEN connection works, proven by heartbeats), or Postgres is
//     known to be down (nothing can be committed, so nothing can be
//     revoked), or invalidation is off by configuration.
//  4. Redis cannot evict sessiond's bookkeeping: maxmemory is 0 or the
//     policy is noeviction. A Redis that may evict a user's index or a
//     tombstone could lose an invalidation silently.
//
// Otherwise every answer comes from Postgres. Tombstones (in Redis, refusing
// writes of data read before an invalidation), local tombstones (refusing
// this instance's local copies of what it just invalidated, until Redis's
// own invalidation message arrives) and the per-entry generation complete
// it.

// Keys of the fence in Redis.
const (
	// GenKey holds the cache generation. An entry is only believed when its
	// generation is the current one; bumping it drops every entry at once,
	// on every instance, without a SCAN.
	GenKey = "sessiond:gen"
	// FenceKey is a hash: run = the run_id of the Redis process whose
	// dataset was last verified.
	FenceKey = "sessiond:fence"
	// CoveredKey holds a Postgres time (Unix µs): every invalidation
	// committed before it has been applied to Redis by some instance (or
	// superseded by a bump). See AdvanceCoverage.
	CoveredKey = "sessiond:covered"
	// UserSetPrefix + user id: the set of entry keys of that user's cached
	// sessions, so that a user's entries are found without a SCAN.
	UserSetPrefix = "sessiond:user:"
	// TombPrefix + "u:"/"k:"/"n:" + user id / token hash / token hash: when
	// the user or token was last invalidated, or a session was created with
	// the token (Unix ms of the invalidating instance).
	TombPrefix = "sessiond:tomb:"
)

// ListenerState is what this instance knows of the invalidation listener.
type ListenerState int32

const (
	// ListenerOff: invalidation is off by configuration; entries are believed
	// for their TTL (documented).
	ListenerOff ListenerState = iota
	// ListenerLost: not listening, or listening but not yet proven to hear
	// every invalidation. Nothing cached is believed.
	ListenerLost
	// ListenerCovering: the listener hears every invalidation since a point
	// that the shared coverage (or a bump) reaches.
	ListenerCovering
	// ListenerPostgresDown: Postgres refuses connections (down, starting,
	// shutting down, or only read-only hosts answer): no revocation can be
	// committed, so what is cached is still true. Left as soon as a
	// connection succeeds.
	ListenerPostgresDown
)

func (s ListenerState) String() string {
	switch s {
	case ListenerOff:
		return "off"
	case ListenerLost:
		return "lost"
	case ListenerCovering:
		return "covering"
	case ListenerPostgresDown:
		return "postgres_down"
	}
	return fmt.Sprintf("listener(%d)", int32(s))
}

// epoch counts events (n) and how far they have been dealt with (ok): clean
// when every event up to n is dealt with. A dealer reads n before it starts,
// and settles only that far, so an event during its work stays pending.
type epoch struct{ n, ok atomic.Uint64 }

func (e *epoch) raise() uint64 { return e.n.Add(1) }
func (e *epoch) clean() bool   { return e.ok.Load() >= e.n.Load() }
func (e *epoch) settle(upTo uint64) {
	for {
		cur := e.ok.Load()
		if upTo <= cur || e.ok.CompareAndSwap(cur, upTo) {
			return
		}
	}
}

// FenceOptions configures a Fence.
type FenceOptions struct {
	// Listening: an invalidation listener will report its state. Without
	// it the fence starts (and stays) ListenerOff.
	Listening bool
	// Timeout bounds each fence call to Redis.
	Timeout time.Duration
	// VerifyInterval is how often the dataset is verified again without a
	// reason (a policy changed at runtime with CONFIG SET, say).
	VerifyInterval time.Duration
	// TombstoneTTL is how long an invalidation refuses writes of data read
	// before it: longer than any read-then-write can take (a warming run).
	TombstoneTTL time.Duration
	// TombstoneMargin widens each tombstone back in time, for clock skew
	// between the instance that invalidates and the one that writes.
	TombstoneMargin time.Duration
	// LocalTombstoneTTL is how long this instance distrusts its local copies
	// of what it invalidated (Redis's invalidation message may lag the DEL).
	LocalTombstoneTTL time.Duration
}

// Fence is one instance's side of the revocation protocol (see the comment
// at the top of this file). Its methods are safe for concurrent use; Trusted
// and Seq are on the hot path and cost a few atomic loads.
type Fence struct {
	client func() (rueidis.Client, error)
	opts   FenceOptions
	log    *slog.Logger

	floor     atomic.Int64 // the highest generation this instance has seen or made
	conn      epoch        // Redis connections opened and flushes heard / verified
	losses    epoch        // invalidations not applied to Redis / cleared by a bump
	listener  atomic.Int32 // a ListenerState
	evictable atomic.Bool  // Redis may evict sessiond's bookkeeping
	seq       atomic.Uint64
	tombs     *localTombs
	wake      chan struct{}

	resyncs, verifications, invalidations atomic.Int64
}

func newFence(client func() (rueidis.Client, error), o FenceOptions, log *slog.Logger) *Fence {
	f := &Fence{client: client, opts: o, log: log, tombs: newLocalTombs(o.LocalTombstoneTTL), wake: make(chan struct{}, 1)}
	if o.Listening {
		f.listener.Store(int32(ListenerLost))
	}
	if f.opts.VerifyInterval <= 0 {
		f.opts.VerifyInterval = 5 * time.Second
	}
	return f
}

// Trusted reports whether what Redis (and the local copy of it) holds may be
// believed now. Callers check it again after reading: a read that crossed a
// new connection is not believed until that connection is verified.
func (f *Fence) Trusted() bool {
	if !f.conn.clean() || !f.losses.clean() || f.evictable.Load() {
		return false
	}
	return ListenerState(f.listener.Load()) != ListenerLost
}

// Seq counts the invalidations this instance has handled (and the bumps it
// made). A read of Postgres that started at Seq s may be handed to a caller
// who arrived at Seq t only if s >= t: otherwise an invalidation handled
// before the caller arrived may postdate the read.
func (f *Fence) Seq() uint64 { return f.seq.Load() }

// Listener returns the listener state last reported.
func (f *Fence) Listener() ListenerState { return ListenerState(f.listener.Load()) }

// SetListener records the listener's state (see ListenerState).
func (f *Fence) SetListener(s ListenerState) {
	if old := ListenerState(f.listener.Swap(int32(s))); old != s {
		f.seq.Add(1)
		f.log.Info("invalidation listener state", "from", old.String(), "to", s.String())
	}
}

// Floor is the generation this instance writes with when Redis cannot say.
func (f *Fence) Floor() int64 { return f.floor.Load() }

// observe raises the floor to a generation seen in Redis.
func (f *Fence) observe(g int64) {
	for {
		cur := f.floor.Load()
		if g <= cur || f.floor.CompareAndSwap(cur, g) {
			return
		}
	}
}

// Resyncs is how many generation bumps this instance made.
func (f *Fence) Resyncs() int64 { return f.resyncs.Load() }

// Verifications is how many times the dataset was verified.
func (f *Fence) Verifications() int64 { return f.verifications.Load() }

// Invalidations is how many entries this instance's drops deleted.
func (f *Fence) Invalidations() int64 { return f.invalidations.Load() }

// Evictable reports whether Redis was last seen able to evict bookkeeping.
func (f *Fence) Evictable() bool { return f.evictable.Load() }

// connChanged is called when a Redis connection is dialled, before it
// carries a command, and when Redis says it flushed the local cache: until
// the dataset is verified again, nothing cached is believed.
func (f *Fence) connChanged() {
	f.conn.raise()
	f.poke()
}

// NoteLoss records that an invalidation could not be applied to Redis (or
// may have been missed): nothing cached is believed until a generation bump
// that starts after this call has landed. Run makes that bump.
func (f *Fence) NoteLoss() {
	f.losses.raise()
	f.seq.Add(1)
	f.poke()
}

func (f *Fence) poke() {
	select {
	case f.wake <- struct{}{}:
	default:
	}
}

// Run verifies the dataset after every new connection or flush (and every
// VerifyInterval), and bumps the generation after losses, retrying with
// backoff while Redis does not answer, until ctx ends.
func (f *Fence) Run(ctx context.Context) {
	t := time.NewTicker(f.opts.VerifyInterval)
	defer t.Stop()
	b := backoff.NewExponentialBackOff()
	b.InitialInterval, b.MaxInterval = 50*time.Millisecond, 2*time.Second
	var retry <-chan time.Time
	for {
		periodic := false
		select {
		case <-ctx.Done():
			return
		case <-f.wake:
		case <-t.C:
			periodic = true
		case <-retry:
		}
		retry = nil
		var err error
		if periodic || !f.conn.clean() {
			err = f.Verify(ctx)
		}
		if err == nil && !f.losses.clean() {
			err = f.Resync(ctx, "an invalidation could not be applied to redis")
		}
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			d := b.NextBackOff()
			f.log.Debug("fence: redis not verified yet; retrying", "error", err, "in", d.String())
			retry = time.After(d)
			continue
		}
		b.Reset()
	}
}

// verifyScript checks that Redis still holds the dataset sessiond verified
// last: the same Redis process (run_id) and a generation no lower than this
// instance's floor. If not, the dataset may have lost invalidations
// (restart, restore, failover, flush), so it bumps the generation past both
// and records the new run_id. It also reports the eviction settings.
//
// KEYS: generation, fence. ARGV: floor.
// Returns: generation, bumped (0/1), maxmemory, maxmemory-policy.
var verifyScript = rueidis.NewLuaScript(`
local run = string.match(redis.call('INFO', 'server'), 'run_id:(%w+)') or ''
local mem = redis.call('INFO', 'memory')
local maxmem = string.match(mem, 'maxmemory:(%d+)') or '0'
local policy = string.match(mem, 'maxmemory_policy:([%w-]+)') or ''
local g = tonumber(redis.call('GET', KEYS[1]) or '0')
local floor = tonumber(ARGV[1])
local bumped = 0
if run == '' or redis.call('HGET', KEYS[2], 'run') ~= run or g < floor then
  g = math.max(g, floor) + 1
  redis.call('SET', KEYS[1], g)
  redis.call('HSET', KEYS[2], 'run', run)
  bumped = 1
end
return {g, bumped, maxmem, policy}`)

// Verify checks the dataset (see verifyScript) and, when it passes or once
// the bump it made lands, believes every connection opened before the check
// began.
func (f *Fence) Verify(ctx context.Context) error {
	upTo := f.conn.n.Load()
	c, err := f.client()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, f.opts.Timeout)
	defer cancel()
	vals, err := verifyScript.Exec(ctx, c, []string{GenKey, FenceKey}, []string{strconv.FormatInt(f.floor.Load(), 10)}).ToArray()
	if err != nil {
		return fmt.Errorf("redis verify: %w", err)
	}
	if len(vals) != 4 {
		return fmt.Errorf("redis verify: %d values", len(vals))
	}
	g, err1 := vals[0].AsInt64()
	bumped, err2 := vals[1].AsInt64()
	maxmem, err3 := vals[2].ToString()
	policy, err4 := vals[3].ToString()
	if err := errors.Join(err1, err2, err3, err4); err != nil {
		return fmt.Errorf("redis verify: %w", err)
	}
	f.verifications.Add(1)
	f.observe(g)
	evictable := maxmem != "0" && policy != "noeviction"
	if evictable && !f.evictable.Load() {
		f.log.Error("redis may evict sessiond's bookkeeping (maxmemory set, maxmemory-policy not noeviction): every answer comes from postgres until it is changed",
			"maxmemory", maxmem, "maxmemory_policy", policy)
	} else if !evictable && f.evictable.Load() {
		f.log.Info("redis no longer evicts: the cache is believed again", "maxmemory_policy", policy)
	}
	f.evictable.Store(evictable)
	if bumped == 1 {
		f.resyncs.Add(1)
		f.seq.Add(1)
		f.log.Warn("redis dataset changed (restart, restore, failover or flush): generation bumped, every cached session will be read again from postgres", "generation", g)
	}
	f.conn.settle(upTo)
	return nil
}

// bumpScript moves the generation past both Redis's and the caller's floor:
// a Redis that came back empty must not send it backwards.
//
// KEYS: generation. ARGV: floor.
var bumpScript = rueidis.NewLuaScript(`
local g = math.max(tonumber(redis.call('GET', KEYS[1]) or '0'), tonumber(ARGV[1])) + 1
redis.call('SET', KEYS[1], g)
return g`)

// Resync bumps the generation, so that no entry written before is believed
// again on any instance, and clears the losses recorded before it began.
func (f *Fence) Resync(ctx context.Context, why string) error {
	upTo := f.losses.n.Load()
	c, err := f.client()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, f.opts.Timeout)
	defer cancel()
	g, err := bumpScript.Exec(ctx, c, []string{GenKey}, []string{strconv.FormatInt(f.floor.Load(), 10)}).AsInt64()
	if err != nil {
		return fmt.Errorf("redis bump generation: %w", err)
	}
	f.observe(g)
	f.losses.settle(upTo)
	f.resyncs.Add(1)
	f.seq.Add(1)
	f.log.Info("cache generation bumped: every cached session will be read again from postgres", "generation", g, "why", why)
	return nil
}

// Batch is a set of invalidations applied together.
type Batch struct {
	// Users: every cached session of each user goes.
	Users []string
	// Keys: the entry under each key goes, whatever it holds.
	Keys []string
	// NewKeys: a session was just created with each key's token: a cached
	// "no such session" under it goes; a cached session stays.
	NewKeys []string
}

// Len is the number of invalidations in b.
func (b Batch) Len() int { return len(b.Users) + len(b.Keys) + len(b.NewKeys) }

// maxBatch bounds the invalidations of one script call, so that a bulk
// change does not hold Redis for long.
const maxBatch = 1000

// dropScript applies a batch: for each user, a tombstone and the deletion of
// every entry in the user's index; for each key, a tombstone and the entry's
// deletion; for each new key, a tombstone and the deletion of a negative
// entry. Returns how many entries were deleted.
//
// KEYS: per user (index, tombstone), per key (entry, tombstone), per new key
// (entry, tombstone). ARGV: now (ms), tombstone TTL (ms), users, keys, new.
var dropScript = rueidis.NewLuaScript(`
local now, ttl = ARGV[1], ARGV[2]
local nu, nk, nn = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local n, i = 0, 1
for _ = 1, nu do
  redis.call('SET', KEYS[i + 1], now, 'PX', ttl)
  for _, k in ipairs(redis.call('SMEMBERS', KEYS[i])) do n = n + redis.call('DEL', k) end
  redis.call('DEL', KEYS[i])
  i = i + 2
end
for _ = 1, nk do
  redis.call('SET', KEYS[i + 1], now, 'PX', ttl)
  n = n + redis.call('DEL', KEYS[i])
  i = i + 2
end
for _ = 1, nn do
  redis.call('SET', KEYS[i + 1], now, 'PX', ttl)
  if redis.call('HEXISTS', KEYS[i], '` + fMissing + `') == 1 then n = n + redis.call('DEL', KEYS[i]) end
  i = i + 2
end
return n`)

// Apply drops what b names from Redis, leaving tombstones that refuse writes
// of data read before now, and makes this instance distrust its local copies
// of them for LocalTombstoneTTL. It returns how many entries it deleted. When
// it fails, the loss is recorded (NoteLoss): nothing cached is believed
// until a bump.
func (f *Fence) Apply(ctx context.Context, b Batch) (int64, error) {
	if b.Len() == 0 {
		return 0, nil
	}
	f.seq.Add(1)
	for _, u := range b.Users {
		f.tombs.mark("u:" + u)
	}
	for _, k := range b.Keys {
		f.tombs.mark("k:" + hashOf(k))
	}
	for _, k := range b.NewKeys {
		f.tombs.mark("n:" + hashOf(k))
	}
	n, err := f.apply(ctx, b)
	if err != nil {
		f.NoteLoss()
		return n, err
	}
	return n, nil
}

func (f *Fence) apply(ctx context.Context, b Batch) (int64, error) {
	c, err := f.client()
	if err != nil {
		return 0, err
	}
	now := strconv.FormatInt(time.Now().UnixMilli(), 10)
	ttl := strconv.FormatInt(f.opts.TombstoneTTL.Milliseconds(), 10)
	var total int64
	for b.Len() > 0 {
		var part Batch
		room := maxBatch
		part.Users, b.Users, room = take(b.Users, room)
		part.Keys, b.Keys, room = take(b.Keys, room)
		part.NewKeys, b.NewKeys, _ = take(b.NewKeys, room)
		keys := make([]string, 0, 2*part.Len())
		for _, u := range part.Users {
			keys = append(keys, UserSetPrefix+u, TombPrefix+"u:"+u)
		}
		for _, k := range part.Keys {
			keys = append(keys, k, TombPrefix+"k:"+hashOf(k))
		}
		for _, k := range part.NewKeys {
			keys = append(keys, k, TombPrefix+"n:"+hashOf(k))
		}
		args := []string{now, ttl, strconv.Itoa(len(part.Users)), strconv.Itoa(len(part.Keys)), strconv.Itoa(len(part.NewKeys))}
		cctx, cancel := context.WithTimeout(ctx, f.opts.Timeout)
		n, err := dropScript.Exec(cctx, c, keys, args).AsInt64()
		cancel()
		if err != nil {
			return total, fmt.Errorf("redis invalidate: %w", err)
		}
		total += n
		f.invalidations.Add(n)
	}
	return total, nil
}

// take splits off at most room items of s.
func take(s []string, room int) (head, rest []string, left int) {
	n := min(len(s), room)
	return s[:n], s[n:], room - n
}

// Coverage returns the shared coverage (see CoveredKey): 0 when none.
func (f *Fence) Coverage(ctx context.Context) (int64, error) {
	c, err := f.client()
	if err != nil {
		return 0, err
	}
	ctx, cancel := context.WithTimeout(ctx, f.opts.Timeout)
	defer cancel()
	v, err := c.Do(ctx, c.B().Get().Key(CoveredKey).Build()).AsInt64()
	if err != nil && !rueidis.IsRedisNil(err) {
		return 0, fmt.Errorf("redis get coverage: %w", err)
	}
	return v, nil
}

// advanceScript raises the shared coverage, never lowers it.
//
// KEYS: coverage. ARGV: Postgres time (µs).
var advanceScript = rueidis.NewLuaScript(`
if tonumber(ARGV[1]) > tonumber(redis.call('GET', KEYS[1]) or '0') then redis.call('SET', KEYS[1], ARGV[1]) end
return 1`)

// AdvanceCoverage records that every invalidation committed in Postgres
// before at (Postgres µs) has been applied to Redis. Only an instance whose
// listener is covering and that believes Redis may say so: its caller must
// have applied, in order and without a loss, everything its listener
// received before the heartbeat that carried at. It reports whether it
// advanced (false: not entitled now).
func (f *Fence) AdvanceCoverage(ctx context.Context, at int64) (bool, error) {
	if f.Listener() != ListenerCovering || !f.Trusted() {
		return false, nil
	}
	return true, f.SetCoverage(ctx, at)
}

// SetCoverage raises the shared coverage to at unconditionally: for the
// instance that just bumped the generation after listening from at on.
func (f *Fence) SetCoverage(ctx context.Context, at int64) error {
	c, err := f.client()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, f.opts.Timeout)
	defer cancel()
	if err := advanceScript.Exec(ctx, c, []string{CoveredKey}, []string{strconv.FormatInt(at, 10)}).Error(); err != nil {
		return fmt.Errorf("redis advance coverage: %w", err)
	}
	return nil
}
