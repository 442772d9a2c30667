package tiers

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/redis/rueidis"

	"github.com/sessiond/sessiond/internal/redact"
)

// ErrRedisNotConnected is returned while sessiond has not yet managed to make
// its first connection to Redis (it keeps trying in the background).
var ErrRedisNotConnected = errors.New("redis not connected yet")

// Field names of a cached session, as in the warming guide (less its token
// field: the key already names the token's hash, and the raw token is never
// written to Redis), plus deletedAt and bannedUntil so that every cache hit
// can re-run the validity rule. A NULL column is an absent field. Times are
// Unix microseconds, Postgres's own resolution, so a cached record compares
// equal to the row it came from.
const (
	fID             = "id"
	fUserID         = "userId"
	fExpiresAt      = "expiresAt"
	fLastActivityAt = "lastActivityAt"
	fCreatedAt      = "createdAt"
	fIPAddress      = "ipAddress"
	fUserAgent      = "userAgent"
	fEmail          = "email"
	fFirstName      = "firstName"
	fLastName       = "lastName"
	fUsername       = "username"
	fDeletedAt      = "deletedAt"
	fBannedUntil    = "bannedUntil"
)

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

// Redis is the L1 tier: sessions as Redis hashes under Key(hash), read
// through rueidis's client-side cache.
type Redis struct {
	client   atomic.Pointer[rueidis.Client]
	opts     RedisOptions
	genFloor atomic.Int64 // the generation this instance has bumped to
	tombs    *localTombs
	// distrust is set while an invalidation could not be applied to Redis:
	// until the generation is bumped, no entry is believed (reads go to
	// Postgres).
	distrust      atomic.Bool
	invalidations atomic.Int64
}

