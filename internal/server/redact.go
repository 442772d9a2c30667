package server

import (
	"context"
	"log/slog"

	"github.com/sessiond/sessiond/internal/config"
	"github.com/sessiond/sessiond/internal/redact"
)

// New builds a server from cfg. Neither Postgres nor Redis needs to be up:
// the pool connects on demand, and Redis is retried in the background (see
// tiers.ConnectRedis). ctx bounds the background work started here.
//
// Everything the server logs, and the error New returns, has the secrets of
// cfg's URLs masked (internal/redact): whatever a driver puts in an error,
// no password reaches a log line.
func New(ctx context.Context, cfg config.Config, log *slog.Logger, opts ...Option) (*Server, error) {
	secrets := redact.New(cfg.DatabaseURL, cfg.ListenDatabaseURL, cfg.RedisURL)
	s, err := build(ctx, cfg, slog.New(secrets.Handler(log.Handler())), opts...)
	return s, secrets.Error(err)
}
