// Package devtest gives tests real PostgreSQL and Redis servers: one shared Postgres per test binary, private
// Redis servers, or the external servers named by TEST_DATABASE_URL and TEST_REDIS_URL.
//
// A package using Database calls Main from its TestMain:
//
//	func TestMain(m *testing.M) { devtest.Main(m) }
//
// Missing server binaries make tests fail, never skip: a green run always means real servers were used.
package devtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/rueidis"
	"github.com/sessiond/sessiond/internal/devstack"
)

const (
	// startTimeout bounds starting a server; initdb on a busy CI machine takes seconds.
	startTimeout = 2 * time.Minute
	// opTimeout bounds creating or dropping a database and the Redis bookkeeping.
	opTimeout = time.Minute
)

// shared is the Postgres server of this test binary, started by the first Database call and stopped by Main.
var shared struct {
	sync.Mutex
	inMain  bool // Main is running, so someone will stop pg
	started bool
	pg      *devstack.Postgres
	err     error
}

// Main runs the tests, stops the shared Postgres if a test started it, and exits with the tests' code
// (1 if they passed but stopping failed). Call it from TestMain.
func Main(m *testing.M) {
	shared.Lock()
	shared.inMain = true
	shared.Unlock()

	code := m.Run()

	shared.Lock()
	defer shared.Unlock()
	if shared.pg != nil {
		if err := shared.pg.Stop(); err != nil {
			fmt.Fprintf(os.Stderr, "devtest: stop the shared postgres: %v\n", err)
			if code == 0 {
				code = 1
			}
		}
	}
	os.Exit(code)
}

// Pool returns a pool on a fresh database (see Database), closed when t
// ends, before the database is dropped.
func Pool(t testing.TB) *pgxpool.Pool {
	t.Helper()
	pool, err := pgxpool.New(context.Background(), Database(t))
	if err != nil {
		t.Fatalf("devtest: %v", err)
	}
	t.Cleanup(pool.Close)
	return pool
}

// Database creates a database with a unique name and returns its URL, and drops it when t ends. The database
// lives on TEST_DATABASE_URL's server if set (its role must be allowed to create databases), else on this test
// binary's shared Postgres, started on first use: that requires calling Main from TestMain.
func Database(t testing.TB) string {
	t.Helper()
	serverURL, err := sharedPostgres()
	if err != nil {
		t.Fatalf("devtest: %v", err)
	}
	name := databaseName(t.Name())
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	dbURL, err := devstack.CreateDatabase(ctx, serverURL, name)
	if err != nil {
		t.Fatalf("devtest: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
		defer cancel()
		if err := devstack.DropDatabase(ctx, serverURL, name); err != nil {
			t.Errorf("devtest: %v", err)
		}
	})
	return dbURL
}

// sharedPostgres returns the URL of the server on which Database creates databases.
func sharedPostgres() (string, error) {
	if u := os.Getenv("TEST_DATABASE_URL"); u != "" {
		return u, nil
	}
	shared.Lock()
	defer shared.Unlock()
	if !shared.inMain {
		return "", errors.New("call devtest.Main(m) from TestMain: it stops the shared Postgres that Database starts")
	}
	if !shared.started {
		// A failure is kept, so every test reports it instead of each trying initdb again.
		shared.started = true
		ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
		defer cancel()
		shared.pg, shared.err = devstack.StartPostgres(ctx, devstack.PostgresOptions{})
	}
	if shared.err != nil {
		return "", shared.err
	}
	return shared.pg.URL(), nil
}

// databaseName makes a valid, unique PostgreSQL identifier (at most 63 bytes) that says which test made it.
// The random part keeps names unique across test binaries sharing TEST_DATABASE_URL.
func databaseName(testName string) string {
	var b strings.Builder
	b.WriteString("test_")
	for _, r := range strings.ToLower(testName) {
		if b.Len() >= 40 {
			break
		}
		if (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9') {
			b.WriteRune(r)
		} else {
			b.WriteByte('_')
		}
	}
	return b.String() + "_" + randomHex(6)
}

func randomHex(n int) string {
	buf := make([]byte, n)
	rand.Read(buf) // never fails
	return hex.EncodeToString(buf)
}

// RedisURL returns the URL of an empty Redis database for t alone. Without TEST_REDIS_URL that is a new
// private server (it starts in milliseconds), stopped when t ends. With TEST_REDIS_URL it is a logical database
// of that server, redis://host:port/N, claimed for t (see below) and flushed first; the claim is released when
// t ends. With SESSIOND_TEST_REDIS (RedisEngineEnv) set to cluster or sentinel, it is a new private engine of that kind.
//
// Claims are keys devtest:db:N in the database TEST_REDIS_URL names (0 by default), set with NX and a
// 30-minute expiry, so concurrent test binaries never share N; tests wait for a free N for up to a minute.
// Redis's client-side caching tracks key names across all logical databases, so tests relying on
// invalidations need a private server: leave TEST_REDIS_URL unset.
func RedisURL(t testing.TB) string {
	t.Helper()
	switch e := os.Getenv(RedisEngineEnv); e {
	case "", "single":
	case "cluster":
		return RedisCluster(t).URL()
	case "sentinel":
		return RedisSentinel(t).URL()
	default:
		t.Fatalf("devtest: %s=%q: want single, cluster or sentinel", RedisEngineEnv, e)
	}
	if ext := os.Getenv("TEST_REDIS_URL"); ext != "" {
		u, err := claimRedisDB(t, ext)
		if err != nil {
			t.Fatalf("devtest: TEST_REDIS_URL: %v", err)
		}
		return u
	}
	return OwnRedis(t).URL()
}

