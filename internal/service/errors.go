package service

import (
	"context"
	"errors"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sessiond/sessiond/internal/tiers"
	"github.com/sessiond/sessiond/internal/warm"
)

// What callers are told when a backend fails. ValidateSession needs no
// credentials, so these say what failed in fixed words: never a driver's
// text, which names hosts, users and databases. The detail is logged.
const (
	msgStoreUnavailable    = "session store unavailable: the session is not cached and the session database cannot be reached"
	msgDatabaseUnavailable = "session database unavailable"
	msgRedisUnavailable    = "redis unreachable; the cache is not believed until it is back (retry the call)"
	msgInternal            = "internal error; the server log has the detail"
	msgUndecidable         = "the session's row cannot be decided by sessiond (the server log says why)"
)

// toStatus is the one place where an internal error becomes a gRPC status.
// Bad input → InvalidArgument; an answer that cannot be known →
// Unavailable, with a fixed message (the error itself goes to the log at
// warn, through el); the caller's own deadline or cancellation →
// DeadlineExceeded or Canceled; a status already made → itself; anything
// else → a generic Internal, with the detail logged here and not sent. No
// message carries a token: the tiers never put one in an error.
func toStatus(ctx context.Context, el *errorLog, method string, err error) error {
	if _, ok := status.FromError(err); ok {
		return err
	}
	switch {
	case errors.Is(err, tiers.ErrInvalidToken):
		return status.Error(codes.InvalidArgument, err.Error())
	case errors.Is(err, tiers.ErrUnavailable):
		el.warn(ctx, method, err)
		return status.Error(codes.Unavailable, msgStoreUnavailable)
	case errors.Is(err, tiers.ErrUnreadable):
		// Not the caller's fault and not transient: an operator must look.
		el.log.ErrorContext(ctx, "session row cannot be decided", "method", method, "error", err)
		return status.Error(codes.Internal, msgUndecidable)
	case errors.Is(err, warm.ErrPostgres):
		el.warn(ctx, method, err)
		return status.Error(codes.Unavailable, msgDatabaseUnavailable)
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, "deadline exceeded before an answer was known")
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, "call canceled before an answer was known")
	}
	el.log.ErrorContext(ctx, "internal error", "method", method, "error", err)
	return status.Error(codes.Internal, msgInternal)
}

// runError is what a caller is told of why a warming run did not complete
// (WarmCacheProgress.error, GetStats' last_warming.error): which side failed,
// in fixed words. The warm package logs the error itself.
func runError(p warm.Progress) string {
	switch {
	case p.Outcome == warm.TimedOut:
		return "timed out"
	case p.Outcome == warm.Canceled:
		return "canceled"
	case p.Err == nil:
		return ""
	case errors.Is(p.Err, warm.ErrRedis):
		return "redis unavailable"
	case errors.Is(p.Err, warm.ErrPostgres):
		var pgErr *pgconn.PgError
		if errors.As(p.Err, &pgErr) && !unavailableClass(pgErr.Code) {
			// The server answered with an error: a schema or a row it could
			// not read, not an outage.
			return "postgres query failed"
		}
		return "postgres unavailable"
	}
	return "internal error"
}

// unavailableClass says whether a SQLSTATE means "cannot serve now"
// (connection exception, insufficient resources, operator intervention),
// as tiers classifies Lookup's errors.
func unavailableClass(code string) bool {
	return len(code) >= 2 && (code[:2] == "08" || code[:2] == "53" || code[:2] == "57")
}

// errorLog logs the errors behind Unavailable answers at warn. During an
// outage every uncached ValidateSession fails the same way, so it logs at
// most one record per second; each record's "suppressed" counts those left
// out since the one before.
type errorLog struct {
	log        *slog.Logger
	next       atomic.Int64 // Unix nanoseconds before which records are suppressed
	suppressed atomic.Int64
}

func newErrorLog(log *slog.Logger) *errorLog { return &errorLog{log: log} }

const errorLogEvery = time.Second

func (el *errorLog) warn(ctx context.Context, method string, err error) {
	now := time.Now().UnixNano()
	next := el.next.Load()
	if now < next || !el.next.CompareAndSwap(next, now+int64(errorLogEvery)) {
		el.suppressed.Add(1)
		return
	}
	el.log.WarnContext(ctx, "backend unavailable; the caller was told UNAVAILABLE", "method", method, "error", err,
		"suppressed", el.suppressed.Swap(0))
}
