package tiers

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/redis/rueidis"

	"github.com/sessiond/sessiond/internal/devstack/devtest"
)

func TestMain(m *testing.M) { devtest.Main(m) }

func newTestRedis(t *testing.T, local bool) (*Redis, rueidis.Client) {
	t.Helper()
	url := devtest.RedisURL(t)
	opt, err := ClientOption(url, RedisOptions{LocalCache: local, LocalCacheBytes: 1 << 20}, nil)
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
	return NewRedis(c, RedisOptions{TTL: time.Minute, LocalCache: local, Fence: testFenceOptions()}, discard), raw
}

var discard = slog.New(slog.NewTextHandler(io.Discard, nil))

func testFenceOptions() FenceOptions {
	return FenceOptions{Timeout: 5 * time.Second, TombstoneTTL: time.Minute, TombstoneMargin: time.Second, LocalTombstoneTTL: time.Second}
}

// runFence runs r's fence until the test ends, as the server does.
func runFence(tb testing.TB, r *Redis) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); r.Fence().Run(ctx) }()
	tb.Cleanup(func() { cancel(); <-done })
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
		if err := r.Set(ctx, "session:k", rec, Stamp{ReadStart: now}); err != nil {
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
	if l, err := r.Get(ctx, "session:k"); err != nil || !l.Local {
		t.Errorf("second read: local=%v err=%v", l.Local, err)
	}
	// Missing: nil, no error.
	if l, err := r.Get(ctx, "session:missing"); l.Found() || err != nil {
		t.Errorf("missing key: %+v %v", l, err)
	}
}

