package tiers

import (
	"sync"
	"sync/atomic"
	"time"
)

// localTombs remembers, for a short while, the keys, sessions and users this
// instance invalidated, so that it does not believe a local copy of them that
// Redis has not yet told it to drop. While none is live, which is nearly
// always, a check is one atomic load and a clock read.
type localTombs struct {
	ttl time.Duration
	// liveUntil is when the last tombstone expires (Unix ns): past it, none
	// is live and no lookup is needed.
	liveUntil atomic.Int64
	mu        sync.Mutex
	until     map[string]time.Time // "k:"/"n:"+entry key, "u:"+user id
	pruneAt   int                  // map size at which expired entries are next swept
}

const minPruneAt = 64

func newLocalTombs(ttl time.Duration) *localTombs {
	return &localTombs{ttl: ttl, until: map[string]time.Time{}, pruneAt: minPruneAt}
}

func (t *localTombs) mark(id string) {
	if t.ttl <= 0 {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	now := time.Now()
	// Sweeping only when the map has doubled since the last sweep keeps a
	// burst of invalidations (a bulk ban) linear, not quadratic.
	if len(t.until) >= t.pruneAt {
		for k, u := range t.until {
			if now.After(u) {
				delete(t.until, k)
			}
		}
		t.pruneAt = max(minPruneAt, 2*len(t.until))
	}
	until := now.Add(t.ttl)
	t.until[id] = until
	t.liveUntil.Store(until.UnixNano())
}

// active reports whether what was read under key is tombstoned: a session
// by its token (its user: see userActive); a negative answer by its token,
// or by a session created with that token ("n:").
func (t *localTombs) active(key string, l Lookup) bool {
	if time.Now().UnixNano() > t.liveUntil.Load() {
		return false
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	now := time.Now()
	live := func(id string) bool {
		u, ok := t.until[id]
		return ok && now.Before(u)
	}
	switch {
	case live("k:" + key):
		return true
	case l.Negative:
		return live("n:" + key)
	}
	return false
}

// userActive reports whether this instance invalidated the user within the
// tombstone TTL: its local copy of the user's tombstone may be old.
func (t *localTombs) userActive(userID string) bool {
	if time.Now().UnixNano() > t.liveUntil.Load() {
		return false
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	u, ok := t.until["u:"+userID]
	return ok && time.Now().Before(u)
}
