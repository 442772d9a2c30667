package server_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	sessiondv1 "github.com/sessiond/sessiond/gen/sessiond/v1"
	"github.com/sessiond/sessiond/internal/config"
	"github.com/sessiond/sessiond/internal/devstack/devtest"
	"github.com/sessiond/sessiond/internal/server"
	"github.com/sessiond/sessiond/internal/tiers"
)

// warm calls WarmCache and collects the whole stream.
func (h *harness) warm(ctx context.Context, req *sessiondv1.WarmCacheRequest) ([]*sessiondv1.WarmCacheProgress, error) {
	stream, err := h.client.WarmCache(ctx, req)
	if err != nil {
		return nil, err
	}
	var msgs []*sessiondv1.WarmCacheProgress
	for {
		m, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return msgs, nil
		}
		if err != nil {
			return msgs, err
		}
		msgs = append(msgs, m)
	}
}

func (h *harness) mustWarm(req *sessiondv1.WarmCacheRequest) []*sessiondv1.WarmCacheProgress {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(h.t.Context(), 30*time.Second)
	defer cancel()
	msgs, err := h.warm(ctx, req)
	if err != nil {
		h.t.Fatalf("WarmCache: %v", err)
	}
	if len(msgs) == 0 || !msgs[len(msgs)-1].GetDone() {
		h.t.Fatalf("WarmCache stream did not end with done=true: %v", msgs)
	}
	return msgs
}

func (h *harness) cachedKeys() []string {
	h.t.Helper()
	return h.keys(tiers.KeyPrefix + "*")
}

// keys lists the keys matching pattern on every node (a cluster's keys are
// spread over its masters).
func (h *harness) keys(pattern string) []string {
	h.t.Helper()
	var all []string
	for _, n := range h.redis.Nodes() {
		keys, err := n.Do(h.t.Context(), n.B().Keys().Pattern(pattern).Build()).AsStrSlice()
		if err != nil {
			h.t.Fatal(err)
		}
		all = append(all, keys...)
	}
	slices.Sort(all)
	return slices.Compact(all)
}

func keyOf(s session) string { return tiers.Key(tiers.TokenHash(s.token)) }

func delay(d time.Duration) *durationpb.Duration { return durationpb.New(d) }

// addActive adds n valid sessions, the i-th last active i minutes ago.
func (h *harness) addActive(n int) []session {
	u := h.addUser(user{})
	var out []session
	for i := range n {
		out = append(out, h.addSession(u, session{lastActivity: time.Now().Add(-time.Duration(i+1) * time.Minute)}))
	}
	return out
}

func TestStartupWarmGatesHealth(t *testing.T) {
	h := prepare(t, devtest.Database(t), devtest.RedisURL(t), func(c *config.Config) {
		c.WarmOnStart = true
		c.WarmBatchSize = 1
		c.WarmBatchDelay = 100 * time.Millisecond
	})
	sessions := h.addActive(4)
	h.run()

	// Watch both names from the start: each must see NOT_SERVING, then SERVING.
	watches := map[string]healthpb.Health_WatchClient{}
	for _, svc := range []string{"", server.ServiceName} {
		w, err := h.health.Watch(t.Context(), &healthpb.HealthCheckRequest{Service: svc})
		if err != nil {
			t.Fatal(err)
		}
		first, err := w.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if first.GetStatus() != healthpb.HealthCheckResponse_NOT_SERVING {
			// The run takes 300 ms at least; SERVING first means health did
			// not wait for it.
			t.Fatalf("%q was %v before the startup warm ended", svc, first.GetStatus())
		}
		watches[svc] = w
	}
	for svc, w := range watches {
		next, err := w.Recv()
		if err != nil || next.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			t.Fatalf("%q then %v, %v; want SERVING", svc, next.GetStatus(), err)
		}
	}
	// SERVING came only after every session was warmed.
	if got, want := len(h.cachedKeys()), len(sessions); got != want {
		t.Errorf("%d keys cached when SERVING, want %d", got, want)
	}
	st, err := h.client.GetStats(t.Context(), &sessiondv1.GetStatsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if lw := st.GetLastWarming(); lw.GetOutcome() != sessiondv1.WarmOutcome_WARM_OUTCOME_COMPLETED || lw.GetWarmed() != 4 || lw.GetFinishedAt() == nil {
		t.Errorf("last warming: %v", lw)
	}
}

