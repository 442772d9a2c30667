package tiers

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"net"
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
	// Fence configures the revocation fence.
	Fence FenceOptions
}

// Redis is the L1 tier: sessions as Redis hashes under Key(hash), read
// through rueidis's client-side cache, believed only while the fence says
// so (see Fence).
type Redis struct {
	client atomic.Pointer[rueidis.Client]
	opts   RedisOptions
	fence  *Fence
}

// ClientOption turns a Redis URL (redis://, rediss://, unix://) into the
// rueidis options sessiond runs with. f, when not nil, hears of every
// connection dialled (before it carries a command) and of every flush of the
// local cache Redis sends: its dataset must be verified again.
func ClientOption(url string, o RedisOptions, f *Fence) (rueidis.ClientOption, error) {
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
	if f != nil {
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
	opt, err := ClientOption(url, o, r.fence)
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
// verified unless the client was built with ClientOption and the fence
// (use ConnectRedis for that).
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

// Entry fields besides the record's.
const (
	fGen     = "g"       // the generation an entry was written in
	fMissing = "missing" // marks a negative entry: no such session
)

// writeScript writes a batch of entries, each unless the data it was read
// from may predate an invalidation: the generation moved on since the read,
// or one of the entry's tombstones is younger than the read (minus a margin
// for clock skew between instances). Reading, checking and writing in one
// script leaves no window for an invalidation to slip between them, and one
// script per batch (not per entry) keeps warming fast. An entry for a
// session checks the tombstones of its user and its token; a negative entry
// (no user index) those of its token and of a session newly created with
// it. A writer that brings a newer generation than Redis holds (Redis was
// restarted empty) puts it back: generations never go backwards.
// It returns 1 (written) or 0 (refused) per entry.
//
// KEYS: generation, then per entry: entry, user index or "", two
// tombstones. ARGV: read start (ms), margin (ms), generation, then per
// entry: expire at (ms), number of field/value strings, fields...
var writeScript = rueidis.NewLuaScript(`
local n = (#KEYS - 1) / 4
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
  local k = 2 + (i - 1) * 4
  local exp, nf = ARGV[a], tonumber(ARGV[a + 1])
  local ok = 1
  for _, t in ipairs(redis.call('MGET', KEYS[k + 2], KEYS[k + 3])) do
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
}

// Found reports whether the cache had an answer (an entry or a negative).
func (l Lookup) Found() bool { return l.Record != nil || l.Negative }

// Stamp says when the data about to be cached was read, so that a write of
// data older than an invalidation is refused.
type Stamp struct {
	ReadStart time.Time // before the Postgres read began
	Gen       int64     // the cache generation before the read began
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

// Get returns what is cached under key, honouring ctx's deadline. Nothing is
// believed while the fence does not trust Redis (checked before the read,
// and after it, since the read may have crossed a new connection): that is a
// miss marked Distrusted, without a round trip when known before. An entry
// of another generation is not believed (a miss). A local answer for a key
// or user that this instance invalidated within the last LocalTombstoneTTL
// is not believed either: Redis delivers the client-side invalidation after
// the reply to the DEL, so the local copy may still be the old one; such
// reads go to Redis itself. A Redis failure, or an entry that cannot be
// decoded, is an error; callers treat it as a miss.
func (r *Redis) Get(ctx context.Context, key string) (Lookup, error) {
	f := r.fence
	if !f.Trusted() {
		return Lookup{Gen: f.Floor(), Distrusted: true}, nil
	}
	c, err := r.Client()
	if err != nil {
		return Lookup{Gen: f.Floor()}, err
	}
	// DoMultiCache falls back to plain round trips when the client-side
	// cache is disabled. A local copy lives for min(TTL, the key's PTTL),
	// and an entry's PTTL never passes its session's expiry (see SetMany).
	resps := c.DoMultiCache(ctx,
		rueidis.CT(c.B().Hgetall().Key(key).Cache(), r.opts.TTL),
		rueidis.CT(c.B().Get().Key(GenKey).Cache(), r.opts.TTL))
	l, err := r.decodeLookup(key, resps[0], resps[1])
	if !f.Trusted() {
		return Lookup{Gen: f.Floor(), Distrusted: true}, nil
	}
	if err != nil || !l.Local {
		return l, err
	}
	// Two kinds of local answer are checked with Redis itself: "nothing
	// cached" (the local copy of an absent key may predate a fill that Redis
	// has not yet told us about, and a round trip is cheaper than the
	// Postgres query a miss costs), and a tombstoned one.
	if l.Found() && !f.tombs.active(key, l) {
		return l, nil
	}
	resps = c.DoMulti(ctx, c.B().Hgetall().Key(key).Build(), c.B().Get().Key(GenKey).Build())
	l, err = r.decodeLookup(key, resps[0], resps[1])
	if !f.Trusted() {
		return Lookup{Gen: f.Floor(), Distrusted: true}, nil
	}
	return l, err
}

func (r *Redis) decodeLookup(key string, entry, gen rueidis.RedisResult) (Lookup, error) {
	floor := r.fence.Floor()
	m, err := entry.AsStrMap()
	if err != nil {
		return Lookup{Gen: floor}, fmt.Errorf("redis hgetall: %w", err)
	}
	g, err := gen.AsInt64()
	if err != nil && !rueidis.IsRedisNil(err) {
		return Lookup{Gen: floor}, fmt.Errorf("redis get generation: %w", err)
	}
	if g > floor {
		r.fence.observe(g)
	}
	l := Lookup{Local: entry.IsCacheHit(), Gen: max(g, floor)}
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
		return Lookup{Gen: l.Gen}, fmt.Errorf("cache entry %s: %w", key, err)
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
)

// Set caches rec under key; see SetMany. A skipped write is not an error.
func (r *Redis) Set(ctx context.Context, key string, rec *Record, st Stamp) error {
	_, errs := r.SetMany(ctx, []Entry{{key, rec}}, st)
	return errs[0]
}

// SetMany caches each entry as a hash whose absolute expiry is
// min(read start + TTL, the session's expires_at), in one round trip. Each
// entry is replaced whole by a script (writeScript) that also files it in its
// user's index and refuses data older than an invalidation; so no reader ever
// sees a half-written entry, a field left from an older version, an entry
// without an expiry, or a session brought back after it was revoked. A
// record the rule cannot decide (see Check) is skipped. It returns one
// result and one error (nil unless Failed) per entry, and honours ctx's
// deadline.
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
		if ttl <= 0 || Check(e.Record, st.ReadStart) == ReasonUndecidable {
			res[i] = Skipped
			continue
		}
		rec := e.Record
		w.add(i, st.ReadStart.Add(ttl), encode(rec),
			e.Key, UserSetPrefix+rec.UserID, TombPrefix+"u:"+rec.UserID, TombPrefix+"k:"+hashOf(e.Key))
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
		key, "", TombPrefix+"k:"+hashOf(key), TombPrefix+"n:"+hashOf(key))
	w.exec(ctx, c, res, errs)
	return res[0], errs[0]
}

// write gathers one call of writeScript.
type write struct {
	keys, args []string
	idx        []int // entry index of each queued entry
}

func (r *Redis) newWrite(st Stamp, n int) *write {
	w := &write{keys: make([]string, 1, 1+4*n), args: make([]string, 3, 3+30*n), idx: make([]int, 0, n)}
	w.keys[0] = GenKey
	w.args[0] = strconv.FormatInt(st.ReadStart.UnixMilli(), 10)
	w.args[1] = strconv.FormatInt(r.fence.opts.TombstoneMargin.Milliseconds(), 10)
	w.args[2] = strconv.FormatInt(st.Gen, 10)
	return w
}

// add queues entry i: its four keys (entry, user index or "", two
// tombstones) and its fields, plus the generation field.
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

// encode lists the fields of r, a NULL column being an absent field.
func encode(r *Record) []string {
	f := make([]string, 0, 26)
	f = append(f, fID, r.ID, fUserID, r.UserID, fEmail, r.Email)
	for _, o := range [...]struct {
		name string
		v    time.Time
	}{{fExpiresAt, r.ExpiresAt}, {fLastActivityAt, r.LastActivityAt}, {fCreatedAt, r.CreatedAt}} {
		if !o.v.IsZero() {
			f = append(f, o.name, encTime(o.v))
		}
	}
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
	for _, o := range [...]struct {
		name string
		dst  *time.Time
	}{{fExpiresAt, &r.ExpiresAt}, {fLastActivityAt, &r.LastActivityAt}, {fCreatedAt, &r.CreatedAt}} {
		if v, ok := m[o.name]; ok {
			t, err := decTime(v)
			if err != nil {
				return nil, fmt.Errorf("field %s: %w", o.name, err)
			}
			*o.dst = t
		}
	}
	r.IPAddress = optString(m, fIPAddress)
	r.UserAgent = optString(m, fUserAgent)
	r.FirstName = optString(m, fFirstName)
	r.LastName = optString(m, fLastName)
	r.Username = optString(m, fUsername)
	var err error
	if r.DeletedAt, err = optTime(m, fDeletedAt); err != nil {
		return nil, err
	}
	if r.BannedUntil, err = optTime(m, fBannedUntil); err != nil {
		return nil, err
	}
	return r, nil
}

// Times are Unix microseconds, Postgres's own resolution, so that a cached
// record compares equal to the row it came from. The few values that do not
// fit (±infinity, and years past 294,246 that Postgres holds up to 294,276)
// are written "inf", "-inf" and "s<seconds>.<microseconds>".
func encTime(t time.Time) string {
	switch {
	case t.Equal(Infinity):
		return "inf"
	case t.Equal(NegInfinity):
		return "-inf"
	case t.Before(minMicro) || t.After(maxMicro):
		return "s" + strconv.FormatInt(t.Unix(), 10) + "." + strconv.Itoa(t.Nanosecond()/1000)
	}
	return strconv.FormatInt(t.UnixMicro(), 10)
}

// The range of times that Unix microseconds in an int64 can hold.
var (
	minMicro = time.UnixMicro(math.MinInt64).UTC()
	maxMicro = time.UnixMicro(math.MaxInt64).UTC()
)

func decTime(v string) (time.Time, error) {
	switch {
	case v == "inf":
		return Infinity, nil
	case v == "-inf":
		return NegInfinity, nil
	case strings.HasPrefix(v, "s"):
		sec, usec, ok := strings.Cut(v[1:], ".")
		s, err1 := strconv.ParseInt(sec, 10, 64)
		us, err2 := strconv.ParseInt(usec, 10, 64)
		if !ok || err1 != nil || err2 != nil || us < 0 || us >= 1e6 {
			return time.Time{}, fmt.Errorf("bad time %q", v)
		}
		return time.Unix(s, us*1000).UTC(), nil
	}
	us, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		return time.Time{}, err
	}
	return time.UnixMicro(us).UTC(), nil
}

func optTime(m map[string]string, f string) (*time.Time, error) {
	v, ok := m[f]
	if !ok {
		return nil, nil
	}
	t, err := decTime(v)
	if err != nil {
		return nil, fmt.Errorf("field %s: %w", f, err)
	}
	return &t, nil
}

func optString(m map[string]string, f string) *string {
	if v, ok := m[f]; ok {
		return &v
	}
	return nil
}
