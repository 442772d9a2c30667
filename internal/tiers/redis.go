package tiers

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/redis/rueidis"

	"github.com/sessiond/sessiond/internal/redact"
)

// ErrRedisNotConnected is returned while sessiond has not yet managed to make
// its first connection to Redis (it keeps trying in the background).
var ErrRedisNotConnected = errors.New("redis not connected yet")

// RedisOptions configures the L1 tier.
type RedisOptions struct {
	// TTL caps how long an entry lives in Redis; an entry never outlives its
	// session (see Set).
	TTL time.Duration
	// LocalCache turns rueidis's server-assisted client-side cache on.
	LocalCache bool
	// LocalCacheBytes is the client-side cache size per connection.
	LocalCacheBytes int
	// ConnWriteTimeout bounds how long a silent connection (half-open TCP) is
	// trusted: rueidis's keepalive PING fails after it, the connection is
	// closed and its whole local cache dropped.
	ConnWriteTimeout time.Duration
	// DialTimeout bounds each connection attempt.
	DialTimeout time.Duration
	// NegativeTTL is how long a "no such session" answer is cached.
	NegativeTTL time.Duration
	// Fence configures the revocation fence.
	Fence FenceOptions
}

// Redis is the L1 tier: sessions as compact binary entries under
// Key(hash) (see entry.go and keys.go), read through rueidis's client-side
// cache, believed only while the fence says so (see Fence). It works the
// same on a single Redis, behind Sentinel, and on a Redis Cluster.
type Redis struct {
	client atomic.Pointer[rueidis.Client]
	opts   RedisOptions
	fence  *Fence
	memo   *memo // decoded values of what the client-side cache holds; nil without it
}

// invalidated is told of every invalidation Redis sends: the keys (nil: all
// of this connection's) whose local copies rueidis just dropped.
func (r *Redis) invalidated(m []rueidis.RedisMessage) {
	if r.memo == nil {
		return
	}
	if m == nil {
		r.memo.invalidate(nil)
		return
	}
	keys := make([]string, 0, len(m))
	for _, k := range m {
		if s, err := k.ToString(); err == nil {
			keys = append(keys, s)
		}
	}
	r.memo.invalidate(keys)
}

// ClientOption turns a Redis URL (redis://, rediss://, unix://) into the
// rueidis options sessiond runs with. r, when not nil, hears of every
// connection dialled (before it carries a command), of every flush of the
// local cache (its fence must verify the dataset again), and of every key
// Redis invalidates (its memo of decoded values forgets it).
func ClientOption(url string, o RedisOptions, r *Redis) (rueidis.ClientOption, error) {
	opt, err := rueidis.ParseURL(url)
	if err != nil {
		return opt, fmt.Errorf("parse redis url: %w", redact.ParseError("the value", url, err)) // url.Parse quotes the whole URL
	}
	opt.DisableCache = !o.LocalCache
	opt.CacheSizeEachConn = o.LocalCacheBytes
	if o.ConnWriteTimeout > 0 {
		opt.ConnWriteTimeout = o.ConnWriteTimeout
		// The keepalive interval must be well under the write timeout for the
		// PING that detects a dead peer to be sent in time.
		opt.Dialer.KeepAlive = o.ConnWriteTimeout / 4
	}
	if o.DialTimeout > 0 {
		opt.Dialer.Timeout = o.DialTimeout
	}
	opt.ClientName = "sessiond"
	// A read that fails is a miss, answered from Postgres at once; rueidis's
	// own retry would wait, past the caller's deadline, for a connection
	// to a Redis that stopped answering to be dialled again.
	opt.DisableRetry = true
	if opt.Sentinel.MasterSet != "" {
		// Sentinel topology is otherwise followed only through +switch-master
		// events; one missed event (the subscription's connection is dropped
		// with each failed attempt to reach a dead master) would pin the
		// client to a demoted master. Every second bounds that.
		opt.Sentinel.TopologyRefreshInterval = time.Second
	}
	if r != nil {
		f := r.fence
		dial := opt.DialCtxFn
		opt.DialCtxFn = func(ctx context.Context, dst string, d *net.Dialer, cfg *tls.Config) (net.Conn, error) {
			var conn net.Conn
			var err error
			switch {
			case dial != nil:
				conn, err = dial(ctx, dst, d, cfg)
			case cfg != nil: // as rueidis dials by default
				conn, err = (&tls.Dialer{NetDialer: d, Config: cfg}).DialContext(ctx, "tcp", dst)
			default:
				conn, err = d.DialContext(ctx, "tcp", dst)
			}
			if err == nil {
				f.connChanged()
			}
			return conn, err
		}
		// rueidis calls this with nil when a connection's local cache is
		// dropped: the connection closed, or Redis flushed (FLUSHALL).
		opt.OnInvalidations = func(m []rueidis.RedisMessage) {
			if m == nil {
				f.connChanged()
			}
			r.invalidated(m)
		}
	}
	return opt, nil
}