func TestStartupWarmWaitsForPostgres(t *testing.T) {
	pg := devtest.OwnPostgres(t)
	dbURL, err := pg.CreateDatabase(t.Context(), "sessiond_startup")
	if err != nil {
		t.Fatal(err)
	}
	h := prepare(t, dbURL, devtest.RedisURL(t), func(c *config.Config) {
		c.WarmOnStart = true
		c.PostgresTimeout = 500 * time.Millisecond
	})
	h.addActive(2)
	if err := pg.Kill(); err != nil {
		t.Fatal(err)
	}
	h.run()
	watch, err := h.health.Watch(t.Context(), &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if m, err := watch.Recv(); err != nil || m.GetStatus() != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Fatalf("with postgres down: %v %v, want NOT_SERVING", m.GetStatus(), err)
	}
	if err := pg.Restart(t.Context()); err != nil {
		t.Fatal(err)
	}
	// The retry (backoff up to 10 s) gets through once postgres is back.
	if m, err := watch.Recv(); err != nil || m.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("after postgres came back: %v %v, want SERVING", m.GetStatus(), err)
	}
	if n := len(h.cachedKeys()); n != 2 {
		t.Errorf("%d keys warmed, want 2", n)
	}
}

func TestStartupWarmWithRedisDownStillServes(t *testing.T) {
	rs := devtest.OwnRedis(t)
	h := prepare(t, devtest.Database(t), rs.URL(), func(c *config.Config) { c.WarmOnStart = true })
	s := h.addActive(1)[0]
	if err := rs.Kill(); err != nil {
		t.Fatal(err)
	}
	h.run()
	eventually(t, 10*time.Second, func() error {
		r, err := h.health.Check(t.Context(), &healthpb.HealthCheckRequest{})
		if err != nil {
			return err
		}
		if r.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			return errors.New(r.GetStatus().String())
		}
		return nil
	})
	if r := h.mustValidate(s.token); !r.GetValid() || r.GetSource() != sessiondv1.Source_SOURCE_POSTGRES {
		t.Errorf("with redis down: %v", r)
	}
	st, err := h.client.GetStats(t.Context(), &sessiondv1.GetStatsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if st.GetLastWarming().GetOutcome() != sessiondv1.WarmOutcome_WARM_OUTCOME_FAILED || st.GetCache().GetEnabled() {
		t.Errorf("stats: warming %v, cache enabled %v; want FAILED and disabled", st.GetLastWarming(), st.GetCache().GetEnabled())
	}
}

// A warmed entry and an entry filled by a read are the same bytes with the
// same expiry rule.
func TestWarmedEntryEqualsFilledEntry(t *testing.T) {
	h := start(t, devtest.Database(t), devtest.RedisURL(t))
	full := h.addUser(user{first: str("Ada"), last: str("L"), username: str("ada"), bannedUntil: time.Now().Add(-time.Hour)})
	bare := h.addUser(user{})
	sessions := []session{
		h.addSession(full, session{ip: str("2001:db8::7"), ua: str("UA/1")}),
		h.addSession(bare, session{expiresAt: time.Now().Add(90 * time.Second)}),
	}
	h.mustWarm(&sessiondv1.WarmCacheRequest{})
	warmed := map[string]string{}
	for _, s := range sessions {
		warmed[s.id] = h.entry(keyOf(s))
		if _, err := h.redis.Do(t.Context(), h.redis.B().Del().Key(keyOf(s)).Build()).AsInt64(); err != nil {
			t.Fatal(err)
		}
	}
	for _, s := range sessions {
		if r := h.mustValidate(s.token); r.GetSource() != sessiondv1.Source_SOURCE_POSTGRES {
			t.Fatalf("after DEL, answered from %v", r.GetSource())
		}
		h.filled()
		filled := h.entry(keyOf(s))
		if warmed[s.id] != filled {
			t.Errorf("session %s:\nwarmed %v\nfilled %v", s.id, warmed[s.id], filled)
		}
	}
}

