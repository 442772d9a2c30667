package service

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sessiond/sessiond/internal/tiers"
	"github.com/sessiond/sessiond/internal/warm"
)

func TestToStatus(t *testing.T) {
	tests := []struct {
		name string
		err  error
		code codes.Code
	}{
		{"bad token", fmt.Errorf("%w: empty", tiers.ErrInvalidToken), codes.InvalidArgument},
		{"postgres unreachable", fmt.Errorf("%w: dial: refused", tiers.ErrUnavailable), codes.Unavailable},
		{"postgres unreachable while estimating", fmt.Errorf("%w: begin", warm.ErrPostgres), codes.Unavailable},
		{"caller's deadline", fmt.Errorf("postgres: %w", context.DeadlineExceeded), codes.DeadlineExceeded},
		{"caller cancelled", context.Canceled, codes.Canceled},
		{"a status passes through", status.Error(codes.PermissionDenied, "no"), codes.PermissionDenied},
		{"anything else is internal", errors.New(`relation "platform.users" does not exist`), codes.Internal},
		{"a row sessiond cannot decide", fmt.Errorf("%w: session 5f0c has a NULL expires_at", tiers.ErrUnreadable), codes.Internal},
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st := status.Convert(toStatus(context.Background(), log, "M", tt.err))
			if st.Code() != tt.code {
				t.Errorf("code %v, want %v", st.Code(), tt.code)
			}
			if tt.code == codes.Internal && st.Message() == tt.err.Error() {
				t.Error("internal detail sent to the client")
			}
		})
	}
}
