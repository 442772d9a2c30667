// Package config is sessiond's configuration: one struct, one place for
// defaults, flags and environment variables filling the same fields, and one
// validation that names the bad setting.
package config

import (
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/sessiond/sessiond/internal/redact"
	"github.com/sessiond/sessiond/internal/tiers"
	"github.com/sessiond/sessiond/internal/warm"
)

// Config is everything `sessiond serve` can be told.
type Config struct {
	GRPCAddr    string
	DatabaseURL string
	// ListenDatabaseURL is the invalidation listener's own Postgres (its
	// LISTEN and heartbeat connections); empty: DatabaseURL. LISTEN needs a
	// session of its own on the server: behind a PgBouncer in transaction
	// mode, give the pool the bouncer and the listener Postgres itself.
	ListenDatabaseURL string
	RedisURL          string

	TokenStorage     string
	CacheTTL         time.Duration
	LocalCache       bool
	LocalCacheMiB    int
	RedisTimeout     time.Duration
	RedisConnTimeout time.Duration
	PostgresTimeout  time.Duration
	PoolSize         int
	LookupQueries    int

	WarmOnStart     bool
	WarmCount       int
	WarmBatchSize   int
	WarmBatchDelay  time.Duration
	WarmWindow      time.Duration
	WarmTimeout     time.Duration
	RewarmInterval  time.Duration
	RewarmThreshold float64
	WarmBackground  bool

	NegativeTTL         time.Duration
	Invalidation        bool
	ActivityInterval    time.Duration
	ActivityGranularity time.Duration
	ActivityMaxPending  int

	ShutdownTimeout time.Duration
	LogFormat       string
	LogLevel        string

	// Who may call what, and over which transport (internal/server/security.go).
	// All empty by default: admin RPCs open, plaintext gRPC.
	AdminToken  string // bearer token the admin RPCs require; never logged
	TLSCert     string // PEM certificate chain of the gRPC listener
	TLSKey      string // PEM private key of TLSCert
	TLSClientCA string // PEM CA bundle; when set, client certificates are required and verified

	// Gateways (internal/server/callers.go): Envoy ext_authz on the gRPC
	// port, HTTP forward-auth on its own port.
	ExtAuthz      bool   // serve envoy.service.auth.v3.Authorization on the gRPC port
	HTTPAddr      string // forward-auth listen address; empty: off
	SessionCookie string // cookie carrying the session token, for ext_authz and forward-auth
	// How it is operated (internal/server/ops.go): the HTTP listener for
	// /metrics, /healthz and /readyz, and how long a stopping instance keeps
	// serving after it reports NOT_SERVING.
	MetricsAddr   string // empty: no ops listener
	ShutdownDelay time.Duration
}

// Default is the one place defaults live; flag defaults are read from it.
func Default() Config {
	return Config{
		GRPCAddr:      ":50051",
		TokenStorage:  string(tiers.TokenStorageHash),
		CacheTTL:      5 * time.Minute,
		LocalCache:    true,
		LocalCacheMiB: 64,
		RedisTimeout:  250 * time.Millisecond,
		// rueidis PINGs a connection that received nothing for a keepalive
		// interval (a quarter of this) and gives it up, dropping its local
		// copies, when the PING is not answered within this: a silent
		// connection is noticed within 2 intervals + this = 1.5 × 1.2 s =
		// 1.8 s, under the 2 s that sessiond promises.
		RedisConnTimeout: 1200 * time.Millisecond,
		PostgresTimeout:  2 * time.Second,
		PoolSize:         8,
		// Two lookup queries at once, the rest sharing the next: on the
		// 2-core machine of docs/performance.md, never-seen tokens at 32
		// callers ran at 0.82× direct Postgres without sharing, 0.84× with
		// 4 at once and 1.18× with 2, in a third of the queries (medians
		// of 3). See tiers.PostgresOptions.
		LookupQueries:   2,
		WarmOnStart:     true,
		WarmCount:       1000,
		WarmBatchSize:   100,
		WarmBatchDelay:  50 * time.Millisecond,
		WarmWindow:      24 * time.Hour,
		WarmTimeout:     5 * time.Minute,
		RewarmInterval:  time.Hour,
		RewarmThreshold: 85,
		WarmBackground:  true,
		// An unknown token costs one Postgres query per 30 s, not per call.
		NegativeTTL:         30 * time.Second,
		Invalidation:        true,
		ActivityInterval:    30 * time.Second,
		ActivityGranularity: time.Minute,
		ActivityMaxPending:  100_000,
		ShutdownTimeout:     15 * time.Second,
		LogFormat:           "json",
		LogLevel:            "info",
		ExtAuthz:            true,
		SessionCookie:       "session",
		MetricsAddr:         ":9090",
		// Load balancers and health-checking clients notice NOT_SERVING
		// within a probe period or two; 5 s covers Kubernetes' endpoint
		// propagation and a 2 s probe period.
		ShutdownDelay: 5 * time.Second,
	}
}