// ConnectRedis returns the L1 tier for url. rueidis refuses to build a client
// when its first connection fails, but a Redis outage at start must not keep
// sessiond from answering from Postgres: so when Redis is unreachable,
// ConnectRedis returns at once with a tier whose calls fail with
// ErrRedisNotConnected (each counted as a cache error), and keeps trying in
// the background, with capped exponential backoff, until ctx ends. A bad URL
// is an error.
func ConnectRedis(ctx context.Context, url string, o RedisOptions, log *slog.Logger) (*Redis, error) {
	r := newRedis(o, log)
	if o.LocalCache {
		// A decoded entry takes about two of the client-side cache's
		// 512-byte values' worth of memory: this keeps the memo near the
		// cache's own size.
		r.memo = newMemo(max(o.LocalCacheBytes/1024, 4096))
	}
	opt, err := ClientOption(url, o, r)
	if err != nil {
		return nil, err
	}
	if c, err := rueidis.NewClient(opt); err == nil {
		r.setClient(c)
		return r, nil
	} else {
		log.Warn("redis unreachable at start; answering from postgres and retrying in the background", "error", err)
	}
	go func() {
		// rueidis retries within a client, but not the first connection;
		// a small loop here is simpler than a backoff library for one call.
		delay := 100 * time.Millisecond
		for {
			select {
			case <-ctx.Done():
				return
			case <-time.After(delay + rand.N(delay/2)):
			}
			c, err := rueidis.NewClient(opt)
			if err == nil {
				r.setClient(c)
				log.Info("redis connected")
				return
			}
			log.Debug("redis still unreachable", "error", err)
			delay = min(2*delay, 5*time.Second)
		}
	}()
	return r, nil
}

// NewRedis wraps an existing client (tests, tools). Its fence starts
// verified, and it keeps no memo of decoded values: the client was not built
// with the hooks that keep either honest (ConnectRedis does that).
func NewRedis(c rueidis.Client, o RedisOptions, log *slog.Logger) *Redis {
	r := newRedis(o, log)
	r.setClient(c)
	return r
}

func newRedis(o RedisOptions, log *slog.Logger) *Redis {
	r := &Redis{opts: o}
	r.fence = newFence(r.Client, o.Fence, log)
	return r
}

// Fence returns the revocation fence this tier reads through.
func (r *Redis) Fence() *Fence { return r.fence }

func (r *Redis) setClient(c rueidis.Client) {
	r.client.Store(&c)
}

// Client returns the rueidis client, or ErrRedisNotConnected.
func (r *Redis) Client() (rueidis.Client, error) {
	c := r.client.Load()
	if c == nil {
		return nil, ErrRedisNotConnected
	}
	return *c, nil
}

// Close closes the client, if any.
func (r *Redis) Close() {
	if c := r.client.Load(); c != nil {
		(*c).Close()
	}
}

