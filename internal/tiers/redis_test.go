package tiers

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
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
	return FenceOptions{Timeout: 5 * time.Second, TombstoneTTL: time.Minute, UserTombstoneTTL: 2 * time.Minute, TombstoneMargin: time.Second, LocalTombstoneTTL: time.Second}
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
		if _, err := r.Set(ctx, k("k"), rec, Stamp{ReadStart: now}); err != nil {
			t.Fatal(err)
		}
		got, _, err := getEventually(t, r, k("k"), rec)
		if err != nil {
			t.Fatal(err)
		}
		if !equalRecords(got, rec) {
			t.Errorf("got %+v\nwant %+v", got, rec)
		}
	}
	// A second read is served from process memory.
	if l, err := r.Get(ctx, k("k"), time.Second); err != nil || !l.Local {
		t.Errorf("second read: local=%v err=%v", l.Local, err)
	}
	// Missing: nil, no error.
	if l, err := r.Get(ctx, k("missing"), time.Second); l.Found() || err != nil {
		t.Errorf("missing key: %+v %v", l, err)
	}
}

// getEventually reads until the local copy reflects the last write: Redis
// delivers the invalidation after the reply to the write.
func getEventually(t *testing.T, r *Redis, key string, want *Record) (*Record, bool, error) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Second)
	for {
		l, err := r.Get(t.Context(), key, time.Second)
		if err != nil || equalRecords(l.Record, want) || time.Now().After(deadline) {
			return l.Record, l.Local, err
		}
		time.Sleep(time.Millisecond)
	}
}

// k is the entry key of a test token.
func k(token string) string { return TokenKey(token) }

func TestRedisSetManySkipsAndReportsEach(t *testing.T) {
	r, raw := newTestRedis(t, false)
	r.opts.NegativeTTL = time.Minute
	ctx := t.Context()
	now := time.Now()
	live := &Record{ID: "a", UserID: "u", ExpiresAt: now.Add(time.Hour), Email: "e"}
	dead := &Record{ID: "b", UserID: "u", ExpiresAt: now.Add(-time.Second), Email: "e"}
	undecidable := &Record{ID: "c", UserID: "u", Email: "e"} // NULL expires_at
	// A key of another type in the way (an older layout's hash, say) is
	// replaced.
	if err := raw.Do(ctx, raw.B().Hset().Key(k("wrong")).FieldValue().FieldValue("x", "y").Build()).Error(); err != nil {
		t.Fatal(err)
	}
	wrong := &Record{ID: "d", UserID: "w", ExpiresAt: now.Add(time.Hour), Email: "e"}
	res, errs := r.SetMany(ctx, []Entry{{k("live"), live}, {k("dead"), dead}, {k("undecidable"), undecidable}, {k("wrong"), wrong}, {"", live}}, Stamp{ReadStart: now})
	if res[0] != Written || res[1] != Written || res[2] != Skipped || res[3] != Written || res[4] != Skipped {
		t.Errorf("results %v, errs %v; want written, written (expired: cached briefly), skipped, written, skipped", res, errs)
	}
	if typ, _ := raw.Do(ctx, raw.B().Type().Key(k("wrong")).Build()).ToString(); typ != "string" {
		t.Errorf("the key in the way is a %s, want the entry", typ)
	}
	if pttl, _ := raw.Do(ctx, raw.B().Pttl().Key(k("dead")).Build()).AsInt64(); pttl <= 0 || pttl > r.opts.NegativeTTL.Milliseconds() {
		t.Errorf("an expired session lives %d ms, want at most the negative TTL", pttl)
	}
	if n, _ := raw.Do(ctx, raw.B().Exists().Key(k("undecidable")).Build()).AsInt64(); n != 0 {
		t.Error("an undecidable record was cached")
	}
}