// entry returns a cached entry's record and its expiry, rounded to
// seconds.
func (h *harness) entry(key string) string {
	h.t.Helper()
	v, err := h.redis.Do(h.t.Context(), h.redis.B().Get().Key(key).Build()).AsBytes()
	if err != nil || len(v) == 0 {
		h.t.Fatalf("no entry under %s: %v", key, err)
	}
	rec, _, err := tiers.EntryRecord(v)
	if err != nil {
		h.t.Fatal(err)
	}
	pttl, err := h.redis.Do(h.t.Context(), h.redis.B().Pttl().Key(key).Build()).AsInt64()
	if err != nil {
		h.t.Fatal(err)
	}
	j, err := json.Marshal(rec) // pointers rendered as their values
	if err != nil {
		h.t.Fatal(err)
	}
	return fmt.Sprintf("%s (ttl %d s)", j, (pttl+500)/1000)
}

func TestWarmFilters(t *testing.T) {
	h := start(t, devtest.Database(t), devtest.RedisURL(t))
	now := time.Now()
	ok := h.addUser(user{})
	lapsed := h.addUser(user{bannedUntil: now.Add(-time.Minute)})
	banned := h.addUser(user{bannedUntil: now.Add(time.Hour)})
	deleted := h.addUser(user{deletedAt: now.Add(-time.Minute)})
	newest := h.addSession(ok, session{lastActivity: now.Add(-1 * time.Minute)})
	second := h.addSession(lapsed, session{lastActivity: now.Add(-2 * time.Minute)})
	third := h.addSession(ok, session{lastActivity: now.Add(-3 * time.Hour)})
	h.addSession(ok, session{lastActivity: now.Add(-25 * time.Hour)})                                // outside the window
	h.addSession(ok, session{lastActivity: now.Add(-time.Minute), expiresAt: now.Add(-time.Second)}) // expired
	h.addSession(banned, session{lastActivity: now.Add(-time.Minute)})
	h.addSession(deleted, session{lastActivity: now.Add(-time.Minute)})

	for _, tt := range []struct {
		name  string
		count int32
		want  []session
	}{
		{"count 2: the two most recent", 2, []session{newest, second}},
		{"default count: every warmable one", 0, []session{newest, second, third}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			// Only the entries go (a FLUSHALL would make the fence resync,
			// and a warm racing that resync would rightly write nothing).
			for _, k := range h.cachedKeys() {
				if err := h.redis.Do(t.Context(), h.redis.B().Del().Key(k).Build()).Error(); err != nil {
					t.Fatal(err)
				}
			}
			msgs := h.mustWarm(&sessiondv1.WarmCacheRequest{Count: tt.count})
			last := msgs[len(msgs)-1]
			if int(last.GetTotal()) != len(tt.want) || int(last.GetWarmed()) != len(tt.want) || last.GetEstimatedHitRate() != 100 {
				t.Errorf("last message %v, want total=warmed=%d", last, len(tt.want))
			}
			var want []string
			for _, s := range tt.want {
				want = append(want, keyOf(s))
			}
			slices.Sort(want)
			if got := h.cachedKeys(); !slices.Equal(got, want) {
				t.Errorf("cached %v, want %v", got, want)
			}
		})
	}
}