// ClientOption turns a Redis URL (redis://, rediss://, unix://) into the
// rueidis options sessiond runs with.
func ClientOption(url string, o RedisOptions) (rueidis.ClientOption, error) {
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
	opt, err := ClientOption(url, o)
	if err != nil {
		return nil, err
	}
	r := newRedis(o)
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

// NewRedis wraps an existing client (tests, tools).
func NewRedis(c rueidis.Client, o RedisOptions) *Redis {
	r := newRedis(o)
	r.setClient(c)
	return r
}

func newRedis(o RedisOptions) *Redis {
	return &Redis{opts: o, tombs: newLocalTombs(o.LocalTombstoneTTL)}
}

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

// Keys sessiond keeps besides the entries. An entry and its user's set are
// written together; tombstones and the generation guard against stale
// writes (see SetMany).
const (
	// GenKey holds the cache generation. An entry is only believed when its
	// generation is the current one; bumping it drops every entry at once,
	// on every instance, without a SCAN (see BumpGen).
	GenKey = "sessiond:gen"
	// UserSetPrefix + user id: the set of entry keys of that user's cached
	// sessions, so that a user's entries are found without a SCAN.
	UserSetPrefix = "sessiond:user:"
	// TombPrefix + "u:"/"s:"/"k:"/"n:" + user id / session id / token hash /
	// token hash: when the user, session or token was last invalidated, or
	// a session was created with the token (Unix ms).
	TombPrefix = "sessiond:tomb:"

	fGen     = "g"       // the generation an entry was written in
	fMissing = "missing" // marks a negative entry: no such session
)

// writeScript writes a batch of entries, each unless the data it was read
// from may predate an invalidation: the generation moved on since the read,
// or one of the entry's tombstones is younger than the read (minus a margin
// for clock skew between instances). Reading, checking and writing in one
// script leaves no window for an invalidation to slip between them, and one
// script per batch (not per entry) keeps warming fast. An entry for a
// session checks the tombstones of its user, its session and its token; a
// negative entry (empty user set) those of its token and of a session newly
// created with it. A writer that brings a newer generation than Redis holds
// (Redis was restarted empty) puts it back: generations never go backwards.
// It returns 1 (written) or 0 (refused) per entry.
//
// KEYS: generation, then per entry: entry, user set, three tombstones.
// ARGV: read start (ms), margin (ms), generation, then per entry:
// expire at (ms), number of field/value strings, fields...
var writeScript = rueidis.NewLuaScript(`
local n = (#KEYS - 1) / 5
local out = {}
local g, w = tonumber(redis.call('GET', KEYS[1]) or '0'), tonumber(ARGV[3])
if g > w then
  for i = 1, n do out[i] = 0 end
  return out
end
if g < w then redis.call('SET', KEYS[1], ARGV[3]) end
local limit = tonumber(ARGV[1]) - tonumber(ARGV[2])
local a = 4
for i = 1, n do
  local k = 2 + (i - 1) * 5
  local exp, nf = ARGV[a], tonumber(ARGV[a + 1])
  local ok = 1
  for _, t in ipairs(redis.call('MGET', KEYS[k + 2], KEYS[k + 3], KEYS[k + 4])) do
    if t and tonumber(t) >= limit then ok = 0 end
  end
  if ok == 1 then
    redis.call('DEL', KEYS[k])
    redis.call('HSET', KEYS[k], unpack(ARGV, a + 2, a + 1 + nf))
    redis.call('PEXPIREAT', KEYS[k], exp)
    if KEYS[k + 1] ~= '' then
      redis.call('SADD', KEYS[k + 1], KEYS[k])
      if redis.call('PEXPIREAT', KEYS[k + 1], exp, 'GT') == 0 then
        redis.call('PEXPIREAT', KEYS[k + 1], exp, 'NX')
      end
    end
  end
  out[i] = ok
  a = a + 2 + nf
end
return out`)

// dropUserScript drops a user's entries (all of them, or with ARGV[3] the
// one of that session id) and leaves a tombstone.
//
// KEYS: user set, tombstone. ARGV: now (ms), tombstone TTL (ms), [session id].
var dropUserScript = rueidis.NewLuaScript(`
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
local n = 0
for _, k in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local id = redis.call('HGET', k, 'id')
  if ARGV[3] == nil or not id or id == ARGV[3] then
    n = n + redis.call('DEL', k)
    redis.call('SREM', KEYS[1], k)
  end
end
if redis.call('SCARD', KEYS[1]) == 0 then redis.call('DEL', KEYS[1]) end
return n`)

// dropKeyScript drops one entry by key (with ARGV[3], only a negative one)
// and leaves a tombstone.
//
// KEYS: entry, tombstone. ARGV: now (ms), tombstone TTL (ms), [negative only].
var dropKeyScript = rueidis.NewLuaScript(`
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
if ARGV[3] ~= nil and redis.call('HEXISTS', KEYS[1], '` + fMissing + `') == 0 then return 0 end
return redis.call('DEL', KEYS[1])`)

// Lookup is what Get found.
type Lookup struct {
	// Record is the cached session; nil when none is cached or when the
	// entry says there is no such session (Negative).
	Record *Record
	// Negative: a cached "no such session".
	Negative bool
	// Local: answered from the client-side cache.
	Local bool
	// Gen is the cache generation at the time of the read: a write of what
	// is read from Postgres next must carry it (see Stamp).
	Gen int64
}

// Found reports whether the cache had an answer (an entry or a negative).
func (l Lookup) Found() bool { return l.Record != nil || l.Negative }

// Stamp says when the data about to be cached was read, so that a write of
// data older than an invalidation is refused.
type Stamp struct {
	ReadStart time.Time // before the Postgres read began
	Gen       int64     // the cache generation before the read began
}

// Get returns what is cached under key, honouring ctx's deadline. An entry
// of another generation is not believed (a miss). A local answer for a key,
// session or user that this instance invalidated within the last
// LocalTombstoneTTL is not believed either: Redis delivers the client-side
// invalidation after the reply to the DEL, so the local copy may still be the
// old one; such reads go to Redis itself. A Redis failure, or an entry that
// cannot be decoded, is an error; callers treat it as a miss.
func (r *Redis) Get(ctx context.Context, key string) (Lookup, error) {
	c, err := r.Client()
	if err != nil {
		return Lookup{}, err
	}
	// DoMultiCache falls back to plain round trips when the client-side
	// cache is disabled. A local copy lives for min(TTL, the key's PTTL),
	// and an entry's PTTL never passes its session's expiry (see SetMany).
	resps := c.DoMultiCache(ctx,
		rueidis.CT(c.B().Hgetall().Key(key).Cache(), r.opts.TTL),
		rueidis.CT(c.B().Get().Key(GenKey).Cache(), r.opts.TTL))
	l, err := r.decodeLookup(key, resps[0], resps[1])
	if r.distrust.Load() {
		return Lookup{Gen: l.Gen}, nil
	}
	if err != nil || !l.Local {
		return l, err
	}
	// Two kinds of local answer are checked with Redis itself: "nothing
	// cached" (the local copy of an absent key may predate a fill that Redis
	// has not yet told us about, and a round trip is cheaper than the
	// Postgres query a miss costs), and a tombstoned one.
	if l.Found() && !r.tombs.active(key, l) {
		return l, nil
	}
	resps = c.DoMulti(ctx, c.B().Hgetall().Key(key).Build(), c.B().Get().Key(GenKey).Build())
	return r.decodeLookup(key, resps[0], resps[1])
}

func (r *Redis) decodeLookup(key string, entry, gen rueidis.RedisResult) (Lookup, error) {
	m, err := entry.AsStrMap()
	if err != nil {
		return Lookup{}, fmt.Errorf("redis hgetall: %w", err)
	}
	g, err := gen.AsInt64()
	if err != nil && !rueidis.IsRedisNil(err) {
		return Lookup{}, fmt.Errorf("redis get generation: %w", err)
	}
	l := Lookup{Local: entry.IsCacheHit(), Gen: max(g, r.genFloor.Load())}
	if len(m) == 0 { // HGETALL of a missing key is an empty map
		return l, nil
	}
	if m[fGen] != strconv.FormatInt(l.Gen, 10) {
		return l, nil // written before the generation moved on: not believed
	}
	if m[fMissing] != "" {
		l.Negative = true
		return l, nil
	}
	l.Record, err = decode(m)
	if err != nil {
		return Lookup{}, fmt.Errorf("cache entry %s: %w", key, err)
	}
	return l, nil
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
	return max(g, r.genFloor.Load()), nil
}

// BumpGen moves the cache generation on, so that no entry written before is
// believed again, on any instance: what to do when invalidations may have
// been missed. It returns the new generation.
func (r *Redis) BumpGen(ctx context.Context) (int64, error) {
	c, err := r.Client()
	if err != nil {
		return 0, err
	}
	g, err := c.Do(ctx, c.B().Incr().Key(GenKey).Build()).AsInt64()
	if err != nil {
		return 0, fmt.Errorf("redis incr generation: %w", err)
	}
	// Our own local copy of the generation may lag (invalidations come after
	// the reply); the floor makes this instance see the new one at once.
	for {
		f := r.genFloor.Load()
		if g <= f || r.genFloor.CompareAndSwap(f, g) {
			break
		}
	}
	return g, nil
}

// Distrust makes Get believe no entry until Trust: for while an
// invalidation is known to be missing from Redis.
func (r *Redis) Distrust() { r.distrust.Store(true) }

// Trust ends Distrust; call it after BumpGen.
func (r *Redis) Trust() { r.distrust.Store(false) }

// Invalidations is how many entries the Drop methods have deleted.
func (r *Redis) Invalidations() int64 { return r.invalidations.Load() }

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
)

