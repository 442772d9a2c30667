package devstack

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/rueidis"
)

// testCtx bounds a whole test: starting servers is the slow part and takes seconds, not minutes.
func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func startPostgres(t *testing.T) *Postgres {
	t.Helper()
	p, err := StartPostgres(testCtx(t), PostgresOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := p.Stop(); err != nil {
			t.Error(err)
		}
	})
	return p
}

func startRedis(t *testing.T) *Redis {
	t.Helper()
	r, err := StartRedis(testCtx(t), RedisOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := r.Stop(); err != nil {
			t.Error(err)
		}
	})
	return r
}

// queryString runs a one-value query on a new connection to url.
func queryString(ctx context.Context, url, sql string) (string, error) {
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return "", err
	}
	defer conn.Close(ctx)
	var s string
	err = conn.QueryRow(ctx, sql).Scan(&s)
	return s, err
}

func execSQL(ctx context.Context, url, sql string) error {
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	_, err = conn.Exec(ctx, sql)
	return err
}

// redisDo runs one command on a new client connected to addr.
func redisDo(ctx context.Context, addr string, args ...string) (string, error) {
	c, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{addr}, DisableRetry: true})
	if err != nil {
		return "", err
	}
	defer c.Close()
	return c.Do(ctx, c.B().Arbitrary(args...).Build()).ToString()
}

func TestPostgresLifecycle(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	p := startPostgres(t)

	if got, err := queryString(ctx, p.URL(), "SELECT 1::text"); err != nil || got != "1" {
		t.Fatalf("SELECT 1 = %q, %v", got, err)
	}
	for setting, want := range map[string]string{
		"fsync": "off", "full_page_writes": "off", "max_connections": "200",
	} {
		if got, err := queryString(ctx, p.URL(), "SHOW "+setting); err != nil || got != want {
			t.Errorf("SHOW %s = %q, %v; want %q", setting, got, err, want)
		}
	}

	// Two fresh databases are distinct and usable: a table made in one is not in the other.
	url1, err := p.CreateDatabase(ctx, "first")
	if err != nil {
		t.Fatal(err)
	}
	url2, err := p.CreateDatabase(ctx, "Second-DB") // needs quoting
	if err != nil {
		t.Fatal(err)
	}
	if url1 == url2 {
		t.Fatalf("both databases have URL %s", url1)
	}
	for url, want := range map[string]string{url1: "first", url2: "Second-DB"} {
		if got, err := queryString(ctx, url, "SELECT current_database()"); err != nil || got != want {
			t.Errorf("current_database() at %s = %q, %v; want %q", url, got, err, want)
		}
	}
	if err := execSQL(ctx, url1, "CREATE TABLE only_in_first (x int)"); err != nil {
		t.Fatal(err)
	}
	for url, want := range map[string]string{url1: "only_in_first", url2: ""} {
		got, err := queryString(ctx, url, "SELECT coalesce(to_regclass('only_in_first')::text, '')")
		if err != nil || got != want {
			t.Errorf("table at %s = %q, %v; want %q", url, got, err, want)
		}
	}
	if _, err := p.CreateDatabase(ctx, "first"); err == nil {
		t.Error("creating an existing database succeeded")
	}

	// Kill is an outage: the URL stops working. Restart brings the same URL back, data directory included.
	if err := p.Kill(); err != nil {
		t.Fatal(err)
	}
	if _, err := queryString(ctx, p.URL(), "SELECT 1::text"); err == nil {
		t.Fatal("connected after Kill")
	}
	before := p.URL()
	if err := p.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	if p.URL() != before {
		t.Errorf("URL after Restart = %s, want %s", p.URL(), before)
	}
	if got, err := queryString(ctx, url1, "SELECT current_database()"); err != nil || got != "first" {
		t.Errorf("after Restart, current_database() = %q, %v", got, err)
	}
	// Restart of a running server restarts it cleanly.
	if err := p.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	if err := p.DropDatabase(ctx, "first"); err != nil {
		t.Fatal(err)
	}
	if _, err := queryString(ctx, url1, "SELECT 1::text"); err == nil {
		t.Error("connected to a dropped database")
	}

	// Stop removes the directory and is idempotent; Restart cannot bring a removed server back.
	if err := p.Stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(p.Dir()); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("after Stop, Stat(%s) = %v, want not exist", p.Dir(), err)
	}
	if err := p.Stop(); err != nil {
		t.Errorf("second Stop: %v", err)
	}
	if err := p.Restart(ctx); err == nil {
		t.Error("Restart after Stop succeeded")
	}
}

