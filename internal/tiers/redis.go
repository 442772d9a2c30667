package tiers

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/redis/rueidis"
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
}

// Redis is the L1 tier: sessions as Redis hashes under Key(hash), read
// through rueidis's client-side cache.
type Redis struct {
	client atomic.Pointer[rueidis.Client]
	opts   RedisOptions
	ready  chan struct{}
}

// ClientOption turns a Redis URL (redis://, rediss://, unix://) into the
// rueidis options sessiond runs with.
func ClientOption(url string, o RedisOptions) (rueidis.ClientOption, error) {
	opt, err := rueidis.ParseURL(url)
	if err != nil {
		return opt, fmt.Errorf("parse redis url: %w", err)
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
	r := &Redis{opts: o, ready: make(chan struct{})}
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
	r := &Redis{opts: o, ready: make(chan struct{})}
	r.setClient(c)
	return r
}

func (r *Redis) setClient(c rueidis.Client) {
	r.client.Store(&c)
	close(r.ready)
}

// Ready is closed once Redis has been connected.
func (r *Redis) Ready() <-chan struct{} { return r.ready }

// Client returns the rueidis client, or ErrRedisNotConnected.
func (r *Redis) Client() (rueidis.Client, error) {
	c := r.client.Load()
	if c == nil {
		return nil, ErrRedisNotConnected
	}
	return *c, nil
}

// TTL is the configured cap on an entry's life.
func (r *Redis) TTL() time.Duration { return r.opts.TTL }

// Close closes the client, if any.
func (r *Redis) Close() {
	if c := r.client.Load(); c != nil {
		(*c).Close()
	}
}

// Get returns the record cached under key, nil if there is none, and whether
// the answer came from the client-side cache. A Redis failure or an entry it
// cannot decode is an error; callers treat it as a miss. It honours ctx's
// deadline.
func (r *Redis) Get(ctx context.Context, key string) (rec *Record, local bool, err error) {
	c, err := r.Client()
	if err != nil {
		return nil, false, err
	}
	// DoCache falls back to a plain round trip when the client-side cache is
	// disabled. The local copy lives for min(TTL, the key's PTTL), and the
	// key's PTTL never passes the session's expiry (see Set).
	resp := c.DoCache(ctx, c.B().Hgetall().Key(key).Cache(), r.opts.TTL)
	m, err := resp.AsStrMap()
	if err != nil {
		return nil, false, fmt.Errorf("redis hgetall: %w", err)
	}
	if len(m) == 0 { // HGETALL of a missing key is an empty map
		return nil, resp.IsCacheHit(), nil
	}
	rec, err = decode(m)
	if err != nil {
		return nil, false, fmt.Errorf("cache entry %s: %w", key, err)
	}
	return rec, resp.IsCacheHit(), nil
}

// Entry is one record to cache under Key.
type Entry struct {
	Key    string
	Record *Record
}

// Set caches rec under key. See SetMany.
func (r *Redis) Set(ctx context.Context, key string, rec *Record, now time.Time) error {
	return r.SetMany(ctx, []Entry{{key, rec}}, now)[0]
}

// SetMany caches each entry as a hash whose expiry is min(now+TTL, the
// session's expires_at), all in one round trip. Each entry is replaced whole
// (DEL, HSET with every non-NULL field, PEXPIREAT) inside MULTI/EXEC, so no
// reader ever sees a half-written entry, a stale field left from an older
// version, or an entry without an expiry. An entry whose session has already
// expired is not written and gets no error. The returned slice has one error
// (or nil) per entry; it honours ctx's deadline.
func (r *Redis) SetMany(ctx context.Context, entries []Entry, now time.Time) []error {
	errs := make([]error, len(entries))
	c, err := r.Client()
	if err != nil {
		for i := range errs {
			errs[i] = err
		}
		return errs
	}
	cmds := make(rueidis.Commands, 0, 2+3*len(entries))
	cmds = append(cmds, c.B().Multi().Build())
	written := make([]int, 0, len(entries)) // entry index of each queued write
	for i, e := range entries {
		ttl := ttlFor(e.Record, now, r.opts.TTL)
		if ttl <= 0 {
			continue
		}
		expireAt := now.Add(ttl).UnixMilli()
		cmds = append(cmds,
			c.B().Del().Key(e.Key).Build(),
			encode(c.B(), e.Key, e.Record),
			c.B().Pexpireat().Key(e.Key).MillisecondsTimestamp(expireAt).Build(),
		)
		written = append(written, i)
	}
	if len(written) == 0 {
		return errs
	}
	cmds = append(cmds, c.B().Exec().Build())
	resps := c.DoMulti(ctx, cmds...)
	exec := resps[len(resps)-1]
	results, err := exec.ToArray()
	if err == nil && len(results) != 3*len(written) {
		err = fmt.Errorf("redis exec: %d replies for %d commands", len(results), 3*len(written))
	}
	if err != nil {
		// A queueing error (or a dropped connection) shows on the command
		// itself and makes EXEC fail: report the first one found.
		for _, r := range resps {
			if e := r.Error(); e != nil {
				err = e
				break
			}
		}
		for _, i := range written {
			errs[i] = fmt.Errorf("redis write: %w", err)
		}
		return errs
	}
	for j, i := range written {
		for _, res := range results[3*j : 3*j+3] {
			if e := res.Error(); e != nil {
				errs[i] = fmt.Errorf("redis write: %w", e)
				break
			}
		}
	}
	return errs
}

// Delete removes the entries under keys, returning how many existed.
func (r *Redis) Delete(ctx context.Context, keys ...string) (int64, error) {
	c, err := r.Client()
	if err != nil {
		return 0, err
	}
	n, err := c.Do(ctx, c.B().Del().Key(keys...).Build()).AsInt64()
	if err != nil {
		return 0, fmt.Errorf("redis del: %w", err)
	}
	return n, nil
}

func encode(b rueidis.Builder, key string, r *Record) rueidis.Completed {
	// The builder's intermediate types are internal to rueidis: := names them.
	h := b.Hset().Key(key).FieldValue().FieldValue(fID, r.ID).
		FieldValue(fUserID, r.UserID).
		FieldValue(fExpiresAt, encTime(r.ExpiresAt)).
		FieldValue(fLastActivityAt, encTime(r.LastActivityAt)).
		FieldValue(fCreatedAt, encTime(r.CreatedAt)).
		FieldValue(fEmail, r.Email)
	for _, f := range [...]struct {
		name string
		v    *string
	}{{fIPAddress, r.IPAddress}, {fUserAgent, r.UserAgent}, {fFirstName, r.FirstName}, {fLastName, r.LastName}, {fUsername, r.Username}} {
		if f.v != nil {
			h = h.FieldValue(f.name, *f.v)
		}
	}
	if r.DeletedAt != nil {
		h = h.FieldValue(fDeletedAt, encTime(*r.DeletedAt))
	}
	if r.BannedUntil != nil {
		h = h.FieldValue(fBannedUntil, encTime(*r.BannedUntil))
	}
	return h.Build()
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
