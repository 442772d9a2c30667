package tiers

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
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
//     dataset is the one sessiond last verified (the run_id of every master,
//     recorded in NodesKey). A restart, a restore from a snapshot, a
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
	// UserTombstoneTTL is how long a user's invalidation makes reads
	// disbelieve the user's entries written before it: as long as such an
	// entry may live (the cache TTL) plus TombstoneTTL.
	UserTombstoneTTL time.Duration
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
	if f.opts.Timeout <= 0 {
		f.opts.Timeout = 2 * time.Second
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

// verifyScript checks that the masters are the ones whose datasets were
// verified last (each master's run_id, recorded in the nodes hash) and that
// the generation is no lower than this instance's floor. If not, a dataset
// may have lost invalidations (restart, restore, failover, flush), so it
// bumps the generation past both and records the masters it was given.
//
// KEYS: generation, nodes. ARGV: floor, then per master: address, run_id.
// Returns: generation, bumped (0/1).
var verifyScript = newScript(`
local g = tonumber(redis.call('GET', KEYS[1]) or '0')
local floor = tonumber(ARGV[1])
local same = g >= floor
for i = 2, #ARGV, 2 do
  if ARGV[i + 1] == '' or redis.call('HGET', KEYS[2], ARGV[i]) ~= ARGV[i + 1] then same = false end
end
if same then return {g, 0} end
g = math.max(g, floor) + 1
redis.call('SET', KEYS[1], g)
for i = 2, #ARGV, 2 do redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1]) end
return {g, 1}`)

// master is what Verify learns of one node from INFO.
type master struct {
	addr, runID, maxmemory, policy string
	isMaster                       bool
}

func infoField(info, field string) string {
	i := strings.Index(info, "\r\n"+field+":")
	if i < 0 {
		if !strings.HasPrefix(info, field+":") {
			return ""
		}
		i = -2
	}
	v := info[i+2+len(field)+1:]
	if j := strings.IndexAny(v, "\r\n"); j >= 0 {
		v = v[:j]
	}
	return v
}

// Verify checks the datasets (see verifyScript) and, when they pass or once
// the bump it made lands, believes every connection opened before the check
// began. Every master is asked (one, on a Redis that is not a cluster).
func (f *Fence) Verify(ctx context.Context) error {
	upTo := f.conn.n.Load()
	c, err := f.client()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, f.opts.Timeout)
	defer cancel()
	var masters []master
	for addr, n := range c.Nodes() {
		info, err := n.Do(ctx, n.B().Info().Section("server", "replication", "memory").Build()).ToString()
		if err != nil {
			return fmt.Errorf("redis verify: info of %s: %w", addr, err)
		}
		m := master{addr: addr, runID: infoField(info, "run_id"), maxmemory: infoField(info, "maxmemory"),
			policy: infoField(info, "maxmemory_policy"), isMaster: infoField(info, "role") == "master"}
		if m.isMaster {
			masters = append(masters, m)
		}
	}
	if len(masters) == 0 {
		return errors.New("redis verify: no master answered")
	}
	args := []string{strconv.FormatInt(f.floor.Load(), 10)}
	evictable := false
	for _, m := range masters {
		args = append(args, m.addr, m.runID)
		if m.maxmemory != "0" && m.policy != "noeviction" {
			evictable = true
			if !f.evictable.Load() {
				f.log.Error("redis may evict sessiond's bookkeeping (maxmemory set, maxmemory-policy not noeviction): every answer comes from postgres until it is changed",
					"node", m.addr, "maxmemory", m.maxmemory, "maxmemory_policy", m.policy)
			}
		}
	}
	vals, err := verifyScript.exec(ctx, c, []string{GenKey, NodesKey}, args).ToArray()
	if err != nil {
		return fmt.Errorf("redis verify: %w", err)
	}
	if len(vals) != 2 {
		return fmt.Errorf("redis verify: %d values", len(vals))
	}
	g, err1 := vals[0].AsInt64()
	bumped, err2 := vals[1].AsInt64()
	if err := errors.Join(err1, err2); err != nil {
		return fmt.Errorf("redis verify: %w", err)
	}
	f.verifications.Add(1)
	f.observe(g)
	if !evictable && f.evictable.Load() {
		f.log.Info("redis no longer evicts: the cache is believed again")
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
var bumpScript = newScript(`
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
	g, err := bumpScript.exec(ctx, c, []string{GenKey}, []string{strconv.FormatInt(f.floor.Load(), 10)}).AsInt64()
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

// Heard makes this instance distrust its local copies of what b names for
// LocalTombstoneTTL, and moves Seq: for an invalidation received but not
// yet applied (Apply does it too).
func (f *Fence) Heard(b Batch) {
	if b.Len() == 0 {
		return
	}
	f.seq.Add(1)
	for _, u := range b.Users {
		f.tombs.mark("u:" + u)
	}
	for _, k := range b.Keys {
		f.tombs.mark("k:" + k)
	}
	for _, k := range b.NewKeys {
		f.tombs.mark("n:" + k)
	}
}

// dropUsersScript, in one user's slot (or several users' on a Redis that is
// not a cluster): each user's tombstone, which every read of one of the
// user's entries checks (see Redis.Get). It lives as long as an entry
// written before it may (UserTombstoneTTL).
//
// KEYS: user tombstones. ARGV: now (ms), tombstone TTL (ms).
var dropUsersScript = newScript(`
for i = 1, #KEYS do redis.call('SET', KEYS[i], ARGV[1], 'PX', ARGV[2]) end
return #KEYS`)

// dropKeysScript, in one entry's slot (or several): for each key, a
// tombstone, and the entry deleted; for a new key, only a negative entry.
// Returns how many entries were deleted.
//
// KEYS: per key (entry, tombstone). ARGV: now (ms), tombstone TTL (ms), then
// per key: "1" when only a negative entry goes.
var dropKeysScript = newScript(`
local n = 0
for i = 1, #KEYS, 2 do
  redis.call('SET', KEYS[i + 1], ARGV[1], 'PX', ARGV[2])
  local v = redis.call('GET', KEYS[i])
  if v and (ARGV[2 + (i + 1) / 2] ~= '1' or string.byte(v, 1) == ` + strconv.Itoa(entryVersion<<4|kindNegative) + `) then
    n = n + redis.call('DEL', KEYS[i])
  end
end
return n`)

// maxCall bounds the keys of one script call, so that a bulk change does not
// hold Redis for long.
const maxCall = 1000

// Apply drops what b names from Redis and makes this instance distrust its
// local copies of them for LocalTombstoneTTL. A token's entry is deleted, and
// its tombstone refuses writes of data read before now; a user's entries
// are not looked for: the user's tombstone makes every read disbelieve an
// entry read from Postgres before it, on every instance (Redis tells each
// one that cached the tombstone's absence). It returns how many entries it
// deleted plus how many users it invalidated. When it fails, the loss is
// recorded (NoteLoss): nothing cached is believed until a bump.
func (f *Fence) Apply(ctx context.Context, b Batch) (int64, error) {
	if b.Len() == 0 {
		return 0, nil
	}
	f.Heard(b)
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
	ctx, cancel := context.WithTimeout(ctx, f.opts.Timeout)
	defer cancel()
	d := f.newDrop(c)
	users, err := d.users(ctx, b.Users)
	if err != nil {
		return 0, err
	}
	n, err := d.keys(ctx, b.Keys, b.NewKeys)
	f.invalidations.Add(n + users)
	return n + users, err
}

// drop runs the two steps of Apply.
type drop struct {
	c                 rueidis.Client
	cluster           bool
	now, ttl, userTTL string
}

func (f *Fence) newDrop(c rueidis.Client) drop {
	return drop{c: c, cluster: c.Mode() == rueidis.ClientModeCluster,
		now: strconv.FormatInt(time.Now().UnixMilli(), 10), ttl: strconv.FormatInt(f.opts.TombstoneTTL.Milliseconds(), 10),
		userTTL: strconv.FormatInt(f.opts.UserTombstoneTTL.Milliseconds(), 10)}
}

// users sets the users' tombstones. It returns how many.
func (d drop) users(ctx context.Context, users []string) (int64, error) {
	if len(users) == 0 {
		return 0, nil
	}
	g := newGroups(d.cluster, d.now, d.userTTL)
	for _, u := range users {
		g.add(u, nil, userTombKey(u))
	}
	var n int64
	for _, r := range dropUsersScript.execMulti(ctx, d.c, g.execs()) {
		k, err := r.AsInt64()
		if err != nil {
			return n, fmt.Errorf("redis invalidate users: %w", err)
		}
		n += k
	}
	return n, nil
}

// keys sets the keys' tombstones and deletes their entries (of newKeys,
// only negative ones). It returns how many entries it deleted.
func (d drop) keys(ctx context.Context, keys, newKeys []string) (int64, error) {
	g := newGroups(d.cluster, d.now, d.ttl)
	for _, k := range keys {
		g.add(hashTag(k), []string{"0"}, k, tombKey(k))
	}
	for _, k := range newKeys {
		g.add(hashTag(k), []string{"1"}, k, newTombKey(k))
	}
	var total int64
	for _, r := range dropKeysScript.execMulti(ctx, d.c, g.execs()) {
		n, err := r.AsInt64()
		if err != nil {
			return total, fmt.Errorf("redis invalidate: %w", err)
		}
		total += n
	}
	return total, nil
}

// groups gathers script calls by slot (one group on a Redis that is not a
// cluster), each call at most maxCall keys, and remembers which of the
// caller's entries each call carries.
type groups struct {
	cluster bool
	max     int // keys per call
	head    []string
	open    map[string]*group
	done    []*group
}

type group struct {
	exec rueidis.LuaExec
	ids  []int
}

func newGroups(cluster bool, head ...string) *groups {
	return &groups{cluster: cluster, max: maxCall, head: head, open: map[string]*group{}}
}

func (g *groups) add(tag string, args []string, keys ...string) { g.addEntry(tag, -1, args, keys...) }

// addEntry adds the keys and arguments of the caller's entry id to the call
// of tag's slot.
func (g *groups) addEntry(tag string, id int, args []string, keys ...string) {
	if !g.cluster {
		tag = ""
	}
	e := g.open[tag]
	if e == nil {
		e = &group{exec: rueidis.LuaExec{Args: slices.Clone(g.head)}}
		g.open[tag] = e
	}
	e.exec.Keys = append(e.exec.Keys, keys...)
	e.exec.Args = append(e.exec.Args, args...)
	e.ids = append(e.ids, id)
	if len(e.exec.Keys) >= g.max {
		g.done = append(g.done, e)
		delete(g.open, tag)
	}
}

func (g *groups) execs() []rueidis.LuaExec {
	execs, _ := g.execsWithEntries()
	return execs
}

// execsWithEntries closes every call and returns them with the entries each
// carries.
func (g *groups) execsWithEntries() ([]rueidis.LuaExec, [][]int) {
	for _, e := range g.open {
		g.done = append(g.done, e)
	}
	g.open = map[string]*group{}
	execs := make([]rueidis.LuaExec, len(g.done))
	ids := make([][]int, len(g.done))
	for i, e := range g.done {
		execs[i], ids[i] = e.exec, e.ids
	}
	return execs, ids
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
var advanceScript = newScript(`
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
	if err := advanceScript.exec(ctx, c, []string{CoveredKey}, []string{strconv.FormatInt(at, 10)}).Error(); err != nil {
		return fmt.Errorf("redis advance coverage: %w", err)
	}
	return nil
}
