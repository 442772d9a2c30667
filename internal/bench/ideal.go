package bench

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	sessiondv1 "github.com/sessiond/sessiond/gen/sessiond/v1"
	"github.com/sessiond/sessiond/internal/service"
	"github.com/sessiond/sessiond/internal/tiers"
)

// idealServer is the floor of any caching design: every session already in
// a Go map in the process that answers, keyed by the token's SHA-256 (what
// the database holds; no design can key a session by a token it has not
// seen), never stale, never missing, nothing to fill or invalidate. It
// answers with sessiond's rule (tiers.Check, at each call) and response
// (service.Response), so it sends the same bytes sessiond sends.
type idealServer struct {
	sessiondv1.UnimplementedSessionServiceServer
	sessions map[[sha256.Size]byte]*tiers.Record
}

func (s *idealServer) ValidateSession(_ context.Context, req *sessiondv1.ValidateSessionRequest) (*sessiondv1.ValidateSessionResponse, error) {
	if err := tiers.CheckToken(req.GetToken()); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	rec := s.sessions[sha256.Sum256([]byte(req.GetToken()))]
	return service.Response(tiers.Result{Record: rec, Reason: tiers.Check(rec, time.Now()), Source: tiers.SourceLocal}), nil
}

// loadIdeal reads every session of the database at url, joined with its
// user, into a map keyed by the token column's SHA-256 (hash storage: the
// column holds its hex).
func loadIdeal(ctx context.Context, url string) (map[[sha256.Size]byte]*tiers.Record, error) {
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return nil, fmt.Errorf("connect to postgres: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	rows, err := conn.Query(ctx, `SELECT s.token, `+tiers.Columns+`
FROM platform.user_sessions s
JOIN platform.users u ON u.id = s.user_id`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[[sha256.Size]byte]*tiers.Record{}
	var rs tiers.RowScan
	var stored string
	dest := append([]any{&stored}, rs.Dest()...)
	for rows.Next() {
		if err := rows.Scan(dest...); err != nil {
			return nil, err
		}
		var key [sha256.Size]byte
		if n, err := hex.Decode(key[:], []byte(stored)); err != nil || n != sha256.Size {
			return nil, fmt.Errorf("a token column value is not a hex SHA-256 (the ideal cache reads hash storage only)")
		}
		out[key] = rs.Record()
	}
	return out, rows.Err()
}

// startIdeal loads the ideal cache and serves it.
func startIdeal(ctx context.Context, databaseURL string) (*target, error) {
	sessions, err := loadIdeal(ctx, databaseURL)
	if err != nil {
		return nil, fmt.Errorf("load the ideal cache: %w", err)
	}
	addr, stop, err := serveGRPC(&idealServer{sessions: sessions})
	if err != nil {
		return nil, err
	}
	// It never asks Postgres: pg/1k reads 0.
	return &target{addr: addr, stop: stop, postgres: func(context.Context) (int64, error) { return 0, nil }}, nil
}