// entryScript writes entries, each unless its data may predate an
// invalidation of its token: the token's tombstone (or, for a negative
// entry, the tombstone of a session created with the token) is younger than
// the read start, less a margin for clock skew between instances. An entry
// and its tombstones share a hash tag, so this works one slot at a time on a
// cluster. A user-level invalidation is not checked here: it is a
// tombstone in the user's own slot, which every read checks (see Get), so
// no write needs to reach across slots. One entry whose key Redis refuses (a
// key of another type) fails alone, not its batch.
//
// With a generation in ARGV[2], an entry already written in that generation
// (or a later one: its data is newer) is left as it is (2): a warm that
// finds Redis warm writes nothing twice.
//
// KEYS: per entry (entry, token tombstone, new-session tombstone, or the
// token tombstone again for a session: a session is not held back by its
// token's creation). ARGV: limit (ms), generation to keep or "", then per
// entry: expire at (ms), value. Returns 1 (written), 0 (refused), 2 (kept)
// or -1 (failed) per entry.
var entryScript = newScript(`
local limit, keep, out = tonumber(ARGV[1]), tonumber(ARGV[2]), {}
local n = #KEYS / 3
-- the generation of an entry: the varint after its version and kind byte
local function gen(v)
  if math.floor(string.byte(v, 1) / 16) ~= ` + strconv.Itoa(entryVersion) + ` then return -1 end
  local g, m = 0, 1
  for i = 2, #v do
    local b = string.byte(v, i)
    g = g + (b % 128) * m
    if b < 128 then return g end
    m = m * 128
  end
  return -1
end
-- MGET of many keys in one call each few thousand (a call per key costs
-- more than the rest of the script; unpack has a limit). A key that holds
-- no string reads as false.
local function mget(keys)
  local vals = {}
  for s = 1, #keys, 4000 do
    local r = redis.call('MGET', unpack(keys, s, math.min(s + 3999, #keys)))
    for j = 1, #r do vals[s + j - 1] = r[j] end
  end
  return vals
end
local tk, ek = {}, {}
for i = 1, n do
  tk[2 * i - 1], tk[2 * i] = KEYS[3 * i - 1], KEYS[3 * i]
  ek[i] = KEYS[3 * i - 2]
end
local ts, cur = mget(tk), {}
if keep then cur = mget(ek) end
for i = 1, n do
  local ok, a, b = 1, ts[2 * i - 1], ts[2 * i]
  if (a and tonumber(a) >= limit) or (b and tonumber(b) >= limit) then ok = 0 end
  if ok == 1 and keep and cur[i] and gen(cur[i]) >= keep then ok = 2 end
  if ok == 1 then
    local r = redis.pcall('SET', ek[i], ARGV[2 * i + 2], 'PXAT', ARGV[2 * i + 1])
    if type(r) == 'table' and r.err then ok = -1 end
  end
  out[i] = ok
end
return out`)

// Lookup is what Get found.
type Lookup struct {
	// Record is the cached session; nil when none is cached or when the
	// entry says there is no such session (Negative).
	Record *Record
	// Negative: a cached "no such session".
	Negative bool
	// Local: answered from the client-side cache.
	Local bool
	// Distrusted: the fence did not let the cache be believed (see Fence):
	// whatever is cached was not looked at, or not believed.
	Distrusted bool
	// Gen is the cache generation at the time of the read: a write of what
	// is read from Postgres next must carry it (see Stamp).
	Gen int64

	readStart int64 // of the entry (Unix ms)
}

// Found reports whether the cache had an answer (an entry or a negative).
func (l Lookup) Found() bool { return l.Record != nil || l.Negative }

// Stamp says when the data about to be cached was read, so that a write of
// data older than an invalidation is refused.
type Stamp struct {
	ReadStart time.Time // before the Postgres read began
	Gen       int64     // the cache generation before the read began
	// KeepCached leaves an entry already written in Gen (or later) as it
	// is (Kept): for warming a Redis that other instances keep warm, and
	// for an early read's fill (see ReadThrough).
	KeepCached bool
}

// Seq is the fence's count of handled invalidations (see Fence.Seq).
func (r *Redis) Seq() uint64 { return r.fence.Seq() }

// AwaitTrust waits at most d, while ctx lasts, for the fence to trust
// Redis, and reports whether it does. Trust changes for many reasons
// (listener, connections, losses); a short poll is simpler than a signal
// from each, and this runs only on a failing path.
func (r *Redis) AwaitTrust(ctx context.Context, d time.Duration) bool {
	if r.fence.Trusted() {
		return true
	}
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return false
		case <-deadline.C:
			return r.fence.Trusted()
		case <-tick.C:
			if r.fence.Trusted() {
				return true
			}
		}
	}
}