func TestWarmEstimateWritesNothing(t *testing.T) {
	// A run warms at most 2; the estimate says how many could be warmed.
	h := start(t, devtest.Database(t), devtest.RedisURL(t), func(c *config.Config) { c.WarmCount = 2 })
	h.addActive(5)
	for _, tt := range []struct {
		count int32
		want  int32
	}{{0, 5}, {3, 3}} {
		msgs := h.mustWarm(&sessiondv1.WarmCacheRequest{EstimateOnly: true, Count: tt.count})
		if len(msgs) != 1 || msgs[0].GetTotal() != tt.want || msgs[0].GetWarmed() != 0 {
			t.Errorf("count %d: %v, want one message with total %d", tt.count, msgs, tt.want)
		}
	}
	if keys := h.cachedKeys(); len(keys) != 0 {
		t.Errorf("an estimate wrote %d keys", len(keys))
	}
	if _, ok := h.lastWarming(); ok {
		t.Error("an estimate was recorded as a run")
	}
}

func (h *harness) lastWarming() (*sessiondv1.WarmingRun, bool) {
	h.t.Helper()
	st, err := h.client.GetStats(h.t.Context(), &sessiondv1.GetStatsRequest{})
	if err != nil {
		h.t.Fatal(err)
	}
	return st.GetLastWarming(), st.GetLastWarming() != nil
}

func TestWarmProgressAddsUp(t *testing.T) {
	h := start(t, devtest.Database(t), devtest.RedisURL(t))
	h.addActive(7)
	msgs := h.mustWarm(&sessiondv1.WarmCacheRequest{BatchSize: 3, BatchDelay: delay(0)})
	// First: the total; then one per batch (3, 3, 1); then done.
	if len(msgs) != 5 {
		t.Fatalf("%d messages, want 5: %v", len(msgs), msgs)
	}
	if m := msgs[0]; m.GetTotal() != 7 || m.GetWarmed() != 0 || m.GetDone() {
		t.Errorf("first message %v", m)
	}
	for i, want := range []int32{3, 6, 7} {
		if m := msgs[i+1]; m.GetWarmed() != want || m.GetBatches() != int32(i+1) || m.GetTotal() != 7 || m.GetDone() {
			t.Errorf("batch %d: %v, want warmed %d", i+1, m, want)
		}
	}
	last := msgs[4]
	if !last.GetDone() || last.GetWarmed()+last.GetFailed() != last.GetTotal() || last.GetOutcome() != sessiondv1.WarmOutcome_WARM_OUTCOME_COMPLETED || last.GetElapsed().AsDuration() <= 0 {
		t.Errorf("last message %v", last)
	}
	for _, m := range msgs {
		if m.GetRunId() != last.GetRunId() || m.GetRunId() == "" {
			t.Errorf("run ids differ: %q vs %q", m.GetRunId(), last.GetRunId())
		}
	}
}

func TestConcurrentWarmCallsShareOneRun(t *testing.T) {
	h := start(t, devtest.Database(t), devtest.RedisURL(t))
	h.addActive(4)
	slow := &sessiondv1.WarmCacheRequest{BatchSize: 1, BatchDelay: delay(100 * time.Millisecond)}
	first, err := h.client.WarmCache(t.Context(), slow)
	if err != nil {
		t.Fatal(err)
	}
	m, err := first.Recv()
	if err != nil {
		t.Fatal(err)
	}
	// The second asks for a different count: it joins the running run anyway.
	second := h.mustWarm(&sessiondv1.WarmCacheRequest{Count: 1})
	rest, err := drain(first)
	if err != nil {
		t.Fatal(err)
	}
	last1, last2 := rest[len(rest)-1], second[len(second)-1]
	if m.GetRunId() != last2.GetRunId() || last1.GetRunId() != last2.GetRunId() {
		t.Errorf("two runs: %q and %q", m.GetRunId(), last2.GetRunId())
	}
	if last1.GetWarmed() != 4 || last2.GetWarmed() != 4 {
		t.Errorf("warmed %d and %d, want 4 for both", last1.GetWarmed(), last2.GetWarmed())
	}
}

