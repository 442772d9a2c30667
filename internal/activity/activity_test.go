package activity

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/sessiond/sessiond/internal/devstack/devtest"
	"github.com/sessiond/sessiond/internal/schema"
)

func TestMain(m *testing.M) { devtest.Main(m) }

var (
	_ Execer = (*pgxpool.Pool)(nil)
	_ Execer = (*pgx.Conn)(nil)
	_ Execer = pgx.Tx(nil)
)

// base is the time the tests' sessions are seen at, in Postgres's precision.
var base = time.Date(2030, 1, 2, 3, 4, 5, 123456000, time.UTC)

const userID = "00000000-0000-4000-8000-000000000001"

// sessionID is the uuid of test session i.
func sessionID(i int) string { return fmt.Sprintf("10000000-0000-4000-8000-%012d", i) }

// newDB returns a pool on a fresh database holding one user and no sessions.
func newDB(t *testing.T) *pgxpool.Pool {
	t.Helper()
	ctx := t.Context()
	pool := devtest.Pool(t)
	if err := schema.Migrate(ctx, pool); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `INSERT INTO platform.users (id, email) VALUES ($1, 'u@example.com')`, userID); err != nil {
		t.Fatal(err)
	}
	return pool
}

// addSession inserts session i with last_activity_at at.
func addSession(t *testing.T, db *pgxpool.Pool, i int, at time.Time) string {
	t.Helper()
	id := sessionID(i)
	_, err := db.Exec(t.Context(), `INSERT INTO platform.user_sessions (id, user_id, token, expires_at, last_activity_at)
		VALUES ($1, $2, $3, $4, $5)`, id, userID, fmt.Sprintf("%064d", i), at.Add(24*time.Hour), at)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func lastActivity(t *testing.T, db *pgxpool.Pool, id string) time.Time {
	t.Helper()
	var at time.Time
	if err := db.QueryRow(t.Context(), `SELECT last_activity_at FROM platform.user_sessions WHERE id = $1`, id).Scan(&at); err != nil {
		t.Fatal(err)
	}
	return at.UTC()
}

// countingExecer counts statements and can run a hook before each.
type countingExecer struct {
	db     Execer
	calls  atomic.Int64
	before func()
}

func (c *countingExecer) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	c.calls.Add(1)
	if c.before != nil {
		c.before()
	}
	return c.db.Exec(ctx, sql, args...)
}

func TestFlushWritesWhatIsDue(t *testing.T) {
	db := newDB(t)
	const g = time.Minute
	tests := []struct {
		name       string
		stored     time.Time  // last_activity_at in Postgres
		callerLast time.Time  // what the caller's copy says; zero means stored
		seen       *time.Time // nil: never recorded
		want       time.Time
	}{
		{name: "used, older than granularity: moves to the seen time",
			stored: base.Add(-10 * time.Minute), seen: &base, want: base},
		{name: "used, within granularity: skipped by Record",
			stored: base.Add(-30 * time.Second), seen: &base, want: base.Add(-30 * time.Second)},
		{name: "stale caller copy, row within granularity: not written",
			stored: base.Add(-30 * time.Second), callerLast: base.Add(-time.Hour), seen: &base, want: base.Add(-30 * time.Second)},
		{name: "unused: does not move",
			stored: base.Add(-10 * time.Minute), want: base.Add(-10 * time.Minute)},
		{name: "seen before stored: never moves back",
			stored: base, callerLast: base.Add(-time.Hour), seen: ptr(base.Add(-5 * time.Minute)), want: base},
		{name: "seen exactly granularity after stored: not written (strict <)",
			stored: base.Add(-g), seen: &base, want: base.Add(-g)},
	}
	r := New(db, Options{Granularity: g}, nil)
	ids := make([]string, len(tests))
	recorded := 0
	for i, tc := range tests {
		ids[i] = addSession(t, db, i, tc.stored)
		if tc.seen != nil {
			last := tc.callerLast
			if last.IsZero() {
				last = tc.stored
			}
			r.Record(ids[i], last, *tc.seen)
			recorded++
		}
	}
	// Ids that are not canonical uuids are skipped, so they cannot fail the batch.
	for _, bad := range []string{"", "not-a-uuid", "ABCDEF00-0000-4000-8000-000000000000", ids[0] + "0", strings.ReplaceAll(ids[0], "-", "")} {
		r.Record(bad, base.Add(-time.Hour), base)
	}

	rows, err := r.Flush(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if rows != 1 {
		t.Errorf("Flush updated %d rows, want 1", rows)
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := lastActivity(t, db, ids[i]); !got.Equal(tc.want) {
				t.Errorf("last_activity_at = %v, want %v", got, tc.want)
			}
		})
	}
	st := r.Stats()
	want := Stats{Recorded: 4, Skipped: 1 + 5, Written: 1}
	if st != want {
		t.Errorf("Stats = %+v, want %+v", st, want)
	}
	// Nothing pending: no round trip.
	if rows, err := r.Flush(t.Context()); rows != 0 || err != nil {
		t.Errorf("empty Flush = %d, %v", rows, err)
	}
}