// Set caches rec under key; see SetMany. A skipped write is not an error.
func (r *Redis) Set(ctx context.Context, key string, rec *Record, st Stamp) error {
	_, errs := r.SetMany(ctx, []Entry{{key, rec}}, st)
	return errs[0]
}

// SetMany caches each entry as a hash whose absolute expiry is
// min(read start + TTL, the session's expires_at), in one round trip. Each
// entry is replaced whole by a script (writeScript) that also files it in its
// user's set and refuses data older than an invalidation; so no reader ever
// sees a half-written entry, a field left from an older version, an entry
// without an expiry, or a session brought back after it was revoked. It
// returns one result and one error (nil unless Failed) per entry, and
// honours ctx's deadline.
func (r *Redis) SetMany(ctx context.Context, entries []Entry, st Stamp) ([]WriteResult, []error) {
	res := make([]WriteResult, len(entries))
	errs := make([]error, len(entries))
	c, err := r.Client()
	if err != nil {
		for i := range entries {
			res[i], errs[i] = Failed, err
		}
		return res, errs
	}
	w := r.newWrite(st, len(entries))
	for i, e := range entries {
		ttl := ttlFor(e.Record, st.ReadStart, r.opts.TTL, r.opts.NegativeTTL)
		if ttl <= 0 {
			res[i] = Skipped
			continue
		}
		rec := e.Record
		w.add(i, st.ReadStart.Add(ttl), encode(rec),
			e.Key, UserSetPrefix+rec.UserID, TombPrefix+"u:"+rec.UserID, TombPrefix+"s:"+rec.ID, TombPrefix+"k:"+hashOf(e.Key))
	}
	w.exec(ctx, c, res, errs)
	return res, errs
}