// Get returns what is cached under key, honouring ctx's deadline and
// bounding by timeout (when positive) what waits for Redis. Nothing is
// believed while the fence does not trust Redis (checked before the read,
// and after it, since the read may have crossed a new connection): that is a
// miss marked Distrusted, without a round trip when known before. An entry
// of another generation, or read from Postgres before its user was last
// invalidated, is not believed (a miss). A local answer for a token or user
// that this instance invalidated within the last LocalTombstoneTTL is
// checked with Redis itself: Redis delivers the client-side invalidation
// after the reply to the write, so the local copy may still be the old one.
// A Redis failure, or an entry that cannot be decoded, is an error; callers
// treat it as a miss.
func (r *Redis) Get(ctx context.Context, key string, timeout time.Duration) (Lookup, error) {
	f := r.fence
	if l, ok := r.Cached(ctx, key); ok {
		return l, nil
	}
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	c, err := r.Client()
	if err != nil {
		return Lookup{Gen: f.Floor()}, err
	}
	var keyEpoch, genEpoch uint64
	if r.memo != nil {
		keyEpoch, genEpoch = r.memo.epoch(key), r.memo.epoch(GenKey)
	}
	// DoMultiCache falls back to plain round trips when the client-side
	// cache is disabled. A local copy lives for min(TTL, the key's PTTL),
	// and an entry's PTTL never passes its session's expiry (see SetMany).
	resps := c.DoMultiCache(ctx,
		rueidis.CT(c.B().Get().Key(key).Cache(), r.opts.TTL),
		rueidis.CT(c.B().Get().Key(GenKey).Cache(), r.opts.TTL))
	l, err := r.decodeLookup(key, resps[0], resps[1])
	if err == nil && r.memo != nil {
		r.remember(key, keyEpoch, genEpoch, resps[1], l)
	}
	if err == nil && l.Local && l.Found() && f.tombs.active(key, l) {
		// A local copy of a token this instance just invalidated may be
		// the old one: ask Redis itself. (A local "nothing cached" is
		// believed: at worst it predates a fill Redis has not told us of
		// yet, and the miss costs one Postgres read, where asking Redis on
		// every miss would cost a round trip each.)
		resps = c.DoMulti(ctx, c.B().Get().Key(key).Build(), c.B().Get().Key(GenKey).Build())
		l, err = r.decodeLookup(key, resps[0], resps[1])
	}
	if err == nil && l.Record != nil {
		revoked, uerr := r.userRevoked(ctx, c, l)
		switch {
		case uerr != nil:
			return Lookup{Gen: l.Gen}, uerr
		case revoked:
			l = Lookup{Gen: l.Gen} // read before its user was invalidated: not believed
		}
	}
	if !f.Trusted() {
		return Lookup{Gen: f.Floor(), Distrusted: true}, nil
	}
	return l, err
}

// Cached is what Get returns for key when this instance knows it without a
// round trip to Redis: the fence's distrust, or a decoded local copy. When
// ok is false, Get would ask Redis, and the Lookup's Gen is the generation
// as this instance knows it now: what a read from Postgres begun before
// that round trip must carry (see Stamp and ReadThrough's early reads).
func (r *Redis) Cached(_ context.Context, key string) (l Lookup, ok bool) {
	f := r.fence
	if !f.Trusted() {
		return Lookup{Gen: f.Floor(), Distrusted: true}, true
	}
	if r.memo == nil {
		return Lookup{Gen: f.Floor()}, false
	}
	l, ok = r.fromMemo(key)
	switch {
	case !f.Trusted():
		return Lookup{Gen: f.Floor(), Distrusted: true}, true
	case ok:
		return l, true
	}
	gen := f.Floor()
	if g, ok := r.memo.get(GenKey, time.Now().UnixNano()); ok && !g.absent {
		gen = max(gen, g.num)
	}
	return Lookup{Gen: gen}, false
}

func (r *Redis) decodeLookup(key string, entry, gen rueidis.RedisResult) (Lookup, error) {
	floor := r.fence.Floor()
	g, err := gen.AsInt64()
	if err != nil && !rueidis.IsRedisNil(err) {
		return Lookup{Gen: floor}, fmt.Errorf("redis get generation: %w", err)
	}
	if g > floor {
		r.fence.observe(g)
	}
	l := Lookup{Local: entry.IsCacheHit(), Gen: max(g, floor)}
	v, err := entry.AsBytes()
	switch {
	case rueidis.IsRedisNil(err):
		return l, nil
	case err != nil:
		return Lookup{Gen: l.Gen}, fmt.Errorf("redis get: %w", err)
	}
	h, rec, err := decodeEntry(v)
	if err != nil {
		return Lookup{Gen: l.Gen}, fmt.Errorf("cache entry %s: %w", key, err)
	}
	if h.gen != l.Gen {
		return l, nil // written before the generation moved on: not believed
	}
	l.Record, l.Negative, l.readStart = rec, rec == nil, h.readStart
	return l, nil
}

