package config

import (
	"flag"
	"io"
	"strings"
	"testing"
	"time"
)

func parse(t *testing.T, args []string, env map[string]string) (Config, error) {
	t.Helper()
	c := Default()
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	c.RegisterFlags(fs)
	if err := Parse(fs, args, func(k string) string { return env[k] }); err != nil {
		return c, err
	}
	return c, c.Validate()
}

func TestParse(t *testing.T) {
	base := map[string]string{"DATABASE_URL": "postgres://db/x", "REDIS_URL": "redis://r:6379"}
	with := func(kv ...string) map[string]string {
		m := map[string]string{}
		for k, v := range base {
			m[k] = v
		}
		for i := 0; i < len(kv); i += 2 {
			m[kv[i]] = kv[i+1]
		}
		return m
	}
	tests := []struct {
		name    string
		args    []string
		env     map[string]string
		check   func(Config) bool
		wantErr string // a substring naming the bad setting
	}{
		{"defaults", nil, base, func(c Config) bool {
			return c.GRPCAddr == ":50051" && c.CacheTTL == 5*time.Minute && c.WarmCount == 1000 && c.WarmBatchDelay == 50*time.Millisecond
		}, ""},
		{"environment", nil, with("GRPC_ADDR", ":6000", "SESSIOND_CACHE_TTL", "90s", "SESSIOND_LOCAL_CACHE", "false"), func(c Config) bool {
			return c.GRPCAddr == ":6000" && c.CacheTTL == 90*time.Second && !c.LocalCache
		}, ""},
		{"a flag beats its variable", []string{"--cache-ttl=1m"}, with("SESSIOND_CACHE_TTL", "90s"), func(c Config) bool {
			return c.CacheTTL == time.Minute
		}, ""},
		{"generic names are not read", nil, with("CACHE_TTL", "1s", "POOL_SIZE", "1"), func(c Config) bool {
			return c.CacheTTL == 5*time.Minute && c.PoolSize == 8
		}, ""},
		{"zero batch delay is allowed", []string{"--warm-batch-delay=0"}, base, func(c Config) bool { return c.WarmBatchDelay == 0 }, ""},
		{"bad duration in env", nil, with("SESSIOND_CACHE_TTL", "5x"), nil, "SESSIOND_CACHE_TTL"},
		{"bad duration flag", []string{"--cache-ttl=5x"}, base, nil, "cache-ttl"},
		{"missing database url", nil, map[string]string{"REDIS_URL": "redis://r"}, nil, "--database-url"},
		{"not a postgres url", nil, with("DATABASE_URL", "mysql://x"), nil, "--database-url"},
		{"missing redis url", nil, map[string]string{"DATABASE_URL": "postgres://x"}, nil, "--redis-url"},
		{"bad redis url", nil, with("REDIS_URL", "http://r"), nil, "--redis-url"},
		{"bad token storage", []string{"--token-storage=md5"}, base, nil, "--token-storage"},
		{"negative ttl", []string{"--cache-ttl=-1s"}, base, nil, "--cache-ttl"},
		{"zero pool", []string{"--pool-size=0"}, base, nil, "--pool-size"},
		{"threshold over 100", []string{"--rewarm-threshold=120"}, base, nil, "--rewarm-threshold"},
		{"bad log format", []string{"--log-format=xml"}, base, nil, "--log-format"},
		{"batch size at the cap", []string{"--warm-batch-size=5000"}, base, func(c Config) bool { return c.WarmBatchSize == 5000 }, ""},
		{"batch size over the cap", []string{"--warm-batch-size=5001"}, base, nil, "--warm-batch-size"},
		{"batch size cap named", nil, with("SESSIOND_WARM_BATCH_SIZE", "100000"), nil, "at most 5000"},
		{"ops defaults", nil, base, func(c Config) bool { return c.MetricsAddr == ":9090" && c.ShutdownDelay == 5*time.Second }, ""},
		{"ops from the environment", nil, with("SESSIOND_METRICS_ADDR", "127.0.0.1:9100", "SESSIOND_SHUTDOWN_DELAY", "0s"), func(c Config) bool {
			return c.MetricsAddr == "127.0.0.1:9100" && c.ShutdownDelay == 0
		}, ""},
		{"no ops listener", []string{"--metrics-addr="}, base, func(c Config) bool { return c.MetricsAddr == "" }, ""},
		{"negative shutdown delay", []string{"--shutdown-delay=-1s"}, base, nil, "--shutdown-delay"},
		{"the listener uses the database url by default", nil, base, func(c Config) bool {
			return c.ListenDatabaseURL == "" && c.ListenURL() == "postgres://db/x"
		}, ""},
		{"a listener url of its own", nil, with("SESSIOND_LISTEN_DATABASE_URL", "postgres://primary:5432/x"), func(c Config) bool {
			return c.ListenURL() == "postgres://primary:5432/x" && c.DatabaseURL == "postgres://db/x"
		}, ""},
		{"listener url not postgres", []string{"--listen-database-url=redis://r"}, base, nil, "--listen-database-url"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := parse(t, tt.args, tt.env)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want one naming %s", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !tt.check(c) {
				t.Errorf("unexpected config %+v", c)
			}
		})
	}
}

// A URL that does not parse is refused without being shown: its password
// must not reach the error.
func TestBadURLsKeepTheirSecret(t *testing.T) {
	const secret = "PLANTED-SECRET-8f3a"
	for _, tt := range []struct{ name, db, redis, wantErr string }{
		{"redis: bad port", "postgres://db/x", "redis://u:" + secret + "@r:bad/0", "--redis-url"},
		{"redis: bad escape", "postgres://db/x", "redis://:" + secret + "%zz@r/0", "--redis-url"},
		{"redis: unescaped slash in the password", "postgres://db/x", "redis://u:12/" + secret + "@r/0", "--redis-url"},
		{"redis: bad database", "postgres://db/x", "redis://u:" + secret + "@r:6379/zz", "--redis-url"},
		{"postgres: bad port", "postgres://u:" + secret + "@db:bad/x", "redis://r", "--database-url"},
		{"postgres: unescaped slash in the password", "postgres://u:12/" + secret + "@db/x", "redis://r", "--database-url"},
		{"postgres: bad escape", "postgres://u:" + secret + "%zz@db/x", "redis://r", "--database-url"},
		{"listener: bad port", "postgres://db/x", "redis://r", "--listen-database-url"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			env := map[string]string{"DATABASE_URL": tt.db, "REDIS_URL": tt.redis}
			if tt.wantErr == "--listen-database-url" {
				env["SESSIOND_LISTEN_DATABASE_URL"] = "postgres://u:" + secret + "@db:bad/x"
			}
			_, err := parse(t, nil, env)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("err = %v, want one naming %s", err, tt.wantErr)
			}
			if strings.Contains(err.Error(), secret) || strings.Contains(err.Error(), "PLANTED") {
				t.Errorf("the password is in the error: %v", err)
			}
		})
	}
}