// SetNegative caches "no such session" under key for the negative TTL,
// unless the token was invalidated (a session inserted with it) after st.
func (r *Redis) SetNegative(ctx context.Context, key string, st Stamp) (WriteResult, error) {
	c, err := r.Client()
	if err != nil {
		return Failed, err
	}
	res, errs := []WriteResult{0}, []error{nil}
	w := r.newWrite(st, 1)
	w.add(0, st.ReadStart.Add(r.opts.NegativeTTL), []string{fMissing, "1"},
		key, "", TombPrefix+"k:"+hashOf(key), TombPrefix+"n:"+hashOf(key), "")
	w.exec(ctx, c, res, errs)
	return res[0], errs[0]
}

// write gathers one call of writeScript.
type write struct {
	keys, args []string
	idx        []int // entry index of each queued entry
}

func (r *Redis) newWrite(st Stamp, n int) *write {
	w := &write{keys: make([]string, 1, 1+5*n), args: make([]string, 3, 3+30*n), idx: make([]int, 0, n)}
	w.keys[0] = GenKey
	w.args[0] = strconv.FormatInt(st.ReadStart.UnixMilli(), 10)
	w.args[1] = strconv.FormatInt(r.opts.TombstoneMargin.Milliseconds(), 10)
	w.args[2] = strconv.FormatInt(st.Gen, 10)
	return w
}

// add queues entry i: its five keys (entry, user set or "", three
// tombstones or "") and its fields, plus the generation field.
func (w *write) add(i int, expireAt time.Time, fields []string, keys ...string) {
	w.keys = append(w.keys, keys...)
	w.args = append(w.args, strconv.FormatInt(expireAt.UnixMilli(), 10), strconv.Itoa(len(fields)+2), fGen, w.args[2])
	w.args = append(w.args, fields...)
	w.idx = append(w.idx, i)
}

func (w *write) exec(ctx context.Context, c rueidis.Client, res []WriteResult, errs []error) {
	if len(w.idx) == 0 {
		return
	}
	out, err := writeScript.Exec(ctx, c, w.keys, w.args).AsIntSlice()
	if err == nil && len(out) != len(w.idx) {
		err = fmt.Errorf("%d results for %d entries", len(out), len(w.idx))
	}
	for j, i := range w.idx {
		switch {
		case err != nil:
			res[i], errs[i] = Failed, fmt.Errorf("redis write: %w", err)
		case out[j] == 1:
			res[i] = Written
		default:
			res[i] = Skipped
		}
	}
}

// hashOf is the token hash in an entry key.
func hashOf(key string) string { return strings.TrimPrefix(key, KeyPrefix) }

// DropUser deletes every cached session of a user, leaves a tombstone that
// refuses writes of data read before now, and makes this instance distrust
// its local copies of them for LocalTombstoneTTL. It returns how many entries
// it deleted.
func (r *Redis) DropUser(ctx context.Context, userID string) (int64, error) {
	r.tombs.mark("u:" + userID)
	return r.drop(ctx, dropUserScript, []string{UserSetPrefix + userID, TombPrefix + "u:" + userID})
}

// DropSession deletes the cached entry of one session (found through its
// user's set), like DropUser.
func (r *Redis) DropSession(ctx context.Context, sessionID, userID string) (int64, error) {
	r.tombs.mark("s:" + sessionID)
	return r.drop(ctx, dropUserScript, []string{UserSetPrefix + userID, TombPrefix + "s:" + sessionID}, sessionID)
}