// getEventually reads until the local copy reflects the last write: Redis
// delivers the invalidation after the reply to the write.
func getEventually(t *testing.T, r *Redis, key string, want *Record) (*Record, bool, error) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Second)
	for {
		l, err := r.Get(t.Context(), key)
		if err != nil || equalRecords(l.Record, want) || time.Now().After(deadline) {
			return l.Record, l.Local, err
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
	res, errs := r.SetMany(ctx, []Entry{{"session:live", live}, {"session:dead", dead}, {"session:wrong", live}}, Stamp{ReadStart: now})
	if res[0] != Written || res[1] != Skipped || errs[0] != nil || errs[1] != nil {
		t.Errorf("results %v, errs %v", res, errs)
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
	if err := raw.Do(ctx, raw.B().Hset().Key("session:bad").FieldValue().FieldValue("g", "0").FieldValue("id", "x").FieldValue("userId", "u").FieldValue("expiresAt", "soon").Build()).Error(); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Get(ctx, "session:bad"); err == nil {
		t.Error("a corrupt entry decoded without error")
	}
}

func TestRedisNotConnected(t *testing.T) {
	r := newRedis(RedisOptions{}, discard)
	if _, err := r.Get(context.Background(), "k"); !errors.Is(err, ErrRedisNotConnected) {
		t.Errorf("Get: %v", err)
	}
	if _, errs := r.SetMany(context.Background(), []Entry{{"k", &Record{}}}, Stamp{ReadStart: time.Now()}); !errors.Is(errs[0], ErrRedisNotConnected) {
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

// A write of data read before an invalidation is refused; after it (past
// the skew margin), it goes through.
func TestRedisWritesAfterInvalidation(t *testing.T) {
	r, raw := newTestRedis(t, true)
	r.opts.NegativeTTL = time.Minute
	f := r.Fence()
	ctx := t.Context()
	now := time.Now()
	rec := &Record{ID: "s1", UserID: "u1", ExpiresAt: now.Add(time.Hour), Email: "e"}
	before := Stamp{ReadStart: now.Add(-time.Millisecond)}
	after := Stamp{ReadStart: now.Add(2 * time.Second)} // past the margin
	exists := func(key string) bool {
		n, err := raw.Do(ctx, raw.B().Exists().Key(key).Build()).AsInt64()
		if err != nil {
			t.Fatal(err)
		}
		return n == 1
	}
	set := func(key string) func(st Stamp) (WriteResult, error) {
		return func(st Stamp) (WriteResult, error) {
			res, errs := r.SetMany(ctx, []Entry{{key, rec}}, st)
			return res[0], errs[0]
		}
	}
	tests := []struct {
		name  string
		drop  Batch
		write func(st Stamp) (WriteResult, error)
		key   string
	}{
		{"user invalidated", Batch{Users: []string{"u1"}}, set("session:a"), "session:a"},
		{"token invalidated", Batch{Keys: []string{"session:c"}}, set("session:c"), "session:c"},
		{"session created with the token: no negative", Batch{NewKeys: []string{"session:d"}},
			func(st Stamp) (WriteResult, error) { return r.SetNegative(ctx, "session:d", st) }, "session:d"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := f.Apply(ctx, tt.drop); err != nil {
				t.Fatal(err)
			}
			if res, err := tt.write(before); err != nil || res != Skipped || exists(tt.key) {
				t.Errorf("write of data read before: %v %v (exists %v), want Skipped", res, err, exists(tt.key))
			}
			if res, err := tt.write(after); err != nil || res != Written || !exists(tt.key) {
				t.Errorf("write of data read after: %v %v, want Written", res, err)
			}
		})
	}

	t.Run("a user drop deletes every entry of the user and nothing else", func(t *testing.T) {
		other := &Record{ID: "s9", UserID: "u9", ExpiresAt: now.Add(time.Hour), Email: "e"}
		if _, errs := r.SetMany(ctx, []Entry{{"session:u1a", rec}, {"session:u1b", rec}, {"session:u9", other}}, after); errs[0] != nil {
			t.Fatal(errs)
		}
		n, err := f.Apply(ctx, Batch{Users: []string{"u1"}})
		if err != nil || n < 2 || exists("session:u1a") || exists("session:u1b") || !exists("session:u9") {
			t.Errorf("dropped %d (%v); u1a %v u1b %v u9 %v", n, err, exists("session:u1a"), exists("session:u1b"), exists("session:u9"))
		}
	})

	t.Run("a new session is cached although its token's negative was just dropped", func(t *testing.T) {
		if _, err := f.Apply(ctx, Batch{NewKeys: []string{"session:e"}}); err != nil {
			t.Fatal(err)
		}
		other := &Record{ID: "s2", UserID: "u2", ExpiresAt: now.Add(time.Hour), Email: "e"} // no tombstones of its own
		if res, errs := r.SetMany(ctx, []Entry{{"session:e", other}}, before); res[0] != Written || errs[0] != nil {
			t.Errorf("%v %v, want Written", res[0], errs[0])
		}
		if n, err := f.Apply(ctx, Batch{NewKeys: []string{"session:e"}}); n != 0 || err != nil || !exists("session:e") {
			t.Errorf("a new-key drop removed a session entry: %d %v", n, err)
		}
	})

	t.Run("a generation bump drops everything and refuses old writers", func(t *testing.T) {
		if err := f.Resync(ctx, "test"); err != nil {
			t.Fatal(err)
		}
		if l, err := r.Get(ctx, "session:e"); err != nil || l.Found() {
			t.Errorf("entry of the old generation believed: %+v %v", l, err)
		}
		if res, _ := r.SetMany(ctx, []Entry{{"session:f", rec}}, after); res[0] != Skipped {
			t.Errorf("writer with the old generation: %v, want Skipped", res[0])
		}
		g, err := r.Gen(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if res, _ := r.SetMany(ctx, []Entry{{"session:f", rec}}, Stamp{ReadStart: after.ReadStart, Gen: g}); res[0] != Written {
			t.Errorf("writer with the new generation: %v, want Written", res[0])
		}
		if l, err := r.Get(ctx, "session:f"); err != nil || l.Record == nil {
			t.Errorf("entry of the new generation: %+v %v", l, err)
		}
	})
}

// Every time Postgres can hold survives the round trip through Redis:
// infinity, years past what Unix microseconds hold, NULL timestamps.
func TestRedisTimesRoundTrip(t *testing.T) {
	r, _ := newTestRedis(t, false)
	ctx := t.Context()
	far := time.Date(294276, 12, 31, 23, 59, 59, 999999000, time.UTC)
	early := time.Date(-4712, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, tt := range []struct {
		name string
		rec  *Record
	}{
		{"infinity", &Record{ID: "s", UserID: "u", ExpiresAt: Infinity, LastActivityAt: NegInfinity, BannedUntil: ptrTime(Infinity)}},
		{"past year 294246", &Record{ID: "s", UserID: "u", ExpiresAt: far, BannedUntil: ptrTime(far), DeletedAt: ptrTime(early)}},
		{"null times", &Record{ID: "s", UserID: "u", ExpiresAt: far}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			m := map[string]string{}
			f := encode(tt.rec)
			for i := 0; i < len(f); i += 2 {
				m[f[i]] = f[i+1]
			}
			got, err := decode(m)
			if err != nil || !equalRecords(got, tt.rec) {
				t.Errorf("decode(encode) = %+v, %v; want %+v", got, err, tt.rec)
			}
			if err := r.Set(ctx, "session:t", tt.rec, Stamp{ReadStart: time.Now()}); err != nil {
				t.Fatal(err)
			}
			if l, err := r.Get(ctx, "session:t"); err != nil || !equalRecords(l.Record, tt.rec) {
				t.Errorf("through redis: %+v %v", l.Record, err)
			}
		})
	}
}

func devtestRedisURL(tb testing.TB) string { return devtest.RedisURL(tb) }