// KeepCached leaves an entry written in the stamp's generation or a later
// one as it is (its data is as new or newer), and writes over an older
// generation's, which no reader believes.
func TestRedisKeepCached(t *testing.T) {
	r, raw := newTestRedis(t, false)
	ctx := t.Context()
	now := time.Now()
	rec := &Record{ID: "a", UserID: "u", ExpiresAt: now.Add(time.Hour), Email: "e"}
	for _, tt := range []struct {
		name        string
		held, stamp int64 // generations; held 0: nothing held
		want        WriteResult
	}{
		{"nothing held", 0, 5, Written},
		{"same generation", 5, 5, Kept},
		{"later generation held", 6, 5, Kept},
		{"earlier generation held", 4, 5, Written},
	} {
		t.Run(tt.name, func(t *testing.T) {
			key := k(tt.name)
			if tt.held > 0 {
				if _, err := r.Set(ctx, key, rec, Stamp{ReadStart: now.Add(-time.Second), Gen: tt.held}); err != nil {
					t.Fatal(err)
				}
			}
			res, err := r.Set(ctx, key, rec, Stamp{ReadStart: now, Gen: tt.stamp, KeepCached: true})
			if err != nil || res != tt.want {
				t.Fatalf("%v, %v; want %v", res, err, tt.want)
			}
			b, err := raw.Do(ctx, raw.B().Get().Key(key).Build()).AsBytes()
			if err != nil {
				t.Fatal(err)
			}
			h, _, err := decodeEntry(b)
			wantGen := tt.stamp
			if tt.want == Kept {
				wantGen = tt.held
			}
			if err != nil || h.gen != wantGen {
				t.Errorf("entry of generation %d (%v), want %d", h.gen, err, wantGen)
			}
		})
	}
}

func TestRedisCorruptEntryIsAnError(t *testing.T) {
	r, raw := newTestRedis(t, false)
	ctx := t.Context()
	for name, write := range map[string]rueidis.Completed{
		"garbage":             raw.B().Set().Key(k("bad")).Value("\x10\x00\x07").Build(),
		"another version":     raw.B().Set().Key(k("bad")).Value("\x20\x00").Build(),
		"another type of key": raw.B().Hset().Key(k("bad")).FieldValue().FieldValue("g", "0").Build(),
	} {
		if err := raw.Do(ctx, raw.B().Del().Key(k("bad")).Build()).Error(); err != nil {
			t.Fatal(err)
		}
		if err := raw.Do(ctx, write).Error(); err != nil {
			t.Fatal(err)
		}
		if l, err := r.Get(ctx, k("bad"), time.Second); err == nil || l.Found() {
			t.Errorf("%s: decoded without error: %+v", name, l)
		}
	}
}

