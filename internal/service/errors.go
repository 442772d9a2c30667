package service

import (
	"context"
	"errors"
	"log/slog"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sessiond/sessiond/internal/tiers"
	"github.com/sessiond/sessiond/internal/warm"
)

// toStatus is the one place where an internal error becomes a gRPC status.
// Bad input → InvalidArgument; an answer that cannot be known →
// Unavailable; the caller's own deadline or cancellation → DeadlineExceeded
// or Canceled; a status already made → itself; anything else → a generic
// Internal, with the detail logged here and not sent. No message carries a
// token: the tiers never put one in an error.
func toStatus(ctx context.Context, log *slog.Logger, method string, err error) error {
	if _, ok := status.FromError(err); ok {
		return err
	}
	switch {
	case errors.Is(err, tiers.ErrInvalidToken):
		return status.Error(codes.InvalidArgument, err.Error())
	case errors.Is(err, tiers.ErrUnavailable):
		return status.Error(codes.Unavailable, "session is not cached and the session database cannot be reached: "+err.Error())
	case errors.Is(err, tiers.ErrUnreadable):
		// Not the caller's fault and not transient: an operator must look.
		log.ErrorContext(ctx, "session row cannot be decided", "method", method, "error", err)
		return status.Error(codes.Internal, "the session's row cannot be decided by sessiond (the server log says why)")
	case errors.Is(err, warm.ErrPostgres):
		return status.Error(codes.Unavailable, "the session database cannot answer: "+err.Error())
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, "deadline exceeded before an answer was known")
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, "call canceled before an answer was known")
	}
	log.ErrorContext(ctx, "internal error", "method", method, "error", err)
	return status.Error(codes.Internal, "internal error; the server log has the detail")
}