// fromMemo answers from the memo when it holds the generation, the entry
// and (for a session) its user's tombstone; ok is false when Get must ask
// rueidis (something not held, or a key or user this instance just
// invalidated).
func (r *Redis) fromMemo(key string) (l Lookup, ok bool) {
	now := time.Now().UnixNano()
	g, ok := r.memo.get(GenKey, now)
	if !ok {
		return Lookup{}, false
	}
	e, ok := r.memo.get(key, now)
	if !ok {
		return Lookup{}, false
	}
	l = Lookup{Local: true, Gen: max(g.num, r.fence.Floor())}
	switch {
	case e.absent || e.head.gen != l.Gen:
		return l, true // nothing cached, or not believed: a miss
	case e.rec == nil:
		l.Negative = true
		return l, !r.fence.tombs.active(key, l)
	}
	l.Record, l.readStart = e.rec, e.head.readStart
	if r.fence.tombs.active(key, l) || r.fence.tombs.userActive(e.rec.UserID) {
		return Lookup{}, false
	}
	u, ok := r.memo.get(e.userKey, now)
	if !ok {
		return Lookup{}, false
	}
	if !u.absent && u.num >= l.readStart-r.fence.opts.TombstoneMargin.Milliseconds() {
		return Lookup{Local: true, Gen: l.Gen}, true // read before its user was invalidated
	}
	return l, true
}

// remember puts what a read through rueidis's client-side cache returned in
// the memo: the generation, and the entry (or its absence).
func (r *Redis) remember(key string, keyEpoch, genEpoch uint64, gen rueidis.RedisResult, l Lookup) {
	now := time.Now()
	gv := memoValue{expires: until(now, r.opts.TTL, time.Time{})}
	if n, err := gen.AsInt64(); err == nil {
		gv.num = n
	} else {
		gv.absent = true
	}
	r.memo.put(GenKey, genEpoch, gv)
	ev := memoValue{head: entryHead{gen: l.Gen, readStart: l.readStart}, rec: l.Record}
	switch {
	case l.Record != nil:
		ev.userKey = userTombKey(l.Record.UserID)
		ttl := ttlFor(l.Record, time.UnixMilli(l.readStart), r.opts.TTL, r.opts.NegativeTTL)
		ev.expires = until(now, r.opts.TTL, time.UnixMilli(l.readStart).Add(ttl))
	case l.Negative:
		ev.expires = until(now, r.opts.TTL, time.UnixMilli(l.readStart).Add(r.opts.NegativeTTL))
	default:
		// Absent, or of another generation: remember it as absent for
		// this generation (a write of the current one invalidates it).
		ev.absent = true
		ev.expires = until(now, r.opts.TTL, time.Time{})
	}
	r.memo.put(key, keyEpoch, ev)
}

// userRevoked reports whether the user of l's record was invalidated after
// its data was read (less the skew margin): then the entry is not
// believed. The user's tombstone is read through the client-side cache like
// the entry (Redis tells every instance that cached its absence when it is
// set), so on a hit this costs a second local lookup; a tombstone this
// instance just set is read from Redis itself (see localTombs).
func (r *Redis) userRevoked(ctx context.Context, c rueidis.Client, l Lookup) (bool, error) {
	key := userTombKey(l.Record.UserID)
	var res rueidis.RedisResult
	var epoch uint64
	cached := !r.fence.tombs.userActive(l.Record.UserID)
	if cached {
		if r.memo != nil {
			epoch = r.memo.epoch(key)
		}
		res = c.DoCache(ctx, c.B().Get().Key(key).Cache(), r.opts.TTL)
	} else {
		res = c.Do(ctx, c.B().Get().Key(key).Build())
	}
	at, err := res.AsInt64()
	absent := rueidis.IsRedisNil(err)
	if err != nil && !absent {
		return false, fmt.Errorf("redis get user tombstone: %w", err)
	}
	if cached && r.memo != nil {
		now := time.Now()
		exp := time.Time{}
		if !absent {
			exp = time.UnixMilli(at).Add(r.fence.opts.UserTombstoneTTL)
		}
		r.memo.put(key, epoch, memoValue{num: at, absent: absent, expires: until(now, r.opts.TTL, exp)})
	}
	return !absent && at >= l.readStart-r.fence.opts.TombstoneMargin.Milliseconds(), nil
}