func TestRedisNotConnected(t *testing.T) {
	r := newRedis(RedisOptions{}, discard)
	if _, err := r.Get(context.Background(), "k", time.Second); !errors.Is(err, ErrRedisNotConnected) {
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
		{"token invalidated", Batch{Keys: []string{k("c")}}, set(k("c")), k("c")},
		{"session created with the token: no negative", Batch{NewKeys: []string{k("d")}},
			func(st Stamp) (WriteResult, error) { return r.SetNegative(ctx, k("d"), st) }, k("d")},
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

	t.Run("fills of several stamps in one call", func(t *testing.T) {
		if _, err := f.Apply(ctx, Batch{Keys: []string{k("m1"), k("m4")}}); err != nil {
			t.Fatal(err)
		}
		if _, err := r.Set(ctx, k("m5"), rec, Stamp{ReadStart: now, Gen: 3}); err != nil {
			t.Fatal(err)
		}
		fills := []Fill{
			{k("m1"), rec, before}, // its token invalidated after its read: refused
			{k("m2"), nil, after},  // a negative
			{k("m3"), rec, after},  // nothing in the way
			{k("m4"), rec, after},  // invalidated before its read, but beside m1: the call checks m1's read start
			{k("m5"), rec, Stamp{ReadStart: after.ReadStart, Gen: 3, KeepCached: true}}, // held: kept
		}
		res, errs := r.SetFills(ctx, fills)
		want := []WriteResult{Skipped, Written, Written, Skipped, Kept}
		if !slices.Equal(res, want) || errors.Join(errs...) != nil {
			t.Fatalf("results %v (%v), want %v", res, errs, want)
		}
		for _, key := range []string{k("m2"), k("m3")} {
			b, err := raw.Do(ctx, raw.B().Get().Key(key).Build()).AsBytes()
			if err != nil {
				t.Fatal(err)
			}
			if h, _, err := decodeEntry(b); err != nil || h.readStart != after.ReadStart.UnixMilli() {
				t.Errorf("entry read at %d (%v), want its own stamp's %d", h.readStart, err, after.ReadStart.UnixMilli())
			}
		}
	})

	t.Run("a user drop makes every entry of the user read before it unbelieved, and nothing else", func(t *testing.T) {
		u := &Record{ID: "s8", UserID: "u8", ExpiresAt: now.Add(time.Hour), Email: "e"}
		other := &Record{ID: "s9", UserID: "u9", ExpiresAt: now.Add(time.Hour), Email: "e"}
		st := Stamp{ReadStart: time.Now().Add(-2 * time.Second)} // before the drop, past the margin
		if _, errs := r.SetMany(ctx, []Entry{{k("u8a"), u}, {k("u8b"), u}, {k("u9"), other}}, st); errs[0] != nil {
			t.Fatal(errs)
		}
		for _, key := range []string{k("u8a"), k("u9")} { // cached locally, the user's tombstone's absence too
			if l, err := r.Get(ctx, key, time.Second); err != nil || l.Record == nil {
				t.Fatalf("before the drop: %+v %v", l, err)
			}
		}
		if n, err := f.Apply(ctx, Batch{Users: []string{"u8"}}); err != nil || n != 1 {
			t.Fatalf("drop: %d %v", n, err)
		}
		for key, want := range map[string]bool{k("u8a"): false, k("u8b"): false, k("u9"): true} {
			if l, err := r.Get(ctx, key, time.Second); err != nil || (l.Record != nil) != want {
				t.Errorf("%s after the drop: believed %v (%v), want %v", key, l.Record != nil, err, want)
			}
		}
		if res, _ := r.SetMany(ctx, []Entry{{k("u8a"), u}}, Stamp{ReadStart: time.Now().Add(2 * time.Second)}); res[0] != Written {
			t.Fatal(res[0])
		}
		devtest.Eventually(t, 5*time.Second, func() error { // once Redis told us the local copy is old
			if l, err := r.Get(ctx, k("u8a"), time.Second); err != nil || l.Record == nil {
				return fmt.Errorf("an entry read after the drop is not believed: %+v %v", l, err)
			}
			return nil
		})
	})

	t.Run("a new session is cached although its token's negative was just dropped", func(t *testing.T) {
		if _, err := f.Apply(ctx, Batch{NewKeys: []string{k("e")}}); err != nil {
			t.Fatal(err)
		}
		other := &Record{ID: "s2", UserID: "u2", ExpiresAt: now.Add(time.Hour), Email: "e"} // no tombstones of its own
		if res, errs := r.SetMany(ctx, []Entry{{k("e"), other}}, before); res[0] != Written || errs[0] != nil {
			t.Errorf("%v %v, want Written", res[0], errs[0])
		}
		if n, err := f.Apply(ctx, Batch{NewKeys: []string{k("e")}}); n != 0 || err != nil || !exists(k("e")) {
			t.Errorf("a new-key drop removed a session entry: %d %v", n, err)
		}
	})

	t.Run("a generation bump drops everything, and what an old writer writes is not believed", func(t *testing.T) {
		if err := f.Resync(ctx, "test"); err != nil {
			t.Fatal(err)
		}
		if l, err := r.Get(ctx, k("e"), time.Second); err != nil || l.Found() {
			t.Errorf("entry of the old generation believed: %+v %v", l, err)
		}
		// A write cannot check the generation (on a cluster it lives in
		// another slot); every read does.
		if res, errs := r.SetMany(ctx, []Entry{{k("f"), rec}}, after); res[0] == Failed {
			t.Fatal(errs[0])
		}
		if l, err := r.Get(ctx, k("f"), time.Second); err != nil || l.Found() {
			t.Errorf("entry written with the old generation believed: %+v %v", l, err)
		}
		g, err := r.Gen(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if res, _ := r.SetMany(ctx, []Entry{{k("f"), rec}}, Stamp{ReadStart: after.ReadStart, Gen: g}); res[0] != Written {
			t.Errorf("writer with the new generation: %v, want Written", res[0])
		}
		// Believed once Redis has told this client its local copy (of the
		// old generation's entry) is old: it says so after the write's reply.
		devtest.Eventually(t, 5*time.Second, func() error {
			if l, err := r.Get(ctx, k("f"), time.Second); err != nil || l.Record == nil {
				return fmt.Errorf("entry of the new generation: %+v %v", l, err)
			}
			return nil
		})
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
			h, got, err := decodeEntry(encodeEntry(nil, 7, time.Now(), tt.rec))
			if err != nil || h.gen != 7 || !equalRecords(got, tt.rec) {
				t.Errorf("decodeEntry(encodeEntry) = %+v %+v, %v; want %+v", h, got, err, tt.rec)
			}
			if _, err := r.Set(ctx, k("t"), tt.rec, Stamp{ReadStart: time.Now()}); err != nil {
				t.Fatal(err)
			}
			if l, err := r.Get(ctx, k("t"), time.Second); err != nil || !equalRecords(l.Record, tt.rec) {
				t.Errorf("through redis: %+v %v", l.Record, err)
			}
		})
	}
}

func devtestRedisURL(tb testing.TB) string { return devtest.RedisURL(tb) }

// Cached answers what the process holds, and for anything else gives the
// generation a Postgres read begun before the round trip must carry.
func TestCachedAnswersOnlyFromProcessMemory(t *testing.T) {
	ctx := t.Context()
	r := trustedRedis(t, devtestRedisURL(t))
	gen, err := r.Gen(ctx)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now().UTC().Truncate(time.Microsecond)
	rec := &Record{ID: "s1", UserID: "u1", ExpiresAt: now.Add(time.Hour), LastActivityAt: now, CreatedAt: now, Email: "e@x"}
	if _, err := r.Set(ctx, k("held"), rec, Stamp{ReadStart: now, Gen: gen}); err != nil {
		t.Fatal(err)
	}
	// Set may have dialled a connection, which the fence distrusts until it
	// is verified (and Cached then answers "distrusted").
	waitTrusted(t, r.Fence(), true)
	if l, ok := r.Cached(ctx, k("held")); ok {
		t.Fatalf("never read: Cached answered %+v", l)
	}
	deadline := time.Now().Add(2 * time.Second)
	for { // until the process holds it (a read through, then Redis's invalidation of the fill has come)
		if l, err := r.Get(ctx, k("held"), time.Second); err == nil && l.Local && equalRecords(l.Record, rec) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("never held locally")
		}
		time.Sleep(time.Millisecond)
	}
	if l, ok := r.Cached(ctx, k("held")); !ok || !l.Local || !equalRecords(l.Record, rec) {
		t.Errorf("held: Cached = %+v, %v; want the record, local", l, ok)
	}
	if l, ok := r.Cached(ctx, k("unknown")); ok || l.Gen != gen || l.Found() {
		t.Errorf("unknown: Cached = %+v, %v; want not ok with generation %d", l, ok, gen)
	}
}

// trustedRedis is the L1 tier on url as the server builds it (client-side
// cache and memo, its fence running), once its fence trusts the cache.
func trustedRedis(t testing.TB, url string) *Redis {
	t.Helper()
	r, err := ConnectRedis(t.Context(), url, RedisOptions{TTL: time.Minute, LocalCache: true, LocalCacheBytes: 1 << 20, Fence: testFenceOptions()}, discard)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Close)
	runFence(t, r)
	for !r.Fence().Trusted() { // the first verification bumps the generation
		if err := r.Fence().Verify(t.Context()); err != nil {
			t.Fatal(err)
		}
	}
	return r
}
