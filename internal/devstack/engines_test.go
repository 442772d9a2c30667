package devstack_test

// The engines production runs on (Redis Cluster, Redis Sentinel, a Postgres primary with a streaming replica),
// each tested through the client sessiond builds from the URL it would be given. `make test-engines` runs
// these: go test -run 'Cluster|Sentinel|Pair' ./internal/devstack/...

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/rueidis"

	"github.com/sessiond/sessiond/internal/devstack"
	"github.com/sessiond/sessiond/internal/devstack/devtest"
)

// engineCtx bounds a whole engine test, failovers included.
func engineCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// timed runs start and logs how long it took: CI time is limited, and these engines are started per test.
func timed[S any](t *testing.T, what string, start func(testing.TB) S) S {
	t.Helper()
	begin := time.Now()
	s := start(t)
	t.Logf("%s started in %v", what, time.Since(begin).Round(time.Millisecond))
	return s
}

// nodeClient is a client of the one server at addr, without cluster or sentinel discovery.
func nodeClient(t *testing.T, addr string) rueidis.Client {
	t.Helper()
	c, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{addr}, ForceSingleClient: true, DisableCache: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

// urlClient is what sessiond builds from its REDIS_URL: rueidis.ParseURL, then NewClient; edit may adjust
// the options in between.
func urlClient(t *testing.T, url string, edit func(*rueidis.ClientOption)) rueidis.Client {
	t.Helper()
	opt, err := rueidis.ParseURL(url)
	if err != nil {
		t.Fatal(err)
	}
	if edit != nil {
		edit(&opt)
	}
	c, err := rueidis.NewClient(opt)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

func wantRemoved(t *testing.T, dirs ...string) {
	t.Helper()
	for _, d := range dirs {
		if _, err := os.Stat(d); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("after Stop, Stat(%s) = %v, want not exist", d, err)
		}
	}
}

// A client built from the cluster's URL spreads keys over the three masters, reads them back with and
// without client-side caching, and gets invalidations; a node killed and restarted comes back empty but
// serving its slots.
func TestRedisCluster(t *testing.T) {
	t.Parallel()
	ctx := engineCtx(t)
	c := timed(t, "redis cluster", devtest.RedisCluster)

	client := urlClient(t, c.URL(), nil)
	if got := client.Mode(); got != rueidis.ClientModeCluster {
		t.Fatalf("client mode from %s = %s, want cluster", c.URL(), got)
	}
	const n = 300
	keys := make([]string, n)
	sets, gets := make(rueidis.Commands, n), make(rueidis.Commands, n)
	for i := range keys {
		keys[i] = "key:" + strconv.Itoa(i)
		sets[i] = client.B().Set().Key(keys[i]).Value("v" + strconv.Itoa(i)).Build()
		gets[i] = client.B().Get().Key(keys[i]).Build()
	}
	for i, r := range client.DoMulti(ctx, sets...) {
		if err := r.Error(); err != nil {
			t.Fatalf("SET %s: %v", keys[i], err)
		}
	}

	// Each key is on the master that owns its slot (CLUSTER KEYSLOT, CLUSTER SLOTS), and only there.
	nodes := map[string]rueidis.Client{}
	for _, addr := range c.Addrs() {
		nodes[addr] = nodeClient(t, addr)
	}
	node0 := nodes[c.Addrs()[0]]
	owner := slotOwners(t, ctx, node0)
	perNode := map[string][]string{}
	for _, k := range keys {
		slot, err := node0.Do(ctx, node0.B().ClusterKeyslot().Key(k).Build()).AsInt64()
		if err != nil {
			t.Fatal(err)
		}
		perNode[owner[slot]] = append(perNode[owner[slot]], k)
	}
	for addr, nc := range nodes {
		mine := perNode[addr]
		size, err := nc.Do(ctx, nc.B().Dbsize().Build()).AsInt64()
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%s holds %d keys", addr, size)
		if len(mine) == 0 || size != int64(len(mine)) {
			t.Errorf("%s: DBSIZE = %d, want the %d keys of its slots (and more than 0)", addr, size, len(mine))
		}
		exists := make(rueidis.Commands, len(mine))
		for i, k := range mine { // one by one: even on one node, a command's keys must share a slot
			exists[i] = nc.B().Exists().Key(k).Build()
		}
		for i, r := range nc.DoMulti(ctx, exists...) {
			if got, err := r.AsInt64(); err != nil || got != 1 {
				t.Errorf("%s: EXISTS %s = %d, %v", addr, mine[i], got, err)
			}
		}
	}

	// Read back, plainly and through the client-side cache; another client's write invalidates the local copy.
	for i, r := range client.DoMulti(ctx, gets...) {
		if got, err := r.ToString(); err != nil || got != "v"+strconv.Itoa(i) {
			t.Fatalf("GET %s = %q, %v", keys[i], got, err)
		}
	}
	cached := func(k string) rueidis.CacheableTTL { return rueidis.CT(client.B().Get().Key(k).Cache(), time.Minute) }
	for i, r := range client.DoMultiCache(ctx, cached(keys[0]), cached(keys[1]), cached(keys[2])) {
		if got, err := r.ToString(); err != nil || got != "v"+strconv.Itoa(i) {
			t.Fatalf("cached GET %s = %q, %v", keys[i], got, err)
		}
	}
	if r := client.DoCache(ctx, client.B().Get().Key(keys[0]).Cache(), time.Minute); !r.IsCacheHit() {
		t.Errorf("second cached GET was not a cache hit (%v)", r.Error())
	}
	other := urlClient(t, c.URL(), nil)
	if err := other.Do(ctx, other.B().Set().Key(keys[0]).Value("changed").Build()).Error(); err != nil {
		t.Fatal(err)
	}
	devtest.Eventually(t, 5*time.Second, func() error {
		got, err := client.DoCache(ctx, client.B().Get().Key(keys[0]).Cache(), time.Minute).ToString()
		if err != nil || got != "changed" {
			return fmt.Errorf("cached GET after another client's SET = %q, %v: no invalidation", got, err)
		}
		return nil
	})

	// Kill a master: its keys are unreachable; restarted, it serves its slots again, empty.
	victim := c.Nodes()[1]
	onVictim, elsewhere := perNode[victim.Addr()][0], perNode[c.Addrs()[0]][0]
	if err := victim.Kill(); err != nil {
		t.Fatal(err)
	}
	// rueidis retries a read until its context ends.
	shortCtx, cancel := context.WithTimeout(ctx, time.Second)
	if err := client.Do(shortCtx, client.B().Get().Key(onVictim).Build()).Error(); err == nil || rueidis.IsRedisNil(err) {
		t.Errorf("GET of a key on the killed node: %v, want an error", err)
	}
	cancel()
	begin := time.Now()
	if err := c.RestartNode(ctx, 1); err != nil {
		t.Fatal(err)
	}
	t.Logf("node restarted, cluster healthy again in %v", time.Since(begin).Round(time.Millisecond))
	devtest.Eventually(t, 10*time.Second, func() error {
		err := client.Do(ctx, client.B().Get().Key(onVictim).Build()).Error()
		if !rueidis.IsRedisNil(err) {
			return fmt.Errorf("GET %s after RestartNode: %v, want nil (the node restarts empty)", onVictim, err)
		}
		return nil
	})
	if got, err := client.Do(ctx, client.B().Get().Key(elsewhere).Build()).ToString(); err != nil || got == "" {
		t.Errorf("GET %s on a node that stayed up = %q, %v", elsewhere, got, err)
	}
	if err := client.Do(ctx, client.B().Set().Key(onVictim).Value("again").Build()).Error(); err != nil {
		t.Errorf("SET on the restarted node: %v", err)
	}

	if err := c.Stop(); err != nil {
		t.Fatal(err)
	}
	wantRemoved(t, c.Dir())
	if err := c.Stop(); err != nil {
		t.Errorf("second Stop: %v", err)
	}
}

// slotOwners maps each slot to the address of its master, from CLUSTER SLOTS.
func slotOwners(t *testing.T, ctx context.Context, c rueidis.Client) map[int64]string {
	t.Helper()
	ranges, err := c.Do(ctx, c.B().ClusterSlots().Build()).ToArray()
	if err != nil {
		t.Fatal(err)
	}
	owner := map[int64]string{}
	for _, r := range ranges {
		fields, err := r.ToArray()
		if err != nil || len(fields) < 3 {
			t.Fatalf("CLUSTER SLOTS entry %v: %v", r, err)
		}
		from, _ := fields[0].AsInt64()
		to, _ := fields[1].AsInt64()
		master, _ := fields[2].ToArray()
		host, _ := master[0].ToString()
		port, _ := master[1].AsInt64()
		for s := from; s <= to; s++ {
			owner[s] = host + ":" + strconv.FormatInt(port, 10)
		}
	}
	if len(owner) != 16384 {
		t.Fatalf("CLUSTER SLOTS covers %d slots, want 16384", len(owner))
	}
	return owner
}

// Through the sentinel's URL a client writes to the master; what it wrote survives a failover and a crash of
// the master, and the client follows each new master by itself.
func TestRedisSentinel(t *testing.T) {
	t.Parallel()
	ctx := engineCtx(t)
	s := timed(t, "redis master, replica and sentinel", devtest.RedisSentinel)

	// TopologyRefreshInterval: without it a client that misses one +switch-master stays on the old master.
	client := urlClient(t, s.URL(), func(o *rueidis.ClientOption) { o.Sentinel.TopologyRefreshInterval = time.Second })
	if got := client.Mode(); got != rueidis.ClientModeSentinel {
		t.Fatalf("client mode from %s = %s, want sentinel", s.URL(), got)
	}
	set := func(k, v string) error { return client.Do(ctx, client.B().Set().Key(k).Value(v).Build()).Error() }
	// replicated waits until the replica has every write so far, so that a failover cannot lose it.
	replicated := func() {
		t.Helper()
		if n, err := client.Do(ctx, client.B().Wait().Numreplicas(1).Timeout(10000).Build()).AsInt64(); err != nil || n != 1 {
			t.Fatalf("WAIT 1 = %d, %v", n, err)
		}
	}
	// follows checks that the client's writes reach master, and that every key written so far is there.
	follows := func(master *devstack.Redis, k string, written ...string) {
		t.Helper()
		mc := nodeClient(t, master.Addr())
		devtest.Eventually(t, 15*time.Second, func() error {
			if err := set(k, "v-"+k); err != nil {
				return fmt.Errorf("SET %s through the sentinel: %w", k, err)
			}
			if got, err := mc.Do(ctx, mc.B().Get().Key(k).Build()).ToString(); err != nil || got != "v-"+k {
				return fmt.Errorf("GET %s on the new master %s = %q, %v: the client wrote elsewhere", k, master.Addr(), got, err)
			}
			return nil
		})
		for _, w := range append(written, k) {
			if got, err := client.Do(ctx, client.B().Get().Key(w).Build()).ToString(); err != nil || got != "v-"+w {
				t.Errorf("GET %s through the sentinel = %q, %v", w, got, err)
			}
		}
	}

	first, err := s.Master(ctx)
	if err != nil || first != s.Nodes()[0] {
		t.Fatalf("first master = %v, %v; want the first node", first, err)
	}
	follows(first, "k1")
	if r := client.DoCache(ctx, client.B().Get().Key("k1").Cache(), time.Minute); r.Error() != nil {
		t.Fatal(r.Error())
	}
	if r := client.DoCache(ctx, client.B().Get().Key("k1").Cache(), time.Minute); !r.IsCacheHit() {
		t.Errorf("second cached GET through the sentinel was not a cache hit (%v)", r.Error())
	}
	replicated()

	// A failover an operator asks for.
	begin := time.Now()
	if err := s.Failover(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("SENTINEL FAILOVER done in %v", time.Since(begin).Round(time.Millisecond))
	second, err := s.Master(ctx)
	if err != nil || second == first {
		t.Fatalf("master after Failover = %v, %v; want the other node", second, err)
	}
	follows(second, "k2", "k1")
	if info := replicationRole(t, ctx, first); info != "slave" {
		t.Errorf("old master's role after Failover = %s, want slave", info)
	}
	replicated()

	// A crash of the master.
	begin = time.Now()
	killed, err := s.KillMaster(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("master killed, replica promoted in %v", time.Since(begin).Round(time.Millisecond))
	if killed != second {
		t.Fatalf("KillMaster killed %s, want the master %s", killed.Addr(), second.Addr())
	}
	third, err := s.Master(ctx)
	if err != nil || third == killed {
		t.Fatalf("master after KillMaster = %v, %v; want the node that was not killed", third, err)
	}
	follows(third, "k3", "k1", "k2")

	// The killed node comes back as a replica of the new master.
	if err := killed.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	kc := nodeClient(t, killed.Addr())
	devtest.Eventually(t, 15*time.Second, func() error {
		if got, err := kc.Do(ctx, kc.B().Get().Key("k3").Build()).ToString(); err != nil || got != "v-k3" {
			return fmt.Errorf("GET k3 on the restarted node = %q, %v", got, err)
		}
		return nil
	})
	if info := replicationRole(t, ctx, killed); info != "slave" {
		t.Errorf("restarted node's role = %s, want slave", info)
	}

	if err := s.Stop(); err != nil {
		t.Fatal(err)
	}
	wantRemoved(t, s.Dir())
	if err := s.Stop(); err != nil {
		t.Errorf("second Stop: %v", err)
	}
}

// replicationRole returns what ROLE says the node at r is: master or slave.
func replicationRole(t *testing.T, ctx context.Context, r *devstack.Redis) string {
	t.Helper()
	c := nodeClient(t, r.Addr())
	role, err := c.Do(ctx, c.B().Role().Build()).ToArray()
	if err != nil || len(role) == 0 {
		t.Fatalf("ROLE on %s: %v", r.Addr(), err)
	}
	s, _ := role[0].ToString()
	return s
}

// A pool and a fresh connection built from the pair's multi-host URL write to the primary, survive its
// crash once the replica is promoted, and reach the new primary without being rebuilt.
func TestPostgresPair(t *testing.T) {
	t.Parallel()
	ctx := engineCtx(t)
	pair := timed(t, "postgres primary and replica", devtest.PostgresPair)

	url, err := pair.CreateDatabase(ctx, "app")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(url, ",") || !strings.Contains(url, "/app?") || !strings.Contains(url, "target_session_attrs=read-write") {
		t.Errorf("database URL %s: want both hosts, database app, target_session_attrs=read-write", url)
	}
	// The database was created on the primary and is on the replica too.
	replicaURL := strings.Replace(pair.Replica().URL(), "/postgres?", "/app?", 1)
	var inRecovery bool
	if err := scanOne(ctx, replicaURL, "SELECT pg_is_in_recovery()", &inRecovery); err != nil || !inRecovery {
		t.Fatalf("replica's database app: pg_is_in_recovery() = %v, %v; want true", inRecovery, err)
	}

	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	for _, sql := range []string{"CREATE TABLE t (x int)", "INSERT INTO t VALUES (1)"} {
		if _, err := pool.Exec(ctx, sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	port := func(db interface {
		QueryRow(context.Context, string, ...any) pgx.Row
	}) (int, error) {
		var p int
		err := db.QueryRow(ctx, "SELECT inet_server_port()").Scan(&p)
		return p, err
	}
	if p, err := port(pool); err != nil || p != pair.Primary().Port() {
		t.Fatalf("pool is on port %d, %v; want the primary's %d", p, err, pair.Primary().Port())
	}
	if err := pair.WaitReplicated(ctx); err != nil {
		t.Fatal(err)
	}

	// Primary down, replica not yet promoted: nothing accepts writes.
	if err := pair.Primary().Kill(); err != nil {
		t.Fatal(err)
	}
	if _, err := pgx.Connect(ctx, url); err == nil {
		t.Error("connected to a read-write server with the primary down and the replica in recovery")
	}
	begin := time.Now()
	if err := pair.Promote(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("replica promoted in %v", time.Since(begin).Round(time.Millisecond))

	// The same pool writes to the new primary: its broken connections fail once each and are replaced.
	devtest.Eventually(t, 10*time.Second, func() error {
		_, err := pool.Exec(ctx, "INSERT INTO t VALUES (2)")
		return err
	})
	var rows int
	if err := pool.QueryRow(ctx, "SELECT count(*) FROM t").Scan(&rows); err != nil || rows != 2 {
		t.Errorf("rows after promotion = %d, %v; want 2 (one written before)", rows, err)
	}
	if p, err := port(pool); err != nil || p != pair.Replica().Port() {
		t.Errorf("pool is on port %d, %v; want the promoted replica's %d", p, err, pair.Replica().Port())
	}
	// A fresh connection, as sessiond's LISTEN connection makes, reaches it too.
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if p, err := port(conn); err != nil || p != pair.Replica().Port() {
		t.Errorf("new connection is on port %d, %v; want the promoted replica's %d", p, err, pair.Replica().Port())
	}
	if _, err := conn.Exec(ctx, "LISTEN sessiond_invalidate"); err != nil {
		t.Errorf("LISTEN on the new primary: %v", err)
	}
	conn.Close(ctx)
	pool.Close()
	if err := pair.Promote(ctx); err != nil {
		t.Errorf("second Promote: %v", err)
	}
	if _, err := pair.CreateDatabase(ctx, "after"); err != nil {
		t.Errorf("CreateDatabase after Promote: %v", err)
	}

	if err := pair.Stop(); err != nil {
		t.Fatal(err)
	}
	wantRemoved(t, pair.Primary().Dir(), pair.Replica().Dir())
	if err := pair.Stop(); err != nil {
		t.Errorf("second Stop: %v", err)
	}
}

// scanOne runs a one-row query on a new connection to url.
func scanOne(ctx context.Context, url, sql string, dest ...any) error {
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	return conn.QueryRow(ctx, sql).Scan(dest...)
}
