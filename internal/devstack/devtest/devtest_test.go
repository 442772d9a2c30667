package devtest

import (
	"context"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/redis/rueidis"
)

func TestMain(m *testing.M) { Main(m) }

func queryString(t *testing.T, url, sql string) (string, error) {
	t.Helper()
	conn, err := pgx.Connect(t.Context(), url)
	if err != nil {
		return "", err
	}
	defer conn.Close(context.Background())
	var s string
	err = conn.QueryRow(t.Context(), sql).Scan(&s)
	return s, err
}

func redisDo(t *testing.T, url string, args ...string) (string, error) {
	t.Helper()
	opt, err := rueidis.ParseURL(url)
	if err != nil {
		return "", err
	}
	opt.DisableRetry = true
	c, err := rueidis.NewClient(opt)
	if err != nil {
		return "", err
	}
	defer c.Close()
	return c.Do(t.Context(), c.B().Arbitrary(args...).Build()).ToString()
}

// Databases of parallel tests are distinct, usable, and dropped when their test ends.
func TestDatabase(t *testing.T) {
	var (
		mu   sync.Mutex
		urls = map[string]string{} // URL → current_database()
	)
	t.Run("group", func(t *testing.T) {
		for i := range 3 {
			t.Run(strconv.Itoa(i), func(t *testing.T) {
				t.Parallel()
				url := Database(t)
				name, err := queryString(t, url, "SELECT current_database()")
				if err != nil {
					t.Fatal(err)
				}
				mu.Lock()
				defer mu.Unlock()
				urls[url] = name
			})
		}
	})
	if len(urls) != 3 {
		t.Fatalf("3 tests got %d distinct databases: %v", len(urls), urls)
	}
	for url, name := range urls {
		if !strings.HasPrefix(name, "test_testdatabase_group_") {
			t.Errorf("database name %q does not name its test", name)
		}
		if _, err := queryString(t, url, "SELECT 1::text"); err == nil {
			t.Errorf("database %s still exists after its test", name)
		}
	}
}

func TestDatabaseName(t *testing.T) {
	for _, name := range []string{"T", "TestX/sub_test#01", strings.Repeat("Ü", 100)} {
		got := databaseName(name)
		if len(got) > 63 || strings.Trim(got, "abcdefghijklmnopqrstuvwxyz0123456789_") != "" {
			t.Errorf("databaseName(%q) = %q: not a plain identifier of at most 63 bytes", name, got)
		}
		if databaseName(name) == got {
			t.Errorf("databaseName(%q) twice gave %q", name, got)
		}
	}
}

// RedisURL gives each test its own server, gone when the test ends.
func TestRedisURL(t *testing.T) {
	var url string
	t.Run("use", func(t *testing.T) {
		url = RedisURL(t)
		if got, err := redisDo(t, url, "PING"); err != nil || got != "PONG" {
			t.Fatalf("PING = %q, %v", got, err)
		}
	})
	if _, err := redisDo(t, url, "PING"); err == nil {
		t.Errorf("%s still answers after its test", url)
	}
}

// With TEST_REDIS_URL, tests get distinct, flushed logical databases, released when they end.
func TestRedisURLExternal(t *testing.T) {
	server := OwnRedis(t).URL()
	for db := range 16 {
		if _, err := redisDo(t, server+"/"+strconv.Itoa(db), "SET", "left-over", "x"); err != nil {
			t.Fatal(err)
		}
	}
	t.Setenv("TEST_REDIS_URL", server)

	t.Run("use", func(t *testing.T) {
		seen := map[string]bool{}
		for range 3 { // all claimed at once: released when this subtest ends
			url := RedisURL(t)
			if seen[url] {
				t.Errorf("%s handed out twice", url)
			}
			seen[url] = true
			if url == server+"/0" || !strings.HasPrefix(url, server+"/") {
				t.Errorf("URL %s is not a database other than 0 of %s", url, server)
			}
			if _, err := redisDo(t, url, "GET", "left-over"); !rueidis.IsRedisNil(err) {
				t.Errorf("GET left-over: %v; want nil from a flushed database", err)
			}
		}
	})
	opt, _ := rueidis.ParseURL(server)
	c, err := rueidis.NewClient(opt)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	keys, err := c.Do(t.Context(), c.B().Keys().Pattern("devtest:*").Build()).AsStrSlice()
	if err != nil || len(keys) != 0 {
		t.Errorf("claims left after the tests: %v, %v", keys, err)
	}

	t.Run("own servers skip", func(t *testing.T) {
		OwnRedis(t)
		t.Error("OwnRedis did not skip with TEST_REDIS_URL set")
	})
}

// With TEST_DATABASE_URL, databases are made on that server and OwnPostgres skips.
func TestDatabaseExternal(t *testing.T) {
	server := OwnPostgres(t)
	t.Setenv("TEST_DATABASE_URL", server.URL())
	t.Run("use", func(t *testing.T) {
		url := Database(t)
		if !strings.Contains(url, "127.0.0.1:"+strconv.Itoa(server.Port())+"/") {
			t.Errorf("Database() = %s, not on %s", url, server.URL())
		}
		if _, err := queryString(t, url, "SELECT 1::text"); err != nil {
			t.Error(err)
		}
	})
	t.Run("own servers skip", func(t *testing.T) {
		OwnPostgres(t)
		t.Error("OwnPostgres did not skip with TEST_DATABASE_URL set")
	})
}

// Missing binaries fail the test, with the install hint: CI must not pass without real servers.
func TestMissingBinaryFails(t *testing.T) {
	if os.Getenv("DEVTEST_CHILD") == "1" {
		RedisURL(t)
		return
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestMissingBinaryFails$", "-test.v")
	cmd.Env = append(os.Environ(), "DEVTEST_CHILD=1", "PATH="+t.TempDir())
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "--- FAIL") || !strings.Contains(string(out), "apt-get install redis-server") {
		t.Errorf("with no redis-server in PATH, the test ended with %v:\n%s", err, out)
	}
}