// envNames maps flags to the environment variables that also set them. The
// guide's REDIS_URL and DATABASE_URL and the GRPC_ADDR keep their
// names; every other setting is SESSIOND_<FLAG>, so that a generic name
// (CACHE_TTL, POOL_SIZE) set for another program on the host cannot leak in.
func envName(flagName string) string {
	switch flagName {
	case "database-url", "redis-url", "grpc-addr":
		return strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
	}
	return "SESSIOND_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// RegisterFlags binds c's fields to flags on fs, with c's current values as
// defaults.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	fs.StringVar(&c.GRPCAddr, "grpc-addr", c.GRPCAddr, "gRPC listen address")
	fs.StringVar(&c.DatabaseURL, "database-url", c.DatabaseURL, "Postgres URL (source of truth; sslmode etc. in the URL)")
	fs.StringVar(&c.ListenDatabaseURL, "listen-database-url", c.ListenDatabaseURL, "Postgres URL of the invalidation listener's LISTEN and heartbeat connections, when they must bypass a connection pooler (empty: --database-url)")
	fs.StringVar(&c.RedisURL, "redis-url", c.RedisURL, "Redis URL: redis://, rediss:// (TLS) or unix://")
	fs.StringVar(&c.TokenStorage, "token-storage", c.TokenStorage, "what user_sessions.token holds: hash (hex SHA-256 of the token) or plain")
	fs.DurationVar(&c.CacheTTL, "cache-ttl", c.CacheTTL, "longest life of a cache entry (never past the session's expiry)")
	fs.BoolVar(&c.LocalCache, "local-cache", c.LocalCache, "serve hot sessions from the in-process client-side cache that Redis invalidates")
	fs.IntVar(&c.LocalCacheMiB, "local-cache-mib", c.LocalCacheMiB, "client-side cache size per Redis connection, MiB")
	fs.DurationVar(&c.RedisTimeout, "redis-timeout", c.RedisTimeout, "bound on each Redis call (a slower answer counts as a miss)")
	fs.DurationVar(&c.RedisConnTimeout, "redis-conn-timeout", c.RedisConnTimeout, "how long a silent Redis connection is trusted before it and its local cache are dropped")
	fs.DurationVar(&c.PostgresTimeout, "postgres-timeout", c.PostgresTimeout, "bound on each Postgres query (past it the answer is UNAVAILABLE)")
	fs.IntVar(&c.PoolSize, "pool-size", c.PoolSize, "Postgres connection pool size")
	fs.IntVar(&c.LookupQueries, "lookup-queries", c.LookupQueries, "session lookup queries sent to Postgres at once (at most --pool-size); lookups that arrive meanwhile share the next query (0: each lookup its own query)")
	fs.BoolVar(&c.WarmOnStart, "warm-on-start", c.WarmOnStart, "warm the cache at start; health is NOT_SERVING until that run ends")
	fs.IntVar(&c.WarmCount, "warm-count", c.WarmCount, "sessions to warm per run, most recently active first")
	fs.IntVar(&c.WarmBatchSize, "warm-batch-size", c.WarmBatchSize, fmt.Sprintf("sessions per pipelined Redis batch when warming (at most %d)", warm.MaxBatchSize))
	fs.DurationVar(&c.WarmBatchDelay, "warm-batch-delay", c.WarmBatchDelay, "pause between warming batches (0 for none)")
	fs.DurationVar(&c.WarmWindow, "warm-window", c.WarmWindow, "warm sessions active within this window")
	fs.DurationVar(&c.WarmTimeout, "warm-timeout", c.WarmTimeout, "bound on one warming run")
	fs.DurationVar(&c.RewarmInterval, "rewarm-interval", c.RewarmInterval, "how often to check the hit rate and re-warm below the threshold (0 = never)")
	fs.Float64Var(&c.RewarmThreshold, "rewarm-threshold", c.RewarmThreshold, "hit rate (percent) under which a periodic check re-warms")
	fs.BoolVar(&c.WarmBackground, "warm-background", c.WarmBackground, "after the startup warm (health SERVING), warm the rest of the window in the background, paced by Redis's round trip")
	fs.DurationVar(&c.NegativeTTL, "negative-ttl", c.NegativeTTL, "how long a \"no such session\" answer is cached (0 = not cached); a session created later with that token clears it")
	fs.BoolVar(&c.Invalidation, "invalidation", c.Invalidation, "LISTEN for the database triggers' change notifications and drop what they name from the cache")
	fs.DurationVar(&c.ActivityInterval, "activity-interval", c.ActivityInterval, "how often session activity seen on cache hits is written to last_activity_at")
	fs.DurationVar(&c.ActivityGranularity, "activity-granularity", c.ActivityGranularity, "only move last_activity_at when it is older than this")
	fs.IntVar(&c.ActivityMaxPending, "activity-max-pending", c.ActivityMaxPending, "sessions' activity held between writes at most (the oldest is dropped, and counted, past it)")
	fs.DurationVar(&c.ShutdownTimeout, "shutdown-timeout", c.ShutdownTimeout, "how long in-flight calls may take to finish on SIGTERM")
	fs.StringVar(&c.LogFormat, "log-format", c.LogFormat, "log format: json or text")
	fs.StringVar(&c.LogLevel, "log-level", c.LogLevel, "log level: debug, info, warn or error")

	fs.StringVar(&c.AdminToken, "admin-token", c.AdminToken, "bearer token required by WarmCache, InvalidateSessions and GetStats (empty: they are open to every caller)")
	fs.StringVar(&c.TLSCert, "tls-cert", c.TLSCert, "PEM `file` with the gRPC listener's certificate chain (with --tls-key; empty: plaintext)")
	fs.StringVar(&c.TLSKey, "tls-key", c.TLSKey, "PEM `file` with the private key of --tls-cert")
	fs.StringVar(&c.TLSClientCA, "tls-client-ca", c.TLSClientCA, "PEM `file` of CA certificates; when set, every client must present a certificate they signed (mutual TLS)")

	fs.BoolVar(&c.ExtAuthz, "ext-authz", c.ExtAuthz, "serve Envoy's external authorization API (envoy.service.auth.v3.Authorization/Check) on the gRPC port")
	fs.StringVar(&c.HTTPAddr, "http-addr", c.HTTPAddr, "forward-auth HTTP listen address, serving GET /v1/auth for nginx auth_request, Caddy forward_auth and Traefik forwardAuth (empty: off)")
	fs.StringVar(&c.SessionCookie, "session-cookie", c.SessionCookie, "cookie that carries the session token for ext_authz and forward-auth (an Authorization: Bearer header also does)")
	fs.StringVar(&c.MetricsAddr, "metrics-addr", c.MetricsAddr, "HTTP listen address for /metrics (Prometheus), /healthz and /readyz (empty: none)")
	fs.DurationVar(&c.ShutdownDelay, "shutdown-delay", c.ShutdownDelay, "on SIGTERM, how long to report NOT_SERVING (gRPC health, /readyz 503) while still serving, so load balancers stop sending, before draining")
}

