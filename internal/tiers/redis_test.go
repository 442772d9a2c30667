package tiers

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/redis/rueidis"

	"github.com/sessiond/sessiond/internal/devstack/devtest"
)

func TestMain(m *testing.M) { devtest.Main(m) }

func newTestRedis(t *testing.T, local bool) (*Redis, rueidis.Client) {
	t.Helper()
	url := devtest.RedisURL(t)
	opt, err := ClientOption(url, RedisOptions{LocalCache: local, LocalCacheBytes: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	c, err := rueidis.NewClient(opt)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	raw, err := rueidis.NewClient(rueidis.MustParseURL(url))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(raw.Close)
	return NewRedis(c, RedisOptions{TTL: time.Minute, LocalCache: local}), raw
}

func TestRedisRoundTrip(t *testing.T) {
	r, _ := newTestRedis(t, true)
	ctx := t.Context()
	now := time.Now().UTC().Truncate(time.Microsecond)
	s := func(v string) *string { return &v }
	full := &Record{ID: "s1", UserID: "u1", ExpiresAt: now.Add(time.Hour), LastActivityAt: now, CreatedAt: now.Add(-time.Hour),
		IPAddress: s("::1"), UserAgent: s("ua"), Email: "e@x", FirstName: s("F"), LastName: s("L"), Username: s("u"),
		DeletedAt: ptrTime(now.Add(-time.Minute)), BannedUntil: ptrTime(now.Add(time.Minute))}
	bare := &Record{ID: "s1", UserID: "u1", ExpiresAt: now.Add(time.Hour), LastActivityAt: now, CreatedAt: now, Email: "e@x"}

	for _, rec := range []*Record{full, bare} { // bare replaces full: no field may linger
		if err := r.Set(ctx, "session:k", rec, now); err != nil {
			t.Fatal(err)
		}
		got, _, err := getEventually(t, r, "session:k", rec)
		if err != nil {
			t.Fatal(err)
		}
		if !equalRecords(got, rec) {
			t.Errorf("got %+v\nwant %+v", got, rec)
		}
	}
	// A second read is served from process memory.
	if _, local, err := r.Get(ctx, "session:k"); err != nil || !local {
		t.Errorf("second read: local=%v err=%v", local, err)
	}
	// Missing: nil, no error.
	if got, _, err := r.Get(ctx, "session:missing"); got != nil || err != nil {
		t.Errorf("missing key: %v %v", got, err)
	}
}

// getEventually reads until the local copy reflects the last write: Redis
// delivers the invalidation after the reply to the write.
func getEventually(t *testing.T, r *Redis, key string, want *Record) (*Record, bool, error) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Second)
	for {
		got, local, err := r.Get(t.Context(), key)
		if err != nil || equalRecords(got, want) || time.Now().After(deadline) {
			return got, local, err
		}
		time.Sleep(time.Millisecond)
	}
}

func TestRedisSetManySkipsExpiredAndReportsEach(t *testing.T) {
	r, raw := newTestRedis(t, false)
	ctx := t.Context()
	now := time.Now()
	live := &Record{ID: "a", UserID: "u", ExpiresAt: now.Add(time.Hour), Email: "e"}
	dead := &Record{ID: "b", UserID: "u", ExpiresAt: now.Add(-time.Second), Email: "e"}
	// A key of another type makes its HSET fail inside EXEC.
	if err := raw.Do(ctx, raw.B().Set().Key("session:wrong").Value("x").Build()).Error(); err != nil {
		t.Fatal(err)
	}
	errs := r.SetMany(ctx, []Entry{{"session:live", live}, {"session:dead", dead}, {"session:wrong", live}}, now)
	if errs[0] != nil || errs[1] != nil {
		t.Errorf("errs = %v", errs)
	}
	// DEL inside the transaction replaces even a key of another type.
	if n, _ := raw.Do(ctx, raw.B().Exists().Key("session:dead").Build()).AsInt64(); n != 0 {
		t.Error("an expired session was written")
	}
	if typ, _ := raw.Do(ctx, raw.B().Type().Key("session:wrong").Build()).ToString(); typ != "hash" || errs[2] != nil {
		t.Errorf("entry over a string key: type %s, err %v", typ, errs[2])
	}
}

func TestRedisCorruptEntryIsAnError(t *testing.T) {
	r, raw := newTestRedis(t, false)
	ctx := t.Context()
	if err := raw.Do(ctx, raw.B().Hset().Key("session:bad").FieldValue().FieldValue("id", "x").FieldValue("userId", "u").FieldValue("expiresAt", "soon").Build()).Error(); err != nil {
		t.Fatal(err)
	}
	if _, _, err := r.Get(ctx, "session:bad"); err == nil {
		t.Error("a corrupt entry decoded without error")
	}
}

func TestRedisNotConnected(t *testing.T) {
	r := &Redis{ready: make(chan struct{})}
	if _, _, err := r.Get(context.Background(), "k"); !errors.Is(err, ErrRedisNotConnected) {
		t.Errorf("Get: %v", err)
	}
	if errs := r.SetMany(context.Background(), []Entry{{"k", &Record{}}}, time.Now()); !errors.Is(errs[0], ErrRedisNotConnected) {
		t.Errorf("SetMany: %v", errs)
	}
}

func ptrTime(t time.Time) *time.Time { return &t }

func equalRecords(a, b *Record) bool {
	if a == nil || b == nil {
		return a == b
	}
	eqS := func(x, y *string) bool { return (x == nil) == (y == nil) && (x == nil || *x == *y) }
	eqT := func(x, y *time.Time) bool { return (x == nil) == (y == nil) && (x == nil || x.Equal(*y)) }
	return a.ID == b.ID && a.UserID == b.UserID && a.Email == b.Email &&
		a.ExpiresAt.Equal(b.ExpiresAt) && a.LastActivityAt.Equal(b.LastActivityAt) && a.CreatedAt.Equal(b.CreatedAt) &&
		eqS(a.IPAddress, b.IPAddress) && eqS(a.UserAgent, b.UserAgent) && eqS(a.FirstName, b.FirstName) &&
		eqS(a.LastName, b.LastName) && eqS(a.Username, b.Username) && eqT(a.DeletedAt, b.DeletedAt) && eqT(a.BannedUntil, b.BannedUntil)
}
