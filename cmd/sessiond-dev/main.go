// Command sessiond-dev is what `make run` runs: sessiond with throwaway real
// servers. When DATABASE_URL or REDIS_URL is not set it starts a PostgreSQL
// (initdb in a temp dir) or a redis-server on a free port (or, with
// --postgres-replica, --redis-cluster or --redis-sentinel, the highly
// available setup named; see engines.go); it migrates, loads
// demo data into an empty database, serves, and prints grpcurl commands with
// real demo tokens once health is SERVING. Ctrl-C stops sessiond and the
// servers it started, and removes their files.
//
// The demo tokens are printed on purpose, to stdout, so they can be pasted:
// they are throwaway data. sessiond itself never logs a token.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/sessiond/sessiond/internal/config"
	"github.com/sessiond/sessiond/internal/redact"
	"github.com/sessiond/sessiond/internal/schema"
	"github.com/sessiond/sessiond/internal/seed"
	"github.com/sessiond/sessiond/internal/server"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	stop()
	if err != nil && !errors.Is(err, flag.ErrHelp) {
		fmt.Fprintln(os.Stderr, "sessiond-dev:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	cfg := config.Default()
	cfg.LogFormat = "text" // a person reads this one
	cfg.ShutdownDelay = 0  // no load balancer in front: Ctrl-C stops at once
	fs := flag.NewFlagSet("sessiond-dev", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfg.RegisterFlags(fs)
	var eng engines
	eng.register(fs)
	if err := config.Parse(fs, args, getenv); err != nil {
		return err
	}
	if err := eng.check(cfg.DatabaseURL, cfg.RedisURL); err != nil {
		return err
	}
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(cfg.LogLevel)); err != nil {
		return fmt.Errorf("invalid --log-level: %w", err)
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: lvl}))

	// Servers are stopped in reverse order of start, whatever happens below.
	var cleanups []func()
	defer func() {
		for i := len(cleanups) - 1; i >= 0; i-- {
			cleanups[i]()
		}
	}()
	started := false
	if cfg.DatabaseURL == "" {
		url, stop, err := eng.startPostgres(ctx, stdout)
		if stop != nil {
			cleanups = append(cleanups, stop)
		}
		if err != nil {
			return err
		}
		cfg.DatabaseURL, started = url, true
	}
	if cfg.RedisURL == "" {
		url, stop, err := eng.startRedis(ctx, stdout)
		if stop != nil {
			cleanups = append(cleanups, stop)
		}
		if err != nil {
			return err
		}
		cfg.RedisURL = url
	}

	if err := cfg.Validate(); err != nil { // before the URLs are used: their errors never show a password
		return err
	}
	tokens, err := prepareData(ctx, cfg.DatabaseURL, started, stdout)
	if err != nil {
		return redact.New(cfg.DatabaseURL).Error(err)
	}

	opts, release, err := server.OpsOptions(ctx, cfg, getenv, log)
	if err != nil {
		return fmt.Errorf("%w (set SESSIOND_METRICS_ADDR or ARGS=--metrics-addr=… to use another, or empty for none)", err)
	}
	defer release()
	srv, err := server.New(ctx, cfg, log, opts...)
	if err != nil {
		return err
	}
	lis, err := net.Listen("tcp", cfg.GRPCAddr)
	if err != nil {
		return fmt.Errorf("listen on %s (set GRPC_ADDR or ARGS=--grpc-addr=… to use another): %w", cfg.GRPCAddr, err)
	}
	go announce(ctx, lis.Addr().(*net.TCPAddr), cfg.MetricsAddr, tokens, getenv("GRPCURL"), stdout)
	return srv.Run(ctx, lis)
}