func TestFlushBatches(t *testing.T) {
	db := newDB(t)
	exec := &countingExecer{db: db}
	r := New(exec, Options{BatchSize: 5}, nil)
	var ids []string
	for i := range 12 {
		ids = append(ids, addSession(t, db, i, base.Add(-time.Hour)))
		r.Record(ids[i], base.Add(-time.Hour), base.Add(time.Duration(i)*time.Second))
	}
	rows, err := r.Flush(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if rows != 12 || exec.calls.Load() != 3 {
		t.Errorf("Flush: %d rows in %d statements, want 12 in 3", rows, exec.calls.Load())
	}
	for i, id := range ids {
		if got, want := lastActivity(t, db, id), base.Add(time.Duration(i)*time.Second); !got.Equal(want) {
			t.Errorf("session %d: last_activity_at = %v, want %v", i, got, want)
		}
	}
}

func TestRecordKeepsLatestTime(t *testing.T) {
	db := newDB(t)
	id := addSession(t, db, 0, base.Add(-time.Hour))
	r := New(db, Options{}, nil)
	for _, d := range []time.Duration{-3, -1, -2} { // out of order, as concurrent answers may be
		r.Record(id, base.Add(-time.Hour), base.Add(d*time.Minute))
	}
	if st := r.Stats(); st.Pending != 1 || st.Recorded != 3 {
		t.Errorf("Stats = %+v, want 1 pending of 3 recorded", st)
	}
	if _, err := r.Flush(t.Context()); err != nil {
		t.Fatal(err)
	}
	if got := lastActivity(t, db, id); !got.Equal(base.Add(-time.Minute)) {
		t.Errorf("last_activity_at = %v, want the latest seen time", got)
	}
}

func TestDropOldestAtMaxPending(t *testing.T) {
	db := newDB(t)
	r := New(db, Options{MaxPending: 3}, nil)
	var ids []string
	for i := range 5 {
		ids = append(ids, addSession(t, db, i, base.Add(-time.Hour)))
		r.Record(ids[i], base.Add(-time.Hour), base)
	}
	// Recording a pending one again neither drops nor reorders.
	r.Record(ids[4], base.Add(-time.Hour), base)
	if st := r.Stats(); st.Dropped != 2 || st.Pending != 3 {
		t.Errorf("Stats = %+v, want 2 dropped, 3 pending", st)
	}
	rows, err := r.Flush(t.Context())
	if err != nil || rows != 3 {
		t.Fatalf("Flush = %d, %v; want 3 rows", rows, err)
	}
	for i, id := range ids {
		want := base
		if i < 2 {
			want = base.Add(-time.Hour)
		}
		if got := lastActivity(t, db, id); !got.Equal(want) {
			t.Errorf("session %d: last_activity_at = %v, want %v", i, got, want)
		}
	}
}

// TestRingOrderAcrossWrap checks that eviction stays oldest-first once the
// order ring has wrapped, without Postgres.
func TestRingOrderAcrossWrap(t *testing.T) {
	exec := &fakeExecer{}
	r := New(exec, Options{MaxPending: 3, BatchSize: 100}, nil)
	for i := range 8 {
		r.Record(sessionID(i), base.Add(-time.Hour), base)
	}
	if _, err := r.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got, want := exec.ids(), []string{sessionID(5), sessionID(6), sessionID(7)}; !equal(got, want) {
		t.Errorf("flushed %v, want %v", got, want)
	}
}

func TestRunFlushesOnShutdown(t *testing.T) {
	db := newDB(t)
	id := addSession(t, db, 0, base.Add(-time.Hour))
	r := New(db, Options{Interval: time.Hour}, nil)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	r.Record(id, base.Add(-time.Hour), base)
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run = %v", err)
	}
	if got := lastActivity(t, db, id); !got.Equal(base) {
		t.Errorf("last_activity_at = %v after Run returned, want %v", got, base)
	}
	if st := r.Stats(); st.Pending != 0 || st.Written != 1 {
		t.Errorf("Stats = %+v", st)
	}
}