func drain(s grpc.ServerStreamingClient[sessiondv1.WarmCacheProgress]) ([]*sessiondv1.WarmCacheProgress, error) {
	var out []*sessiondv1.WarmCacheProgress
	for {
		m, err := s.Recv()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return out, err
		}
		out = append(out, m)
	}
}

func TestWarmTimeoutStopsTheRun(t *testing.T) {
	h := start(t, devtest.Database(t), devtest.RedisURL(t), func(c *config.Config) { c.WarmTimeout = 350 * time.Millisecond })
	h.addActive(10)
	msgs := h.mustWarm(&sessiondv1.WarmCacheRequest{BatchSize: 1, BatchDelay: delay(100 * time.Millisecond)})
	last := msgs[len(msgs)-1]
	if last.GetOutcome() != sessiondv1.WarmOutcome_WARM_OUTCOME_TIMED_OUT || last.GetWarmed() == 0 || last.GetWarmed() >= 10 {
		t.Errorf("last message %v, want TIMED_OUT with some but not all warmed", last)
	}
	if n := int32(len(h.cachedKeys())); n != last.GetWarmed() {
		t.Errorf("%d keys cached, run reports %d warmed", n, last.GetWarmed())
	}
}

func TestWarmCancellation(t *testing.T) {
	h := start(t, devtest.Database(t), devtest.RedisURL(t))
	h.addActive(10)
	slow := &sessiondv1.WarmCacheRequest{BatchSize: 1, BatchDelay: delay(100 * time.Millisecond)}

	t.Run("the only watcher hangs up: the run stops", func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		stream, err := h.client.WarmCache(ctx, slow)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := stream.Recv(); err != nil {
			t.Fatal(err)
		}
		cancel()
		eventually(t, 5*time.Second, func() error {
			lw, _ := h.lastWarming()
			if lw.GetOutcome() != sessiondv1.WarmOutcome_WARM_OUTCOME_CANCELED {
				return fmt.Errorf("outcome %v", lw.GetOutcome())
			}
			if lw.GetWarmed() >= 10 {
				return fmt.Errorf("warmed %d: it did not stop", lw.GetWarmed())
			}
			return nil
		})
	})

	t.Run("one of two watchers hangs up: the run goes on", func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		leaver, err := h.client.WarmCache(ctx, slow)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := leaver.Recv(); err != nil {
			t.Fatal(err)
		}
		stayer, err := h.client.WarmCache(t.Context(), slow)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := stayer.Recv(); err != nil { // it has joined
			t.Fatal(err)
		}
		cancel()
		rest, err := drain(stayer)
		if err != nil {
			t.Fatal(err)
		}
		if last := rest[len(rest)-1]; last.GetOutcome() != sessiondv1.WarmOutcome_WARM_OUTCOME_COMPLETED || last.GetWarmed() != 10 {
			t.Errorf("last %v, want COMPLETED with 10 warmed", last)
		}
	})
}

func TestWarmWithRedisDyingMidRun(t *testing.T) {
	rs := devtest.OwnRedis(t)
	h := start(t, devtest.Database(t), rs.URL())
	h.addActive(10)
	stream, err := h.client.WarmCache(t.Context(), &sessiondv1.WarmCacheRequest{BatchSize: 1, BatchDelay: delay(100 * time.Millisecond)})
	if err != nil {
		t.Fatal(err)
	}
	for range 2 { // the total, then a first batch
		if _, err := stream.Recv(); err != nil {
			t.Fatal(err)
		}
	}
	if err := rs.Kill(); err != nil {
		t.Fatal(err)
	}
	rest, err := drain(stream)
	if err != nil {
		t.Fatal(err)
	}
	last := rest[len(rest)-1]
	if last.GetOutcome() != sessiondv1.WarmOutcome_WARM_OUTCOME_FAILED || last.GetError() == "" || last.GetWarmed() >= 10 {
		t.Errorf("last %v, want FAILED with an error", last)
	}
}