// prepareData migrates and, when the database holds no sessions (always so
// for a Postgres started here), loads the demo data set. It returns a
// valid, an expired and a banned demo token, when it loaded them.
func prepareData(ctx context.Context, url string, fresh bool, stdout io.Writer) (map[string]string, error) {
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return nil, fmt.Errorf("connect to postgres: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if err := schema.Migrate(ctx, conn); err != nil {
		return nil, err
	}
	var n int64
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM platform.user_sessions`).Scan(&n); err != nil {
		return nil, err
	}
	if n > 0 && !fresh {
		fmt.Fprintf(stdout, "the database already holds %d sessions: no demo data loaded\n", n)
		return nil, nil
	}
	opts := seed.DefaultDemo()
	picked := map[string]seed.Truth{}
	sum, err := seed.Load(ctx, conn, opts, func(t seed.Truth) error {
		key := t.Reason
		if t.Valid {
			key = "valid"
		}
		// Of each kind, the most recently active: the one warmed first.
		if old, ok := picked[key]; !ok || t.LastActivityAt.After(old.LastActivityAt) {
			picked[key] = t
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("load demo data: %w", err)
	}
	fmt.Fprintf(stdout, "demo data: %d users (%d deleted, %d banned, %d bans lapsed), %d sessions (%d valid, %d expired, %d of deleted users, %d of banned users) in %v\n",
		sum.Users, sum.DeletedUsers, sum.BannedUsers, sum.LapsedBans, sum.Sessions, sum.Valid, sum.Expired, sum.UserDeleted, sum.UserBanned, sum.Duration.Round(time.Millisecond))
	tokens := map[string]string{}
	for k, t := range picked {
		tokens[k] = t.Token
	}
	return tokens, nil
}

// announce waits for health SERVING (after the startup warm), then prints
// ready-to-paste commands.
func announce(ctx context.Context, addr *net.TCPAddr, metricsAddr string, tokens map[string]string, grpcurl string, stdout io.Writer) {
	target := fmt.Sprintf("localhost:%d", addr.Port)
	conn, err := grpc.NewClient(target, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return
	}
	defer conn.Close()
	w, err := healthpb.NewHealthClient(conn).Watch(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		return
	}
	for {
		m, err := w.Recv()
		if err != nil {
			return
		}
		if m.GetStatus() == healthpb.HealthCheckResponse_SERVING {
			break
		}
	}
	if grpcurl == "" {
		grpcurl = "grpcurl"
	} else if rel, err := filepath.Rel(mustGetwd(), grpcurl); err == nil && filepath.Dir(rel) == "bin" {
		grpcurl = "./" + rel
	}
	fmt.Fprintf(stdout, "\nsessiond is SERVING on %s. Try (in another terminal):\n\n", target)
	for _, k := range []struct{ key, what string }{
		{"valid", "a valid session"},
		{seed.ReasonExpired, "an expired session"},
		{seed.ReasonUserBanned, "a session of a banned user"},
	} {
		if tok, ok := tokens[k.key]; ok {
			fmt.Fprintf(stdout, "  # %s\n  %s -plaintext -d '{\"token\": \"%s\"}' %s sessiond.v1.SessionService/ValidateSession\n\n", k.what, grpcurl, tok, target)
		}
	}
	fmt.Fprintf(stdout, "  # warm 500 sessions, streaming progress\n  %s -plaintext -d '{\"count\": 500}' %s sessiond.v1.SessionService/WarmCache\n\n", grpcurl, target)
	fmt.Fprintf(stdout, "  # statistics and health\n  %s -plaintext %s sessiond.v1.SessionService/GetStats\n  %s -plaintext %s grpc.health.v1.Health/Check\n\n", grpcurl, target, grpcurl, target)
	if _, port, err := net.SplitHostPort(metricsAddr); err == nil && port != "0" {
		fmt.Fprintf(stdout, "  # Prometheus metrics, liveness, readiness\n  curl -s localhost:%s/metrics | grep ^sessiond_\n  curl -i localhost:%s/healthz\n  curl -i localhost:%s/readyz\n\n", port, port, port)
	}
	fmt.Fprintf(stdout, "  # the same through sessiond's own CLI\n  go run ./cmd/sessiond warm --addr %s --estimate\n  go run ./cmd/sessiond stats --addr %s\n\nCtrl-C stops sessiond and the servers it started.\n", target, target)
}

func mustGetwd() string {
	wd, _ := os.Getwd()
	return wd
}