// Parse sets fs's flags from the environment (through getenv) and then from
// args, so a flag beats its variable. Each flag's variable is listed in its
// usage. A bad value names the setting and where it came from. The standard
// library's flag package plus this loop is all it takes: config libraries
// derive variable names from flag names with one fixed prefix and read the
// process environment directly, and sessiond needs both the guide's
// unprefixed names and an injectable environment for tests.
func Parse(fs *flag.FlagSet, args []string, getenv func(string) string) error {
	var errs []error
	fs.VisitAll(func(f *flag.Flag) {
		name := envName(f.Name)
		f.Usage += " [$" + name + "]"
		if v := getenv(name); v != "" {
			if err := f.Value.Set(v); err != nil {
				errs = append(errs, fmt.Errorf("invalid $%s %q (--%s): %w", name, v, f.Name, err))
			}
		}
	})
	if err := errors.Join(errs...); err != nil {
		return err
	}
	return fs.Parse(args)
}

// ListenURL is the Postgres URL the invalidation listener connects to.
func (c *Config) ListenURL() string {
	if c.ListenDatabaseURL != "" {
		return c.ListenDatabaseURL
	}
	return c.DatabaseURL
}

// Validate checks the settings together; each error names the setting.
func (c *Config) Validate() error {
	var errs []error
	bad := func(flagName, format string, a ...any) {
		errs = append(errs, fmt.Errorf("invalid --%s ($%s): %s", flagName, envName(flagName), fmt.Sprintf(format, a...)))
	}
	postgresURL := func(flagName, v string) {
		if err := redact.Check("the value", v); err != nil {
			bad(flagName, "%v", err) // never the value: it holds a password
		} else if u, _ := url.Parse(v); u.Scheme != "postgres" && u.Scheme != "postgresql" {
			bad(flagName, "want a postgres:// or postgresql:// URL")
		}
	}
	if c.DatabaseURL == "" {
		bad("database-url", "required (a postgres:// URL)")
	} else {
		postgresURL("database-url", c.DatabaseURL)
	}
	if c.ListenDatabaseURL != "" {
		postgresURL("listen-database-url", c.ListenDatabaseURL)
	}
	if c.RedisURL == "" {
		bad("redis-url", "required (a redis://, rediss:// or unix:// URL)")
	} else if _, err := tiers.ClientOption(c.RedisURL, tiers.RedisOptions{}, nil); err != nil {
		bad("redis-url", "%v", err)
	}
	switch tiers.TokenStorage(c.TokenStorage) {
	case tiers.TokenStorageHash, tiers.TokenStoragePlain:
	default:
		bad("token-storage", "%q: want hash or plain", c.TokenStorage)
	}
	positive := []struct {
		name string
		d    time.Duration
	}{
		{"cache-ttl", c.CacheTTL}, {"redis-timeout", c.RedisTimeout}, {"redis-conn-timeout", c.RedisConnTimeout},
		{"postgres-timeout", c.PostgresTimeout}, {"warm-window", c.WarmWindow}, {"warm-timeout", c.WarmTimeout},
		{"shutdown-timeout", c.ShutdownTimeout}, {"activity-interval", c.ActivityInterval},
		{"activity-granularity", c.ActivityGranularity},
	}
	for _, p := range positive {
		if p.d <= 0 {
			bad(p.name, "%s: must be positive", p.d)
		}
	}
	if c.CacheTTL > 0 && c.CacheTTL < time.Millisecond {
		bad("cache-ttl", "%s: Redis expiries are in milliseconds", c.CacheTTL)
	}
	if c.NegativeTTL < 0 {
		bad("negative-ttl", "%s: must not be negative (0 turns it off)", c.NegativeTTL)
	}
	if c.WarmBatchDelay < 0 {
		bad("warm-batch-delay", "%s: must not be negative", c.WarmBatchDelay)
	}
	if c.ShutdownDelay < 0 {
		bad("shutdown-delay", "%s: must not be negative (0 drains at once)", c.ShutdownDelay)
	}
	if c.LookupQueries < 0 {
		bad("lookup-queries", "%d: must not be negative (0 turns sharing off)", c.LookupQueries)
	}
	if c.RewarmInterval < 0 {
		bad("rewarm-interval", "%s: must not be negative (0 turns it off)", c.RewarmInterval)
	}
	for _, p := range []struct {
		name string
		n    int
	}{{"pool-size", c.PoolSize}, {"warm-count", c.WarmCount}, {"warm-batch-size", c.WarmBatchSize}, {"local-cache-mib", c.LocalCacheMiB}, {"activity-max-pending", c.ActivityMaxPending}} {
		if p.n <= 0 {
			bad(p.name, "%d: must be positive", p.n)
		}
	}
	if c.WarmBatchSize > warm.MaxBatchSize {
		bad("warm-batch-size", "%d: at most %d (one batch is one Redis call)", c.WarmBatchSize, warm.MaxBatchSize)
	}
	if c.RewarmThreshold < 0 || c.RewarmThreshold > 100 {
		bad("rewarm-threshold", "%g: want a percentage, 0 to 100", c.RewarmThreshold)
	}
	switch c.LogFormat {
	case "json", "text":
	default:
		bad("log-format", "%q: want json or text", c.LogFormat)
	}
	switch strings.ToLower(c.LogLevel) {
	case "debug", "info", "warn", "error":
	default:
		bad("log-level", "%q: want debug, info, warn or error", c.LogLevel)
	}
	c.validateSecurity(bad)
	c.validateGateways(bad)
	return errors.Join(errs...)
}