func TestRedisLifecycle(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	r := startRedis(t)

	if r.URL() != "redis://"+r.Addr() {
		t.Errorf("URL = %s, Addr = %s", r.URL(), r.Addr())
	}
	if got, err := redisDo(ctx, r.Addr(), "PING"); err != nil || got != "PONG" {
		t.Fatalf("PING = %q, %v", got, err)
	}
	c, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{r.Addr()}})
	if err != nil {
		t.Fatal(err)
	}
	for param, want := range map[string]string{"save": "", "appendonly": "no", "bind": "127.0.0.1"} {
		got, err := c.Do(ctx, c.B().ConfigGet().Parameter(param).Build()).AsStrMap()
		if err != nil || got[param] != want {
			t.Errorf("CONFIG GET %s = %q, %v; want %q", param, got[param], err, want)
		}
	}
	c.Close()

	if _, err := redisDo(ctx, r.Addr(), "SET", "k", "v"); err != nil {
		t.Fatal(err)
	}
	if err := r.Kill(); err != nil {
		t.Fatal(err)
	}
	if _, err := redisDo(ctx, r.Addr(), "PING"); err == nil {
		t.Fatal("PING answered after Kill")
	}
	before := r.URL()
	if err := r.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	if r.URL() != before {
		t.Errorf("URL after Restart = %s, want %s", r.URL(), before)
	}
	if got, err := redisDo(ctx, r.Addr(), "PING"); err != nil || got != "PONG" {
		t.Fatalf("PING after Restart = %q, %v", got, err)
	}
	if _, err := redisDo(ctx, r.Addr(), "GET", "k"); !rueidis.IsRedisNil(err) {
		t.Errorf("GET k after Restart: %v, want nil (persistence is off)", err)
	}

	// A snapshot taken by SAVE is what the next start loads, as a restore from backup: a key written after it is lost.
	if _, err := redisDo(ctx, r.Addr(), "SET", "k", "saved"); err != nil {
		t.Fatal(err)
	}
	if _, err := redisDo(ctx, r.Addr(), "SAVE"); err != nil {
		t.Fatal(err)
	}
	if _, err := redisDo(ctx, r.Addr(), "SET", "k", "after"); err != nil {
		t.Fatal(err)
	}
	if err := r.Kill(); err != nil {
		t.Fatal(err)
	}
	if err := r.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	if got, err := redisDo(ctx, r.Addr(), "GET", "k"); err != nil || got != "saved" {
		t.Errorf("GET k after SAVE, SET, Kill, Restart = %q, %v; want the snapshot's \"saved\"", got, err)
	}
	if err := os.Remove(r.SnapshotPath()); err != nil {
		t.Fatal(err)
	}
	if err := r.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := redisDo(ctx, r.Addr(), "GET", "k"); !rueidis.IsRedisNil(err) {
		t.Errorf("GET k after removing the snapshot and restarting: %v, want nil", err)
	}

	if err := r.Stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(r.Dir()); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("after Stop, Stat(%s) = %v, want not exist", r.Dir(), err)
	}
	if err := r.Stop(); err != nil {
		t.Errorf("second Stop: %v", err)
	}
	if err := r.Restart(ctx); err == nil {
		t.Error("Restart after Stop succeeded")
	}
}