// An application migration that changes a column the warming query
// returns does not fail the next run: the query is not kept prepared
// across runs (a kept one would be refused once per pooled connection).
func TestWarmAfterAColumnChangesType(t *testing.T) {
	h := start(t, devtest.Database(t), devtest.RedisURL(t), func(c *config.Config) { c.PoolSize = 1 })
	h.addActive(3)
	for i, migrate := range []string{"", `ALTER TABLE platform.user_sessions ALTER COLUMN user_agent TYPE varchar(512)`} {
		if migrate != "" {
			h.exec(migrate)
		}
		msgs := h.mustWarm(&sessiondv1.WarmCacheRequest{BatchDelay: durationpb.New(0)})
		if last := msgs[len(msgs)-1]; last.GetOutcome() != sessiondv1.WarmOutcome_WARM_OUTCOME_COMPLETED || last.GetTotal() != 3 {
			t.Errorf("run %d: %v, want completed with 3 found", i+1, last)
		}
	}
}

func TestWarmCacheBadRequests(t *testing.T) {
	h := start(t, devtest.Database(t), devtest.RedisURL(t))
	for _, req := range []*sessiondv1.WarmCacheRequest{
		{Count: -1},
		{BatchSize: -5},
		{BatchDelay: durationpb.New(-time.Second)},
	} {
		if _, err := h.warm(t.Context(), req); status.Code(err) != codes.InvalidArgument {
			t.Errorf("%v: %v, want InvalidArgument", req, err)
		}
	}
}