// validateGateways checks the ext_authz and forward-auth settings.
func (c *Config) validateGateways(bad func(flagName, format string, a ...any)) {
	if c.HTTPAddr != "" {
		if _, _, err := net.SplitHostPort(c.HTTPAddr); err != nil {
			bad("http-addr", "%q: want host:port or :port", c.HTTPAddr)
		}
	}
	// net/http's cookie parser knows what a cookie name may hold.
	if cs, err := http.ParseCookie(c.SessionCookie + "=v"); err != nil || len(cs) != 1 || cs[0].Name != c.SessionCookie {
		bad("session-cookie", "%q: want a cookie name (letters, digits and !#$%%&'*+-.^_`|~)", c.SessionCookie)
	}
}

// validateSecurity checks the admin-token and TLS settings; the files are
// read by server.New. The token's value never appears in an error.
func (c *Config) validateSecurity(bad func(flagName, format string, a ...any)) {
	for _, r := range c.AdminToken {
		if r <= ' ' || r > '~' {
			bad("admin-token", "must be printable ASCII without spaces (it travels as an HTTP/2 header)")
			break
		}
	}
	switch {
	case c.TLSCert != "" && c.TLSKey == "":
		bad("tls-key", "required with --tls-cert")
	case c.TLSCert == "" && c.TLSKey != "":
		bad("tls-cert", "required with --tls-key")
	}
	if c.TLSClientCA != "" && c.TLSCert == "" {
		bad("tls-client-ca", "requires --tls-cert and --tls-key (client certificates are checked only over TLS)")
	}
}