// A server that cannot bind its port exits at once; the error says why instead of waiting for the deadline.
func TestRestartOnTakenPortFails(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	r := startRedis(t)
	if err := r.Kill(); err != nil {
		t.Fatal(err)
	}
	l, err := (&net.ListenConfig{}).Listen(ctx, "tcp", r.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	start := time.Now()
	err = r.Restart(ctx)
	if err == nil || !strings.Contains(err.Error(), "Address already in use") || !errors.Is(err, errPortInUse) {
		t.Fatalf("Restart on a taken port: %v", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("Restart took %v to notice the exit", d)
	}
}

// Servers started at the same time get different ports, and each probe only accepts its own server.
func TestParallelStartsGetDistinctPorts(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	const n = 2
	var (
		wg   sync.WaitGroup
		pgs  [n]*Postgres
		rs   [n]*Redis
		errs [2 * n]error
	)
	for i := range n {
		wg.Go(func() { pgs[i], errs[i] = StartPostgres(ctx, PostgresOptions{}) })
		wg.Go(func() { rs[i], errs[n+i] = StartRedis(ctx, RedisOptions{}) })
	}
	wg.Wait()
	for i := range n {
		if pgs[i] != nil {
			t.Cleanup(func() { pgs[i].Stop() })
		}
		if rs[i] != nil {
			t.Cleanup(func() { rs[i].Stop() })
		}
	}
	if err := errors.Join(errs[:]...); err != nil {
		t.Fatal(err)
	}
	ports := map[int]string{}
	for i := range n {
		for _, s := range []*server{pgs[i].srv, rs[i].srv} {
			if other, ok := ports[s.port]; ok {
				t.Errorf("%s and %s both on port %d", other, s.name, s.port)
			}
			ports[s.port] = s.name
		}
	}

	// Each probe rejects the other server of its kind on its port.
	if err := redisProbe(ctx, rs[0].Port(), rs[1].srv.proc.cmd.Process.Pid); err == nil {
		t.Error("redis probe accepted another redis-server")
	}
	if err := pgs[1].probe(ctx, pgs[0].Port(), 0); err != nil {
		t.Errorf("postgres probe of its own server: %v", err)
	}
	other := &Postgres{srv: pgs[0].srv, dataDir: pgs[1].dataDir}
	if err := other.probe(ctx, pgs[0].Port(), 0); err == nil {
		t.Error("postgres probe accepted another postgres")
	}
}

// fakePrograms returns mk, which creates root/dir holding empty executable files named names, and returns it.
func fakePrograms(t *testing.T, root string) (mk func(dir string, names ...string) string) {
	return func(dir string, names ...string) string {
		dir = filepath.Join(root, dir)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for _, n := range names {
			if err := os.WriteFile(filepath.Join(dir, n), nil, 0o755); err != nil {
				t.Fatal(err)
			}
		}
		return dir
	}
}

func TestFindPostgres(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	mk := fakePrograms(t, root)
	both := mk("both", "initdb", "postgres")
	onlyInitdb := mk("only-initdb", "initdb")
	empty := mk("empty")
	lib := filepath.Join(root, "lib")
	mk("lib/9/bin", "initdb", "postgres")
	newest := mk("lib/15/bin", "initdb", "postgres")
	mk("lib/13/bin", "initdb", "postgres")
	mk("lib/16/bin", "initdb") // incomplete: skipped
	mk("lib/latest/bin", "initdb", "postgres")

	for _, tc := range []struct {
		name, path, lib, want string
	}{
		{"PATH first", onlyInitdb + ":" + both, lib, both},
		{"newest complete version", onlyInitdb + "::" + empty, lib, newest},
		{"nothing", empty, filepath.Join(root, "none"), ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := findPostgres(tc.path, tc.lib)
			if tc.want == "" {
				if !errors.Is(err, ErrNotInstalled) || !strings.Contains(err.Error(), "apt-get install postgresql-15") ||
					!strings.Contains(err.Error(), "make deps") {
					t.Errorf("err = %v, want ErrNotInstalled naming the package and make deps", err)
				}
				return
			}
			if err != nil || got.initdb != filepath.Join(tc.want, "initdb") || got.postgres != filepath.Join(tc.want, "postgres") {
				t.Errorf("= %+v, %v; want both from %s", got, err, tc.want)
			}
		})
	}
}

// As root, postgres runs as another user; a directory that user cannot enter is named in the error.
func TestStartPostgresUnreachableDir(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("only root runs postgres as another user")
	}
	t.Parallel()
	parent := t.TempDir() // inside a directory of mode 0700, owned by root
	_, err := StartPostgres(t.Context(), PostgresOptions{Dir: parent})
	if want := "cannot enter " + filepath.Dir(parent) + ":"; err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("err = %v, want one containing %q", err, want)
	}
	if entries, _ := os.ReadDir(parent); len(entries) != 0 {
		t.Errorf("left %v behind", entries)
	}
}

func TestStartRedisNotInstalled(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	_, err := StartRedis(t.Context(), RedisOptions{})
	if !errors.Is(err, ErrNotInstalled) || !strings.Contains(err.Error(), "apt-get install redis-server") ||
		!strings.Contains(err.Error(), "make deps") {
		t.Errorf("err = %v, want ErrNotInstalled naming the package and make deps", err)
	}
}
