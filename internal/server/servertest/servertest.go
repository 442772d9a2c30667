// Package servertest runs real sessiond instances for the tests of code that
// calls sessiond from outside (the Go client, the examples): each built and
// run by internal/server exactly as in production, on a real Postgres and
// Redis from devtest, reached over TCP on 127.0.0.1. A test binary using it
// calls devtest.Main from its TestMain.
package servertest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/sessiond/sessiond/internal/config"
	"github.com/sessiond/sessiond/internal/devstack/devtest"
	"github.com/sessiond/sessiond/internal/schema"
	"github.com/sessiond/sessiond/internal/server"
	"github.com/sessiond/sessiond/internal/tiers"
)

// Env is one migrated database and one Redis, shared by the instances
// started from it.
type Env struct {
	t        testing.TB
	dbURL    string
	redisURL string
	db       *pgxpool.Pool
}

// New makes a fresh database (migrated, triggers included) and Redis for t.
func New(t testing.TB) *Env {
	t.Helper()
	e := &Env{t: t, dbURL: devtest.Database(t), redisURL: devtest.RedisURL(t)}
	var err error
	if e.db, err = pgxpool.New(t.Context(), e.dbURL); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.db.Close)
	if err := schema.Migrate(t.Context(), e.db); err != nil {
		t.Fatal(err)
	}
	return e
}

// Instance is one running sessiond.
type Instance struct {
	Server *server.Server
	Addr   string // gRPC, 127.0.0.1:PORT
	stop   context.CancelFunc
	done   chan error
}

// Start runs an instance with the test defaults (no warming, no re-warm,
// gRPC on a free port) changed by mods, and returns once it is ready
// (health SERVING). It is stopped when t ends, if not before.
func (e *Env) Start(mods ...func(*config.Config)) *Instance {
	t := e.t
	t.Helper()
	cfg := config.Default()
	cfg.DatabaseURL, cfg.RedisURL = e.dbURL, e.redisURL
	cfg.GRPCAddr = "127.0.0.1:0"
	cfg.WarmOnStart, cfg.RewarmInterval = false, 0
	for _, m := range mods {
		m(&cfg)
	}
	ctx, stop := context.WithCancel(context.Background())
	srv, err := server.New(ctx, cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		stop()
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", cfg.GRPCAddr)
	if err != nil {
		stop()
		t.Fatal(err)
	}
	in := &Instance{Server: srv, Addr: lis.Addr().String(), stop: stop, done: make(chan error, 1)}
	go func() { in.done <- srv.Run(ctx, lis) }()
	t.Cleanup(in.Stop)
	select {
	case <-srv.Ready():
	case err := <-in.done:
		t.Fatalf("sessiond stopped before it was ready: %v", err)
	case <-time.After(20 * time.Second):
		t.Fatal("sessiond not SERVING within 20s")
	}
	return in
}

// Stop shuts the instance down as SIGTERM does (calls in flight finish) and
// waits for it. Later calls do nothing.
func (in *Instance) Stop() {
	if in.stop == nil {
		return
	}
	in.stop()
	in.stop = nil
	<-in.done
}

// Session is a stored session and its user.
type Session struct {
	Token  string // raw, as the client presents it
	ID     string
	UserID string
	Email  string
}

// AddSession stores a new user and a session of theirs, valid for an hour,
// as the application does (the token column holds the token's SHA-256).
func (e *Env) AddSession() Session {
	t := e.t
	t.Helper()
	s := Session{Token: randomHex(32), ID: uuid(), UserID: uuid()}
	s.Email = s.UserID + "@example.test"
	if _, err := e.db.Exec(t.Context(), `INSERT INTO platform.users (id, email) VALUES ($1, $2)`, s.UserID, s.Email); err != nil {
		t.Fatal(err)
	}
	if _, err := e.db.Exec(t.Context(), `INSERT INTO platform.user_sessions (id, user_id, token, expires_at, last_activity_at)
		VALUES ($1, $2, $3, now() + interval '1 hour', now())`, s.ID, s.UserID, tiers.TokenHash(s.Token)); err != nil {
		t.Fatal(err)
	}
	return s
}

// BanUser bans the session's user for an hour; the triggers tell every
// instance.
func (e *Env) BanUser(s Session) {
	e.t.Helper()
	if _, err := e.db.Exec(e.t.Context(), `UPDATE platform.users SET banned_until = now() + interval '1 hour' WHERE id = $1`, s.UserID); err != nil {
		e.t.Fatal(err)
	}
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // never fails on Linux
	return hex.EncodeToString(b)
}

// uuid is a random (version 4) UUID: the tables' ids are uuid columns.
func uuid() string {
	h := randomHex(16)
	return h[:8] + "-" + h[8:12] + "-4" + h[13:16] + "-a" + h[17:20] + "-" + h[20:]
}

// Offline builds a sessiond, config.Default changed by mods, on Postgres and
// Redis addresses nobody listens on (nothing is reached: the pool connects
// on demand and Redis is retried in the background), for tests of what New
// sets up: the metrics it registers, what it logs at start. stop runs it and
// stops it at once, so that everything New started is closed.
func Offline(t testing.TB, log *slog.Logger, mods ...func(*config.Config)) (srv *server.Server, stop func()) {
	t.Helper()
	cfg := config.Default()
	cfg.DatabaseURL, cfg.RedisURL = "postgres://127.0.0.1:1/none", "redis://127.0.0.1:1"
	cfg.WarmOnStart, cfg.RewarmInterval, cfg.ShutdownDelay = false, 0, 0
	for _, m := range mods {
		m(&cfg)
	}
	srv, err := server.New(t.Context(), cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	return srv, func() {
		t.Helper()
		ctx, cancel := context.WithCancel(t.Context())
		cancel()
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		if err := srv.Run(ctx, lis); err != nil {
			t.Fatal(err)
		}
	}
}