// Ping measures one round trip to Redis: what a caller's read waits for
// besides the work itself (warming paces itself by it).
func (r *Redis) Ping(ctx context.Context) (time.Duration, error) {
	c, err := r.Client()
	if err != nil {
		return 0, err
	}
	start := time.Now()
	if err := c.Do(ctx, c.B().Ping().Build()).Error(); err != nil {
		return 0, fmt.Errorf("redis ping: %w", err)
	}
	return time.Since(start), nil
}

// Gen returns the current cache generation, from Redis itself.
func (r *Redis) Gen(ctx context.Context) (int64, error) {
	c, err := r.Client()
	if err != nil {
		return 0, err
	}
	g, err := c.Do(ctx, c.B().Get().Key(GenKey).Build()).AsInt64()
	if err != nil && !rueidis.IsRedisNil(err) {
		return 0, fmt.Errorf("redis get generation: %w", err)
	}
	r.fence.observe(g)
	return r.fence.Floor(), nil
}

// Entry is one record to cache under Key.
type Entry struct {
	Key    string
	Record *Record
}

// WriteResult is what became of one entry of SetMany.
type WriteResult int

const (
	Written WriteResult = iota
	// Skipped: not written, on purpose: the session had expired, or it was
	// invalidated (or the generation moved on) after the data was read.
	Skipped
	Failed
	// Kept: already cached in the current generation, left as it is (see
	// Stamp.KeepCached).
	Kept
)

// Set caches rec under key; see SetMany.
func (r *Redis) Set(ctx context.Context, key string, rec *Record, st Stamp) (WriteResult, error) {
	res, errs := r.SetFills(ctx, []Fill{{key, rec, st}})
	return res[0], errs[0]
}

// SetMany caches each entry, whole, with an absolute expiry of
// min(read start + TTL, the session's expires_at), in one pipelined round
// trip whatever the number of entries (one script call per slot on a
// cluster, one in all otherwise: see entryScript). An entry is refused
// (Skipped) when its data may predate an invalidation of its token; an entry
// whose user was invalidated after st is written but never believed (see
// Get). So no reader ever sees an entry without an expiry or a session
// brought back after it was revoked. A session that has expired is cached
// for the negative TTL (its answer is "expired"); a record the rule cannot
// decide (see Check) is not cached. It returns one result and one error (nil
// unless Failed) per entry, and honours ctx's deadline.
func (r *Redis) SetMany(ctx context.Context, entries []Entry, st Stamp) ([]WriteResult, []error) {
	fills := make([]Fill, len(entries))
	for i, e := range entries {
		fills[i] = Fill{e.Key, e.Record, st}
	}
	return r.SetFills(ctx, fills)
}

// SetNegative caches "no such session" under key for the negative TTL,
// unless the token was invalidated (a session created with it) after st.
func (r *Redis) SetNegative(ctx context.Context, key string, st Stamp) (WriteResult, error) {
	res, errs := r.SetFills(ctx, []Fill{{key, nil, st}})
	return res[0], errs[0]
}

// Fill is one entry to cache: what a Postgres read begun at Stamp found.
type Fill struct {
	Key    string
	Record *Record // nil: no such session (cached for the negative TTL)
	Stamp  Stamp
}

