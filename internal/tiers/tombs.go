package tiers

import (
	"sync"
	"sync/atomic"
	"time"
)

// localTombs remembers, for a short while, the keys, sessions and users this
// instance invalidated, so that it does not believe a local copy of them that
// Redis has not yet told it to drop. Checking costs one atomic load while
// none is held, which is nearly always.
type localTombs struct {
	ttl   time.Duration
	n     atomic.Int64 // tombstones held, expired or not
	mu    sync.Mutex
	until map[string]time.Time // "k:"/"n:"+hash, "s:"+session id, "u:"+user id
}

func newLocalTombs(ttl time.Duration) *localTombs {
	return &localTombs{ttl: ttl, until: map[string]time.Time{}}
}

func (t *localTombs) mark(id string) {
	if t.ttl <= 0 {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	now := time.Now()
	for k, u := range t.until { // keep the map small: it only holds seconds' worth
		if now.After(u) {
			delete(t.until, k)
		}
	}
	t.until[id] = now.Add(t.ttl)
	t.n.Store(int64(len(t.until)))
}

// active reports whether what was read under key is tombstoned: a session
// by its token, session or user; a negative answer by its token, or by a
// session created with that token ("n:").
func (t *localTombs) active(key string, l Lookup) bool {
	if t.n.Load() == 0 {
		return false
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	now := time.Now()
	live := func(id string) bool {
		u, ok := t.until[id]
		return ok && now.Before(u)
	}
	h := hashOf(key)
	switch {
	case live("k:" + h):
		return true
	case l.Negative:
		return live("n:" + h)
	case l.Record != nil:
		return live("s:"+l.Record.ID) || live("u:"+l.Record.UserID)
	}
	return false
}
