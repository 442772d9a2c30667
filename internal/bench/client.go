package bench

import (
	"context"
	"fmt"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	sessiondv1 "github.com/sessiond/sessiond/gen/sessiond/v1"
)

// clients is n plaintext gRPC connections to one address, one Caller each.
type clients struct {
	conns   []*grpc.ClientConn
	callers []Caller
}

// dial opens n connections to addr and makes one call on each, so that
// connecting is not measured.
func dial(ctx context.Context, addr string, n int) (*clients, error) {
	c := &clients{}
	for range max(n, 1) {
		conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			c.close()
			return nil, fmt.Errorf("dial %s: %w", addr, err)
		}
		c.conns = append(c.conns, conn)
		cl := sessiondv1.NewSessionServiceClient(conn)
		c.callers = append(c.callers, func(ctx context.Context, token string) (*sessiondv1.ValidateSessionResponse, error) {
			return cl.ValidateSession(ctx, &sessiondv1.ValidateSessionRequest{Token: token})
		})
		wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		// Any answer will do, an error status included: the connection is up.
		_, err = cl.ValidateSession(wctx, &sessiondv1.ValidateSessionRequest{Token: ""}, grpc.WaitForReady(true))
		cancel()
		if ctx.Err() != nil {
			c.close()
			return nil, ctx.Err()
		}
		if code := status.Code(err); code == codes.Unavailable || code == codes.DeadlineExceeded {
			c.close()
			return nil, fmt.Errorf("connect to %s: %w", addr, err)
		}
	}
	return c, nil
}

func (c *clients) close() {
	for _, conn := range c.conns {
		conn.Close()
	}
}

// stats calls GetStats on addr.
func stats(ctx context.Context, addr, adminToken string) (*sessiondv1.GetStatsResponse, error) {
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if adminToken != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+adminToken)
	}
	return sessiondv1.NewSessionServiceClient(conn).GetStats(ctx, &sessiondv1.GetStatsRequest{})
}

// statsMisses is GetStats's cache.postgres_queries: the lookups sessiond
// sent to Postgres (concurrent misses for one token share one).
func statsMisses(ctx context.Context, addr, adminToken string) (int64, error) {
	st, err := stats(ctx, addr, adminToken)
	if err != nil {
		return 0, err
	}
	return st.GetCache().GetPostgresQueries(), nil
}