// TestRunFlushesEveryInterval runs the loop on synctest's fake clock against
// a fake Execer: a bubble cannot hold a real connection pool.
func TestRunFlushesEveryInterval(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		exec := &fakeExecer{}
		r := New(exec, Options{Interval: 30 * time.Second}, nil)
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error, 1)
		go func() { done <- r.Run(ctx) }()

		r.Record(sessionID(1), base.Add(-time.Hour), base)
		time.Sleep(29 * time.Second)
		synctest.Wait()
		if n := exec.calls(); n != 0 {
			t.Errorf("%d statements before the first interval", n)
		}
		time.Sleep(time.Second)
		synctest.Wait()
		if n := exec.calls(); n != 1 {
			t.Errorf("%d statements after the first interval, want 1", n)
		}
		time.Sleep(30 * time.Second) // nothing pending: no statement
		synctest.Wait()
		r.Record(sessionID(2), base.Add(-time.Hour), base)
		cancel()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		if got, want := exec.ids(), []string{sessionID(1), sessionID(2)}; !equal(got, want) {
			t.Errorf("written %v, want %v", got, want)
		}
	})
}

func TestFlushWhilePostgresIsDown(t *testing.T) {
	db := newDB(t)
	closed, err := pgxpool.New(t.Context(), db.Config().ConnString())
	if err != nil {
		t.Fatal(err)
	}
	closed.Close()
	var down atomic.Bool
	down.Store(true)
	var r *Recorder
	var during []int // sessions recorded while the failing statement is in flight
	exec := &countingExecer{db: switchExecer{up: db, down: closed, isDown: &down}}
	exec.before = func() {
		for _, i := range during {
			r.Record(sessionID(i), base.Add(-time.Hour), base)
		}
	}
	r = New(exec, Options{MaxPending: 3, BatchSize: 2}, nil)
	for i := range 8 {
		addSession(t, db, i, base.Add(-time.Hour))
	}
	record := func(is ...int) {
		for _, i := range is {
			r.Record(sessionID(i), base.Add(-time.Hour), base)
		}
	}
	check := func(step string, want Stats) {
		t.Helper()
		if got := r.Stats(); got != want {
			t.Errorf("%s: Stats = %+v, want %+v", step, got, want)
		}
	}

	// 1. All three fail on the first statement and go back: there is room.
	record(0, 1, 2)
	if rows, err := r.Flush(t.Context()); err == nil || rows != 0 {
		t.Fatalf("Flush while down = %d, %v; want an error", rows, err)
	}
	if n := exec.calls.Load(); n != 1 {
		t.Errorf("%d statements, want 1: a flush stops at the first failure", n)
	}
	check("first failure", Stats{Recorded: 3, Failed: 3, Pending: 3})

	// 2. Two new sessions evict the two oldest, put back ahead of them.
	record(3, 4)
	check("evicted", Stats{Recorded: 5, Failed: 3, Dropped: 2, Pending: 3})

	// 3. Session 2 fails a second time and is dropped. 3 and 4 would go back,
	// but 5, 6 and 7 arrive while the statement is in flight and leave room
	// for none: they are dropped too.
	during = []int{5, 6, 7}
	if _, err := r.Flush(t.Context()); err == nil {
		t.Fatal("Flush while down succeeded")
	}
	check("second failure", Stats{Recorded: 8, Failed: 6, Dropped: 5, Pending: 3})

	// 4. Postgres is back: what is held is written.
	during = nil
	down.Store(false)
	rows, err := r.Flush(t.Context())
	if err != nil || rows != 3 {
		t.Fatalf("Flush after recovery = %d, %v; want 3 rows", rows, err)
	}
	check("recovered", Stats{Recorded: 8, Failed: 6, Dropped: 5, Written: 3})
	for i := range 8 {
		want := base.Add(-time.Hour)
		if i >= 5 {
			want = base
		}
		if got := lastActivity(t, db, sessionID(i)); !got.Equal(want) {
			t.Errorf("session %d: last_activity_at = %v, want %v", i, got, want)
		}
	}
}