// RedisEngineEnv names the Redis engine RedisURL starts for each test:
// "single" (the default), "cluster" (three masters) or "sentinel" (a master,
// a replica and a sentinel). `make test-engines` runs the integration suite
// on each.
const RedisEngineEnv = "SESSIOND_TEST_REDIS"

// OwnPostgres starts a private Postgres server for tests that stop or kill it, and stops it when t ends.
// It skips t when TEST_DATABASE_URL is set: those runs use external servers only.
func OwnPostgres(t testing.TB) *devstack.Postgres {
	t.Helper()
	skipWithExternal(t, "TEST_DATABASE_URL", "a private Postgres server to stop")
	return own(t, func(ctx context.Context) (*devstack.Postgres, error) {
		return devstack.StartPostgres(ctx, devstack.PostgresOptions{})
	})
}

// OwnRedis starts a private Redis server for tests that stop or kill it, and stops it when t ends.
// It skips t when TEST_REDIS_URL is set: those runs use external servers only.
func OwnRedis(t testing.TB) *devstack.Redis {
	t.Helper()
	skipWithExternal(t, "TEST_REDIS_URL", "a private Redis server to stop")
	return own(t, func(ctx context.Context) (*devstack.Redis, error) {
		return devstack.StartRedis(ctx, devstack.RedisOptions{})
	})
}

// claimRedisDB claims a logical database of the server at rawURL for t, flushes it, and returns its URL.
func claimRedisDB(t testing.TB, rawURL string) (string, error) {
	opt, err := rueidis.ParseURL(rawURL)
	if err != nil {
		return "", err
	}
	opt.DisableCache = true // plain commands only; also works where client tracking is unavailable
	admin, err := rueidis.NewClient(opt)
	if err != nil {
		return "", err
	}
	defer admin.Close()
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()

	databases := 16 // Redis's default, if CONFIG is not allowed
	if m, err := admin.Do(ctx, admin.B().ConfigGet().Parameter("databases").Build()).AsStrMap(); err == nil {
		if n, err := strconv.Atoi(m["databases"]); err == nil {
			databases = n
		}
	}
	token := randomHex(8)
	db := -1
	for db < 0 {
		for n := range databases {
			if n == opt.SelectDB {
				continue // the claims live there
			}
			err := admin.Do(ctx, admin.B().Set().Key(claimKey(n)).Value(token).Nx().Px(30*time.Minute).Build()).Error()
			if err == nil {
				db = n
				break
			}
			if !rueidis.IsRedisNil(err) { // nil means taken
				return "", fmt.Errorf("claim database %d: %w", n, err)
			}
		}
		if db < 0 {
			select {
			case <-ctx.Done():
				return "", fmt.Errorf("all %d other logical databases stayed claimed by other tests: %w", databases-1, ctx.Err())
			case <-time.After(50 * time.Millisecond):
			}
		}
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
		defer cancel()
		c, err := rueidis.NewClient(opt)
		if err != nil {
			t.Errorf("devtest: release Redis database %d: %v", db, err)
			return
		}
		defer c.Close()
		// Release only our own claim: it may have expired and been taken since.
		const release = `if redis.call("GET", KEYS[1]) == ARGV[1] then return redis.call("DEL", KEYS[1]) end return 0`
		if err := c.Do(ctx, c.B().Eval().Script(release).Numkeys(1).Key(claimKey(db)).Arg(token).Build()).Error(); err != nil {
			t.Errorf("devtest: release Redis database %d: %v", db, err)
		}
	})

	dbOpt := opt
	dbOpt.SelectDB = db
	c, err := rueidis.NewClient(dbOpt)
	if err != nil {
		return "", err
	}
	defer c.Close()
	if err := c.Do(ctx, c.B().Flushdb().Build()).Error(); err != nil {
		return "", fmt.Errorf("flush database %d: %w", db, err)
	}
	u, err := url.Parse(rawURL)
	if err != nil {
		return "", err
	}
	if u.Scheme == "unix" { // the path is the socket's; the database goes in the query
		q := u.Query()
		q.Set("db", strconv.Itoa(db))
		u.RawQuery = q.Encode()
	} else {
		u.Path, u.RawPath = "/"+strconv.Itoa(db), ""
		q := u.Query()
		q.Del("db") // rueidis would let it override the path
		u.RawQuery = q.Encode()
	}
	return u.String(), nil
}

func claimKey(db int) string { return "devtest:db:" + strconv.Itoa(db) }

// Eventually calls f until it returns nil, failing t with f's last error if
// that has not happened within the deadline: for waiting on a condition
// instead of sleeping a guessed time.
func Eventually(t testing.TB, within time.Duration, f func() error) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not within %v: %v", within, err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
