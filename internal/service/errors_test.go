package service

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sessiond/sessiond/internal/tiers"
	"github.com/sessiond/sessiond/internal/warm"
)

// internalName stands for what a driver's error says of the deployment
// (user, database, host): it must reach the log and never the caller.
const internalName = "user=app_admin database=sessions_prod host=db7.internal"

func TestToStatus(t *testing.T) {
	tests := []struct {
		name    string
		err     error
		code    codes.Code
		message string // exactly; "" for any message without internalName
		logged  string // the level the detail is logged at; "" when not logged
	}{
		{"bad token", fmt.Errorf("%w: empty", tiers.ErrInvalidToken), codes.InvalidArgument, "", ""},
		{"postgres unreachable", fmt.Errorf("%w: postgres: failed to connect to `%s`: dial: refused", tiers.ErrUnavailable, internalName),
			codes.Unavailable, msgStoreUnavailable, "WARN"},
		{"postgres unreachable while estimating", fmt.Errorf("%w: begin: failed to connect to `%s`", warm.ErrPostgres, internalName),
			codes.Unavailable, msgDatabaseUnavailable, "WARN"},
		{"caller's deadline", fmt.Errorf("postgres %s: %w", internalName, context.DeadlineExceeded), codes.DeadlineExceeded, "", ""},
		{"caller cancelled", context.Canceled, codes.Canceled, "", ""},
		{"a status passes through", status.Error(codes.PermissionDenied, "no"), codes.PermissionDenied, "no", ""},
		{"anything else is internal", fmt.Errorf(`%s: relation "platform.users" does not exist`, internalName), codes.Internal, msgInternal, "ERROR"},
		{"a row sessiond cannot decide", fmt.Errorf("%w: session 5f0c has a NULL expires_at (%s)", tiers.ErrUnreadable, internalName), codes.Internal, msgUndecidable, "ERROR"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			el := newErrorLog(slog.New(slog.NewTextHandler(&buf, nil)))
			st := status.Convert(toStatus(context.Background(), el, "M", tt.err))
			if st.Code() != tt.code {
				t.Errorf("code %v, want %v", st.Code(), tt.code)
			}
			if tt.message != "" && st.Message() != tt.message {
				t.Errorf("message %q, want %q", st.Message(), tt.message)
			}
			if strings.Contains(st.Message(), internalName) {
				t.Errorf("internal detail sent to the client: %q", st.Message())
			}
			switch {
			case tt.logged == "" && buf.Len() > 0:
				t.Errorf("logged %q, want nothing", buf.String())
			case tt.logged != "" && (!strings.Contains(buf.String(), "level="+tt.logged) || !strings.Contains(buf.String(), internalName)):
				t.Errorf("logged %q, want the detail at %s", buf.String(), tt.logged)
			}
		})
	}
}

func TestRunError(t *testing.T) {
	refused := fmt.Errorf("%w: begin: failed to connect to `%s`: dial: refused", warm.ErrPostgres, internalName)
	noTable := fmt.Errorf("%w: count warmable sessions: %w", warm.ErrPostgres,
		&pgconn.PgError{Code: "42P01", Message: `relation "platform.users" does not exist`})
	shutdown := fmt.Errorf("%w: query: %w", warm.ErrPostgres, &pgconn.PgError{Code: "57P01", Message: "terminating connection"})
	tests := []struct {
		name string
		p    warm.Progress
		want string
	}{
		{"completed", warm.Progress{Outcome: warm.Completed}, ""},
		{"running", warm.Progress{Outcome: warm.Running}, ""},
		{"postgres unreachable", warm.Progress{Outcome: warm.Failed, Err: refused}, "postgres unavailable"},
		{"postgres shutting down", warm.Progress{Outcome: warm.Failed, Err: shutdown}, "postgres unavailable"},
		{"postgres answered an error", warm.Progress{Outcome: warm.Failed, Err: noTable}, "postgres query failed"},
		{"redis unreachable", warm.Progress{Outcome: warm.Failed, Err: fmt.Errorf("%w: dial tcp %s", warm.ErrRedis, internalName)}, "redis unavailable"},
		{"timed out", warm.Progress{Outcome: warm.TimedOut, Err: fmt.Errorf("%w: %w", warm.ErrPostgres, context.DeadlineExceeded)}, "timed out"},
		{"canceled", warm.Progress{Outcome: warm.Canceled, Err: context.Canceled}, "canceled"},
		{"anything else", warm.Progress{Outcome: warm.Failed, Err: errors.New(internalName)}, "internal error"},
	}
	for _, tt := range tests {
		if got := runError(tt.p); got != tt.want {
			t.Errorf("%s: %q, want %q", tt.name, got, tt.want)
		}
	}
}

// An outage fails every uncached call the same way: the log gets one
// record a second, not one per call, and says how many it left out.
func TestErrorLogThrottles(t *testing.T) {
	var buf bytes.Buffer
	el := newErrorLog(slog.New(slog.NewTextHandler(&buf, nil)))
	err := fmt.Errorf("%w: refused", tiers.ErrUnavailable)
	for range 100 {
		el.warn(context.Background(), "M", err)
	}
	if n := strings.Count(buf.String(), "\n"); n != 1 {
		t.Fatalf("%d records for 100 failures within a second, want 1:\n%s", n, buf.String())
	}
	el.next.Store(0) // as if a second had passed
	el.warn(context.Background(), "M", err)
	if !strings.Contains(buf.String(), "suppressed=99") {
		t.Errorf("the second record does not count the 99 left out:\n%s", buf.String())
	}
}