// DropKey deletes the entry under key (a session's, or a negative one), like
// DropUser: for a token that must not validate from the cache any more.
func (r *Redis) DropKey(ctx context.Context, key string) (int64, error) {
	r.tombs.mark("k:" + hashOf(key))
	return r.drop(ctx, dropKeyScript, []string{key, TombPrefix + "k:" + hashOf(key)})
}

// DropNegative deletes the entry under key for a token a session was just
// created with: a cached "no such session" must go, and no negative answer
// read before now may be written. Unlike DropKey it does not hold back
// caching the new session itself.
func (r *Redis) DropNegative(ctx context.Context, key string) (int64, error) {
	r.tombs.mark("n:" + hashOf(key))
	return r.drop(ctx, dropKeyScript, []string{key, TombPrefix + "n:" + hashOf(key)}, "negative only")
}

func (r *Redis) drop(ctx context.Context, script *rueidis.Lua, keys []string, extra ...string) (int64, error) {
	c, err := r.Client()
	if err != nil {
		return 0, err
	}
	args := append([]string{strconv.FormatInt(time.Now().UnixMilli(), 10), strconv.FormatInt(r.opts.TombstoneTTL.Milliseconds(), 10)}, extra...)
	n, err := script.Exec(ctx, c, keys, args).AsInt64()
	if err != nil {
		return 0, fmt.Errorf("redis invalidate: %w", err)
	}
	r.invalidations.Add(n)
	return n, nil
}

// encode lists the fields of r, a NULL column being an absent field.
func encode(r *Record) []string {
	f := make([]string, 0, 26)
	f = append(f,
		fID, r.ID,
		fUserID, r.UserID,
		fExpiresAt, encTime(r.ExpiresAt),
		fLastActivityAt, encTime(r.LastActivityAt),
		fCreatedAt, encTime(r.CreatedAt),
		fEmail, r.Email)
	for _, o := range [...]struct {
		name string
		v    *string
	}{{fIPAddress, r.IPAddress}, {fUserAgent, r.UserAgent}, {fFirstName, r.FirstName}, {fLastName, r.LastName}, {fUsername, r.Username}} {
		if o.v != nil {
			f = append(f, o.name, *o.v)
		}
	}
	if r.DeletedAt != nil {
		f = append(f, fDeletedAt, encTime(*r.DeletedAt))
	}
	if r.BannedUntil != nil {
		f = append(f, fBannedUntil, encTime(*r.BannedUntil))
	}
	return f
}

func decode(m map[string]string) (*Record, error) {
	r := &Record{ID: m[fID], UserID: m[fUserID], Email: m[fEmail]}
	if r.ID == "" || r.UserID == "" {
		return nil, errors.New("missing id or userId")
	}
	var err error
	if r.ExpiresAt, err = decTime(m, fExpiresAt); err != nil {
		return nil, err
	}
	if r.LastActivityAt, err = decTime(m, fLastActivityAt); err != nil {
		return nil, err
	}
	if r.CreatedAt, err = decTime(m, fCreatedAt); err != nil {
		return nil, err
	}
	r.IPAddress = optString(m, fIPAddress)
	r.UserAgent = optString(m, fUserAgent)
	r.FirstName = optString(m, fFirstName)
	r.LastName = optString(m, fLastName)
	r.Username = optString(m, fUsername)
	if r.DeletedAt, err = optTime(m, fDeletedAt); err != nil {
		return nil, err
	}
	if r.BannedUntil, err = optTime(m, fBannedUntil); err != nil {
		return nil, err
	}
	return r, nil
}

func encTime(t time.Time) string { return strconv.FormatInt(t.UnixMicro(), 10) }

func decTime(m map[string]string, f string) (time.Time, error) {
	v, ok := m[f]
	if !ok {
		return time.Time{}, fmt.Errorf("missing %s", f)
	}
	us, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		return time.Time{}, fmt.Errorf("field %s: %w", f, err)
	}
	return time.UnixMicro(us).UTC(), nil
}

func optTime(m map[string]string, f string) (*time.Time, error) {
	if _, ok := m[f]; !ok {
		return nil, nil
	}
	t, err := decTime(m, f)
	return &t, err
}

func optString(m map[string]string, f string) *string {
	if v, ok := m[f]; ok {
		return &v
	}
	return nil
}
