package tiers

import (
	"hash/maphash"
	"sync"
	"time"
)

// memo keeps, beside rueidis's client-side cache, the decoded form of what
// that cache holds, so that a local hit neither calls into rueidis (and
// needs no deadline) nor parses an entry: the hot path is a few map lookups.
// It is kept coherent exactly as rueidis's own cache is: Redis's
// invalidation messages (which rueidis hands to OnInvalidations) delete what
// they name, a dropped connection or a flush clears it all, and every value
// expires no later than rueidis's copy would (the key's absolute expiry, the
// client-side TTL). A value read before an invalidation of its bucket is not
// stored: each bucket counts the invalidations it saw, and an insert carries
// the count read before the Redis read began.
type memo struct {
	seed    maphash.Seed
	buckets [memoBuckets]memoBucket
	max     int // values per bucket
}

const memoBuckets = 256

type memoBucket struct {
	mu    sync.Mutex
	epoch uint64
	m     map[string]memoValue
}

// memoValue is one key's decoded value.
type memoValue struct {
	expires int64 // Unix ns
	// For an entry: its head, and the record (nil: a negative entry, or
	// absent when missing). For the generation or a tombstone: num, or
	// absent.
	head    entryHead
	rec     *Record
	userKey string // the record's user tombstone key, built once
	num     int64
	absent  bool
}

func newMemo(maxValues int) *memo {
	m := &memo{seed: maphash.MakeSeed(), max: max(maxValues/memoBuckets, 16)}
	for i := range m.buckets {
		m.buckets[i].m = map[string]memoValue{}
	}
	return m
}

func (m *memo) bucket(key string) *memoBucket {
	return &m.buckets[maphash.String(m.seed, key)%memoBuckets]
}

// epoch is the bucket's count of invalidations: read it before reading key
// from Redis, and give it to put.
func (m *memo) epoch(key string) uint64 {
	b := m.bucket(key)
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.epoch
}

// get returns key's value unless it has expired.
func (m *memo) get(key string, now int64) (memoValue, bool) {
	b := m.bucket(key)
	b.mu.Lock()
	v, ok := b.m[key]
	b.mu.Unlock()
	return v, ok && now < v.expires
}

// put stores key's value, read from Redis when the bucket's epoch was
// epoch, unless an invalidation of the bucket came since.
func (m *memo) put(key string, epoch uint64, v memoValue) {
	b := m.bucket(key)
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.epoch != epoch {
		return
	}
	if len(b.m) >= m.max {
		for k := range b.m { // make room: any one will do
			delete(b.m, k)
			break
		}
	}
	b.m[key] = v
}

// invalidate forgets keys; nil forgets everything (a connection closed, or
// Redis flushed).
func (m *memo) invalidate(keys []string) {
	if keys == nil {
		for i := range m.buckets {
			b := &m.buckets[i]
			b.mu.Lock()
			b.epoch++
			clear(b.m)
			b.mu.Unlock()
		}
		return
	}
	for _, k := range keys {
		b := m.bucket(k)
		b.mu.Lock()
		b.epoch++
		delete(b.m, k)
		b.mu.Unlock()
	}
}

// until is the memo expiry of a value read at now that Redis keeps until
// expireAt (zero: no expiry of its own) and rueidis keeps locally for ttl.
func until(now time.Time, ttl time.Duration, expireAt time.Time) int64 {
	t := now.Add(ttl)
	if !expireAt.IsZero() && expireAt.Before(t) {
		t = expireAt
	}
	return t.UnixNano()
}