func TestGetStatsCountsTraffic(t *testing.T) {
	h := start(t, devtest.Database(t), devtest.RedisURL(t), func(c *config.Config) { c.PoolSize = 3 })
	s := h.addActive(2)
	h.mustValidate(s[0].token) // miss
	h.cached(s[0].token)
	h.mustValidate(s[0].token)  // hit (local or redis)
	h.mustValidate(s[1].token)  // miss
	h.mustValidate(newToken(t)) // miss: not found
	st, err := h.client.GetStats(t.Context(), &sessiondv1.GetStatsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	c := st.GetCache()
	if c.GetHits() != 1 || c.GetMisses() != 3 || c.GetHitRate() != 25 || c.GetLocalHits()+c.GetRedisHits() != 1 || c.GetErrors() != 0 {
		t.Errorf("cache stats %v, want 1 hit, 3 misses, 25%%", c)
	}
	// One at a time, each lookup is its own query.
	if c.GetPostgresQueries() != 3 || c.GetPostgresRoundTrips() != 3 {
		t.Errorf("postgres lookups %d in %d queries, want 3 in 3", c.GetPostgresQueries(), c.GetPostgresRoundTrips())
	}
	if !c.GetEnabled() || c.GetTtlSeconds() != 300 {
		t.Errorf("enabled %v ttl %d", c.GetEnabled(), c.GetTtlSeconds())
	}
	if p := st.GetPool(); p.GetSize() < 1 || p.GetSize() > 3 || p.GetAvailable() > p.GetSize() || p.GetPending() != 0 {
		t.Errorf("pool %v", p)
	}
	cfg := st.GetConfig()
	if cfg.GetDefaultSessionCount() != 1000 || cfg.GetBatchSize() != 100 || cfg.GetBatchDelay().AsDuration() != 50*time.Millisecond ||
		cfg.GetRecentWindowHours() != 24 || cfg.GetMaxWarmingTime().AsDuration() != 5*time.Minute {
		t.Errorf("config %v", cfg)
	}
}

func TestPeriodicRewarm(t *testing.T) {
	h := start(t, devtest.Database(t), devtest.RedisURL(t))
	s := h.addActive(3)
	var reading server.HitCount
	reading = h.srv.RewarmOnce(reading) // no traffic yet: nothing to judge
	if _, ok := h.lastWarming(); ok {
		t.Fatal("re-warmed without traffic")
	}
	for _, x := range s {
		h.mustValidate(x.token) // three misses: 0% < 85%
	}
	reading = h.srv.RewarmOnce(reading)
	eventually(t, 10*time.Second, func() error {
		lw, ok := h.lastWarming()
		if !ok || lw.GetOutcome() != sessiondv1.WarmOutcome_WARM_OUTCOME_COMPLETED {
			return fmt.Errorf("no completed re-warm: %v", lw)
		}
		return nil
	})
	first, _ := h.lastWarming()
	for range 20 {
		h.mustValidate(s[0].token) // hits: 100% since the last check
	}
	h.srv.RewarmOnce(reading)
	if lw, _ := h.lastWarming(); !lw.GetStartedAt().AsTime().Equal(first.GetStartedAt().AsTime()) {
		t.Error("re-warmed although the hit rate was above the threshold")
	}
}

// The same streaming call grpcurl makes, with no compiled-in proto: the
// descriptors come from server reflection.
func TestWarmCacheThroughReflection(t *testing.T) {
	h := start(t, devtest.Database(t), devtest.RedisURL(t))
	h.addActive(3)
	msgs := reflectStream(t, h.conn, "sessiond.v1.SessionService", "WarmCache", `{"count": 2}`)
	if len(msgs) < 2 {
		t.Fatalf("%d messages: %v", len(msgs), msgs)
	}
	last := msgs[len(msgs)-1]
	if last["done"] != true || last["warmed"] != float64(2) || last["total"] != float64(2) {
		t.Errorf("last message %v", last)
	}
}

// After the startup warm (SERVING), the rest of the window is warmed in the
// background, as its own phase; an instance started beside a warm one
// writes nothing that is already cached.
func TestBackgroundWarmAndKeptEntries(t *testing.T) {
	dbURL, redisURL := devtest.Database(t), devtest.RedisURL(t)
	first := prepare(t, dbURL, redisURL, func(c *config.Config) {
		c.WarmOnStart, c.WarmBackground, c.WarmCount = true, true, 50
	})
	sessions := first.addActive(300)
	first.run()
	first.waitServing()
	eventually(t, 20*time.Second, func() error {
		last, ok := first.lastWarming()
		if !ok || last.GetPhase() != "background" || last.GetOutcome() != sessiondv1.WarmOutcome_WARM_OUTCOME_COMPLETED {
			return fmt.Errorf("last run: %v", last)
		}
		if last.GetTotal() != int32(len(sessions)) || last.GetWarmed()+last.GetKept() != int32(len(sessions)) || last.GetKept() < 50 {
			return fmt.Errorf("background run: %v, want %d found, the startup's 50 or more kept, the rest warmed", last, len(sessions))
		}
		return nil
	})
	if got := len(first.cachedKeys()); got != len(sessions) {
		t.Errorf("%d keys cached after the background phase, want %d", got, len(sessions))
	}

	second := prepare(t, dbURL, redisURL, func(c *config.Config) {
		c.WarmOnStart, c.WarmBackground, c.WarmCount = true, false, 50
	})
	second.run()
	second.waitServing()
	last, ok := second.lastWarming()
	if !ok || last.GetPhase() != "startup" || last.GetWarmed() != 0 || last.GetKept() != 50 {
		t.Errorf("second instance's startup warm: %v, want 50 kept and none written", last)
	}

	// A startup warm allowed more sessions than the window holds took them
	// all: no background pass reads every entry again. (The phase would
	// start right after SERVING, in the goroutine that shutdown waits for,
	// so after shutdown the last run says whether it did.)
	third := prepare(t, dbURL, redisURL, func(c *config.Config) {
		c.WarmOnStart, c.WarmBackground, c.WarmCount = true, true, 1000
	})
	third.run()
	third.waitServing()
	third.shutdown()
	st, err := third.srv.Service().GetStats(context.Background(), &sessiondv1.GetStatsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if last := st.GetLastWarming(); last.GetPhase() != "startup" || last.GetTotal() != int32(len(sessions)) || last.GetKept() != int32(len(sessions)) {
		t.Errorf("third instance's last run: %v, want the startup warm, all %d kept, and no background phase", last, len(sessions))
	}
}