func TestFailedOnceThenWritten(t *testing.T) {
	db := newDB(t)
	closed, err := pgxpool.New(t.Context(), db.Config().ConnString())
	if err != nil {
		t.Fatal(err)
	}
	closed.Close()
	var down atomic.Bool
	down.Store(true)
	r := New(switchExecer{up: db, down: closed, isDown: &down}, Options{}, nil)
	id := addSession(t, db, 0, base.Add(-time.Hour))
	r.Record(id, base.Add(-time.Hour), base)
	if _, err := r.Flush(t.Context()); err == nil {
		t.Fatal("Flush while down succeeded")
	}
	down.Store(false)
	if rows, err := r.Flush(t.Context()); err != nil || rows != 1 {
		t.Fatalf("Flush after recovery = %d, %v", rows, err)
	}
	if got := lastActivity(t, db, id); !got.Equal(base) {
		t.Errorf("last_activity_at = %v, want %v", got, base)
	}
}

func TestFlushHonoursContext(t *testing.T) {
	db := newDB(t)
	r := New(db, Options{}, nil)
	r.Record(addSession(t, db, 0, base.Add(-time.Hour)), base.Add(-time.Hour), base)
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := r.Flush(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("Flush with a cancelled ctx = %v, want context.Canceled", err)
	}
	if st := r.Stats(); st.Pending != 1 || st.Failed != 1 {
		t.Errorf("Stats = %+v, want the session put back", st)
	}
}

// TestConcurrentRecordAndFlush is for the race detector: writers record
// while flushes swap the pending set under them; at the end every session
// is written.
func TestConcurrentRecordAndFlush(t *testing.T) {
	db := newDB(t)
	const sessions = 200
	for i := range sessions {
		addSession(t, db, i, base.Add(-time.Hour))
	}
	r := New(db, Options{BatchSize: 50}, nil)
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			for range 50 {
				for i := w; i < sessions; i += 4 {
					r.Record(sessionID(i), base.Add(-time.Hour), base)
				}
			}
		})
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	for flushes := 0; ; flushes++ {
		if _, err := r.Flush(t.Context()); err != nil {
			t.Fatal(err)
		}
		select {
		case <-done:
		default:
			continue
		}
		t.Logf("%d flushes while recording", flushes+1)
		break
	}
	if _, err := r.Flush(t.Context()); err != nil {
		t.Fatal(err)
	}
	var moved int
	if err := db.QueryRow(t.Context(), `SELECT count(*) FROM platform.user_sessions WHERE last_activity_at = $1`, base).Scan(&moved); err != nil {
		t.Fatal(err)
	}
	st := r.Stats()
	if moved != sessions || st.Written != sessions || st.Pending != 0 || st.Dropped != 0 || st.Failed != 0 {
		t.Errorf("%d of %d sessions moved; Stats = %+v", moved, sessions, st)
	}
}

