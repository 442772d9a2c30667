package devstack

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// A missing program is named with its Debian package, and what was started before is stopped and removed.
func TestEnginesNotInstalled(t *testing.T) {
	redisServer, err := exec.LookPath("redis-server")
	if err != nil {
		t.Fatal(err)
	}
	onlyServer := t.TempDir() // a PATH with redis-server alone
	if err := os.Symlink(redisServer, filepath.Join(onlyServer, "redis-server")); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", onlyServer)
	for _, tc := range []struct {
		name, want string
		start      func(dir string) error
	}{
		{"cluster", "apt-get install redis-tools", func(dir string) error {
			_, err := StartRedisCluster(t.Context(), RedisClusterOptions{Dir: dir})
			return err
		}},
		{"sentinel", "apt-get install redis-sentinel", func(dir string) error {
			_, err := StartRedisSentinel(t.Context(), RedisSentinelOptions{Dir: dir})
			return err
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			err := tc.start(dir)
			if !errors.Is(err, ErrNotInstalled) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err = %v, want ErrNotInstalled saying %q", err, tc.want)
			}
			if entries, _ := os.ReadDir(dir); len(entries) != 0 {
				t.Errorf("left %v behind", entries)
			}
		})
	}
}

// pg_basebackup is taken beside postgres, or beside what postgres links to.
func TestFindPostgresTool(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	mk := fakePrograms(t, root)
	full := mk("lib/15/bin", "initdb", "postgres", "pg_basebackup")
	links := mk("links")
	for _, n := range []string{"initdb", "postgres"} {
		if err := os.Symlink(filepath.Join(full, n), filepath.Join(links, n)); err != nil {
			t.Fatal(err)
		}
	}
	bare := mk("bare", "initdb", "postgres")
	for _, tc := range []struct{ dir, want string }{
		{full, full},
		{links, full},
		{bare, ""},
	} {
		got, err := findPostgresTool(pgBin{initdb: filepath.Join(tc.dir, "initdb"), postgres: filepath.Join(tc.dir, "postgres")},
			"pg_basebackup", "postgresql-client-15")
		if tc.want == "" {
			if !errors.Is(err, ErrNotInstalled) || !strings.Contains(err.Error(), "apt-get install postgresql-client-15") {
				t.Errorf("%s: err = %v, want ErrNotInstalled naming the package", tc.dir, err)
			}
			continue
		}
		if want := filepath.Join(tc.want, "pg_basebackup"); err != nil || got != want {
			t.Errorf("%s: = %q, %v; want %q", tc.dir, got, err, want)
		}
	}
}
