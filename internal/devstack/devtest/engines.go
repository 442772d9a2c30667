package devtest

import (
	"context"
	"os"
	"testing"

	"github.com/sessiond/sessiond/internal/devstack"
)

// The engines production runs on, each private to the test that asks and stopped when it ends. Like OwnRedis
// and OwnPostgres, they skip the test when TEST_REDIS_URL or TEST_DATABASE_URL is set: those runs use external
// servers only.

// RedisCluster starts a three-master Redis Cluster for t (see devstack.StartRedisCluster; its URL is what
// REDIS_URL takes) and stops it when t ends.
func RedisCluster(t testing.TB) *devstack.RedisCluster {
	t.Helper()
	skipWithExternal(t, "TEST_REDIS_URL", "a private Redis Cluster")
	return own(t, func(ctx context.Context) (*devstack.RedisCluster, error) {
		return devstack.StartRedisCluster(ctx, devstack.RedisClusterOptions{})
	})
}

// RedisSentinel starts a Redis master, its replica and a sentinel for t (see devstack.StartRedisSentinel; its
// URL is what REDIS_URL takes) and stops them when t ends.
func RedisSentinel(t testing.TB) *devstack.RedisSentinel {
	t.Helper()
	skipWithExternal(t, "TEST_REDIS_URL", "a private Redis Sentinel setup")
	return own(t, func(ctx context.Context) (*devstack.RedisSentinel, error) {
		return devstack.StartRedisSentinel(ctx, devstack.RedisSentinelOptions{})
	})
}

// PostgresPair starts a Postgres primary and its streaming replica for t (see devstack.StartPostgresPair;
// CreateDatabase on it returns what DATABASE_URL takes) and stops them when t ends.
func PostgresPair(t testing.TB) *devstack.PostgresPair {
	t.Helper()
	skipWithExternal(t, "TEST_DATABASE_URL", "a private Postgres primary and replica")
	return own(t, func(ctx context.Context) (*devstack.PostgresPair, error) {
		return devstack.StartPostgresPair(ctx, devstack.PostgresOptions{})
	})
}

func skipWithExternal(t testing.TB, env, what string) {
	t.Helper()
	if os.Getenv(env) != "" {
		t.Skipf("devtest: %s is set, so this test, which needs %s, does not run", env, what)
	}
}

// own starts something with a Stop method within startTimeout, failing t if it cannot, and stops it when t ends.
func own[S interface{ Stop() error }](t testing.TB, start func(context.Context) (S, error)) S {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), startTimeout)
	defer cancel()
	s, err := start(ctx)
	if err != nil {
		t.Fatalf("devtest: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Stop(); err != nil {
			t.Errorf("devtest: %v", err)
		}
	})
	return s
}