func TestRecordDoesNotAllocate(t *testing.T) {
	r := New(&fakeExecer{}, Options{}, nil)
	id := sessionID(1)
	r.Record(id, base.Add(-time.Hour), base)
	for name, last := range map[string]time.Time{"pending": base.Add(-time.Hour), "skipped": base} {
		if n := testing.AllocsPerRun(100, func() { r.Record(id, last, base) }); n != 0 {
			t.Errorf("%s: %v allocations per Record", name, n)
		}
	}
}

func TestIsUUID(t *testing.T) {
	for s, want := range map[string]bool{
		"123e4567-e89b-12d3-a456-426614174000":   true,
		"123E4567-E89B-12D3-A456-426614174000":   false, // Postgres prints lowercase
		"123e4567e89b12d3a456426614174000":       false,
		"{123e4567-e89b-12d3-a456-426614174000}": false,
		"123e4567-e89b-12d3-a456-42661417400g":   false,
		"123e4567-e89b-12d3-a456_426614174000":   false,
		"":                                       false,
	} {
		if got := isUUID(s); got != want {
			t.Errorf("isUUID(%q) = %v", s, got)
		}
	}
}

// BenchmarkRecord measures the hot path over 10k distinct sessions from
// parallel callers: "pending" updates sessions already held (the steady
// state), "skipped" refuses them within Granularity, "evicting" keeps
// inserting new ones past MaxPending.
func BenchmarkRecord(b *testing.B) {
	const n = 10_000
	ids := make([]string, n)
	for i := range ids {
		ids[i] = sessionID(i)
	}
	for _, bc := range []struct {
		name       string
		maxPending int
		last       time.Time
	}{
		{"pending", 0, base.Add(-time.Hour)},
		{"skipped", 0, base},
		{"evicting", n / 10, base.Add(-time.Hour)},
	} {
		b.Run(bc.name, func(b *testing.B) {
			r := New(&fakeExecer{}, Options{MaxPending: bc.maxPending}, nil)
			for _, id := range ids {
				r.Record(id, bc.last, base)
			}
			var seed atomic.Int64
			b.ReportAllocs()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				i := int(seed.Add(7919))
				for pb.Next() {
					i++
					r.Record(ids[i%n], bc.last, base)
				}
			})
		})
	}
}

// fakeExecer records the ids of each statement and reports them all updated.
type fakeExecer struct {
	mu      sync.Mutex
	batches [][]string
}

func (f *fakeExecer) Exec(_ context.Context, _ string, args ...any) (pgconn.CommandTag, error) {
	ids := append([]string(nil), args[0].([]string)...)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.batches = append(f.batches, ids)
	return pgconn.NewCommandTag(fmt.Sprintf("UPDATE %d", len(ids))), nil
}

func (f *fakeExecer) calls() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.batches)
}

func (f *fakeExecer) ids() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var all []string
	for _, b := range f.batches {
		all = append(all, b...)
	}
	return all
}

// switchExecer sends statements to down while isDown holds, else to up.
type switchExecer struct {
	up, down Execer
	isDown   *atomic.Bool
}

func (s switchExecer) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	if s.isDown.Load() {
		return s.down.Exec(ctx, sql, args...)
	}
	return s.up.Exec(ctx, sql, args...)
}

func ptr[T any](v T) *T { return &v }

func equal(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