// SetFills caches fills, each as SetMany (a record) or SetNegative (nil)
// would with its own stamp, in one pipelined round trip. Fills of one
// generation and KeepCached share script calls, whose refusal check is
// against the earliest read start among them: for the others, stricter
// than their own stamps ask, never looser.
func (r *Redis) SetFills(ctx context.Context, fills []Fill) ([]WriteResult, []error) {
	res := make([]WriteResult, len(fills))
	errs := make([]error, len(fills))
	c, err := r.Client()
	if err != nil {
		for i := range fills {
			res[i], errs[i] = Failed, err
		}
		return res, errs
	}
	type kind struct {
		gen  int64
		keep bool
	}
	var kinds []kind
	earliest := map[kind]time.Time{}
	for _, f := range fills {
		k := kind{f.Stamp.Gen, f.Stamp.KeepCached}
		t, ok := earliest[k]
		if !ok {
			kinds = append(kinds, k)
		}
		if !ok || f.Stamp.ReadStart.Before(t) {
			earliest[k] = f.Stamp.ReadStart
		}
	}
	ws := make(map[kind]*writes, len(kinds))
	for _, k := range kinds {
		ws[k] = r.newWrites(c, Stamp{ReadStart: earliest[k], Gen: k.gen, KeepCached: k.keep})
	}
	for i, f := range fills {
		at := f.Stamp.ReadStart
		expireAt := at.Add(r.opts.NegativeTTL)
		if f.Record != nil {
			ttl := ttlFor(f.Record, at, r.opts.TTL, r.opts.NegativeTTL)
			if ttl <= 0 || Check(f.Record, at) == ReasonUndecidable {
				res[i] = Skipped
				continue
			}
			expireAt = at.Add(ttl)
		}
		if f.Key == "" {
			res[i] = Skipped
			continue
		}
		ws[kind{f.Stamp.Gen, f.Stamp.KeepCached}].add(i, f.Key, f.Record, expireAt, at)
	}
	var execs []rueidis.LuaExec
	var idx [][]int
	for _, k := range kinds {
		e, i := ws[k].groups.execsWithEntries()
		execs, idx = append(execs, e...), append(idx, i...)
	}
	writeCalls(ctx, c, execs, idx, res, errs)
	return res, errs
}

// errRefusedKey is an entry's error when Redis refused its key (of
// another type).
var errRefusedKey = errors.New("redis write: a key of another type is in the way")

// writes gathers the entries of one generation and KeepCached of a
// SetFills into script calls, one per slot (everything is one call on a
// Redis that is not a cluster).
type writes struct {
	gen    int64
	buf    []byte
	groups *groups
}

// maxWriteCall bounds the entries of one write script call: about 2 ms of
// Redis's time.
const maxWriteCall = 1000

func (r *Redis) newWrites(c rueidis.Client, st Stamp) *writes {
	limit := strconv.FormatInt(st.ReadStart.Add(-r.fence.opts.TombstoneMargin).UnixMilli(), 10)
	keep := ""
	if st.KeepCached {
		keep = strconv.FormatInt(st.Gen, 10)
	}
	g := newGroups(c.Mode() == rueidis.ClientModeCluster, limit, keep)
	g.max = 3 * maxWriteCall
	return &writes{gen: st.Gen, groups: g}
}

// add queues the entry of rec (nil: negative), read at readStart, under
// key for the caller's index i.
func (w *writes) add(i int, key string, rec *Record, expireAt, readStart time.Time) {
	checkNew := tombKey(key)
	if rec == nil {
		checkNew = newTombKey(key)
	}
	w.buf = encodeEntry(w.buf[:0], w.gen, readStart, rec)
	w.groups.addEntry(hashTag(key), i, []string{strconv.FormatInt(expireAt.UnixMilli(), 10), string(w.buf)}, key, tombKey(key), checkNew)
}

// writeCalls sends the write script calls in one pipelined round trip, and
// sets the result (and error) of each call's entries: idx[n] are call n's.
func writeCalls(ctx context.Context, c rueidis.Client, execs []rueidis.LuaExec, idx [][]int, res []WriteResult, errs []error) {
	if len(execs) == 0 {
		return
	}
	for n, r := range entryScript.execMulti(ctx, c, execs) {
		out, err := r.AsIntSlice()
		if err == nil && len(out) != len(idx[n]) {
			err = fmt.Errorf("%d results for %d entries", len(out), len(idx[n]))
		}
		for k, i := range idx[n] {
			switch {
			case err != nil:
				res[i], errs[i] = Failed, fmt.Errorf("redis write: %w", err)
			case out[k] == 1:
				res[i] = Written
			case out[k] == 0:
				res[i] = Skipped
			case out[k] == 2:
				res[i] = Kept
			default:
				res[i], errs[i] = Failed, errRefusedKey
			}
		}
	}
}
