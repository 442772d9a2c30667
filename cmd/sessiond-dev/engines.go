package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"time"

	"github.com/sessiond/sessiond/internal/devstack"
)

// engines says which throwaway servers `make run` starts when DATABASE_URL or REDIS_URL is not set: by
// default one postgres and one redis-server; with these switches, the highly available setups production
// runs on, so that sessiond can be tried against them (`make run ARGS=--redis-sentinel`).
type engines struct {
	redisCluster    bool
	redisSentinel   bool
	postgresReplica bool
}

func (e *engines) register(fs *flag.FlagSet) {
	fs.BoolVar(&e.redisCluster, "redis-cluster", false,
		"make run: start a Redis Cluster of 3 masters instead of one redis-server")
	fs.BoolVar(&e.redisSentinel, "redis-sentinel", false,
		"make run: start a Redis master, its replica and a redis-sentinel, and reach the master through the sentinel")
	fs.BoolVar(&e.postgresReplica, "postgres-replica", false,
		"make run: start a Postgres primary and its streaming replica, and connect to whichever accepts writes")
}

// check refuses switches that contradict each other or the URLs given.
func (e *engines) check(databaseURL, redisURL string) error {
	var errs []error
	if e.redisCluster && e.redisSentinel {
		errs = append(errs, errors.New("--redis-cluster and --redis-sentinel: choose one"))
	}
	if (e.redisCluster || e.redisSentinel) && redisURL != "" {
		errs = append(errs, errors.New("--redis-cluster and --redis-sentinel start their own servers: unset REDIS_URL"))
	}
	if e.postgresReplica && databaseURL != "" {
		errs = append(errs, errors.New("--postgres-replica starts its own servers: unset DATABASE_URL"))
	}
	return errors.Join(errs...)
}

// startPostgres starts the Postgres servers asked for, creates the database sessiond, and returns its URL
// and what stops the servers (non-nil whenever something was started, even on error).
func (e *engines) startPostgres(ctx context.Context, stdout io.Writer) (url string, stop func(), err error) {
	begin := time.Now()
	if e.postgresReplica {
		fmt.Fprintln(stdout, "starting a throwaway PostgreSQL primary and its streaming replica (DATABASE_URL is not set)…")
		pair, err := devstack.StartPostgresPair(ctx, devstack.PostgresOptions{})
		if err != nil {
			return "", nil, err
		}
		stop = func() { _ = pair.Stop() }
		if url, err = pair.CreateDatabase(ctx, "sessiond"); err != nil {
			return "", stop, err
		}
		fmt.Fprintf(stdout, "  postgres: %s (primary in %s, replica in %s; started in %v)\n",
			url, pair.Primary().Dir(), pair.Replica().Dir(), since(begin))
		return url, stop, nil
	}
	fmt.Fprintln(stdout, "starting a throwaway PostgreSQL (DATABASE_URL is not set)…")
	pg, err := devstack.StartPostgres(ctx, devstack.PostgresOptions{})
	if err != nil {
		return "", nil, err
	}
	stop = func() { _ = pg.Stop() }
	if url, err = pg.CreateDatabase(ctx, "sessiond"); err != nil {
		return "", stop, err
	}
	fmt.Fprintf(stdout, "  postgres: %s (data in %s)\n", url, pg.Dir())
	return url, stop, nil
}

// startRedis starts the Redis servers asked for and returns the URL sessiond reaches them by and what stops
// them (non-nil whenever something was started).
func (e *engines) startRedis(ctx context.Context, stdout io.Writer) (url string, stop func(), err error) {
	begin := time.Now()
	switch {
	case e.redisCluster:
		fmt.Fprintln(stdout, "starting a throwaway Redis Cluster of 3 masters (REDIS_URL is not set)…")
		c, err := devstack.StartRedisCluster(ctx, devstack.RedisClusterOptions{})
		if err != nil {
			return "", nil, err
		}
		fmt.Fprintf(stdout, "  redis:    %s (cluster in %s; started in %v)\n", c.URL(), c.Dir(), since(begin))
		return c.URL(), func() { _ = c.Stop() }, nil
	case e.redisSentinel:
		fmt.Fprintln(stdout, "starting a throwaway Redis master, its replica and a redis-sentinel (REDIS_URL is not set)…")
		s, err := devstack.StartRedisSentinel(ctx, devstack.RedisSentinelOptions{MasterSet: "sessiond"})
		if err != nil {
			return "", nil, err
		}
		fmt.Fprintf(stdout, "  redis:    %s (master %s, replica %s; started in %v)\n",
			s.URL(), s.Nodes()[0].Addr(), s.Nodes()[1].Addr(), since(begin))
		fmt.Fprintf(stdout, "  fail over with: redis-cli -p %d SENTINEL FAILOVER %s\n", s.Sentinel().Port(), s.MasterSet())
		return s.URL(), func() { _ = s.Stop() }, nil
	}
	fmt.Fprintln(stdout, "starting a throwaway redis-server (REDIS_URL is not set)…")
	rs, err := devstack.StartRedis(ctx, devstack.RedisOptions{})
	if err != nil {
		return "", nil, err
	}
	fmt.Fprintf(stdout, "  redis:    %s\n", rs.URL())
	return rs.URL(), func() { _ = rs.Stop() }, nil
}

func since(t time.Time) time.Duration { return time.Since(t).Round(time.Millisecond) }
