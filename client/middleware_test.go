package client_test

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/sessiond/sessiond/client"
	"github.com/sessiond/sessiond/internal/server/servertest"
)

// unreachable is a client of an address where nothing listens: sessiond
// cannot answer.
func unreachable(t *testing.T) *client.Client {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	lis.Close()
	return dial(t, addr, client.WithInsecure(), client.WithTimeout(time.Second))
}

// whoami answers with the session's user, or "anonymous".
var whoami = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
	if s := client.SessionFrom(r.Context()); s != nil {
		io.WriteString(w, s.GetUserId())
		return
	}
	io.WriteString(w, "anonymous")
})

func serve(t *testing.T, h http.Handler, header ...string) (*http.Response, string) {
	t.Helper()
	req := httptest.NewRequest("GET", "/orders", nil)
	for i := 0; i < len(header); i += 2 {
		req.Header.Add(header[i], header[i+1])
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec.Result(), rec.Body.String()
}

func TestHTTPMiddleware(t *testing.T) {
	env := servertest.New(t)
	in := env.Start()
	s, banned := env.AddSession(), env.AddSession()
	env.BanUser(banned)
	c := dial(t, in.Addr, client.WithInsecure())
	down := unreachable(t)

	for _, tt := range []struct {
		name   string
		h      http.Handler
		header []string
		code   int
		body   string
	}{
		{"cookie", client.HTTPMiddleware(c)(whoami), []string{"Cookie", "theme=dark; session=" + s.Token}, 200, s.UserID},
		{"bearer", client.HTTPMiddleware(c)(whoami), []string{"Authorization", "Bearer " + s.Token}, 200, s.UserID},
		{"configured cookie", client.HTTPMiddleware(c, client.WithCookie("sid"))(whoami), []string{"Cookie", "sid=" + s.Token}, 200, s.UserID},
		{"default cookie ignored when another is configured", client.HTTPMiddleware(c, client.WithCookie("sid"))(whoami), []string{"Cookie", "session=" + s.Token}, 401, "no session token"},
		{"no token", client.HTTPMiddleware(c)(whoami), nil, 401, "no session token"},
		{"unknown token", client.HTTPMiddleware(c)(whoami), []string{"Cookie", "session=unknown"}, 401, "no such session"},
		{"banned user", client.HTTPMiddleware(c)(whoami), []string{"Cookie", "session=" + banned.Token}, 401, "session revoked"},
		{"malformed token", client.HTTPMiddleware(c)(whoami), []string{"Authorization", "Bearer " + strings.Repeat("x", 600)}, 401, "malformed session token"},
		{"sessiond unreachable: fail closed", client.HTTPMiddleware(down)(whoami), []string{"Cookie", "session=" + s.Token}, 503, "session store unavailable"},
		{"sessiond unreachable, fail open: anonymous", client.HTTPMiddleware(down, client.WithFailOpen())(whoami), []string{"Cookie", "session=" + s.Token}, 200, "anonymous"},
		{"fail open still refuses an invalid session", client.HTTPMiddleware(c, client.WithFailOpen())(whoami), []string{"Cookie", "session=unknown"}, 401, "no such session"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			resp, body := serve(t, tt.h, tt.header...)
			if resp.StatusCode != tt.code || strings.TrimSpace(body) != tt.body {
				t.Fatalf("got %d %q, want %d %q", resp.StatusCode, body, tt.code, tt.body)
			}
			if tt.code == 401 && !strings.HasPrefix(resp.Header.Get("WWW-Authenticate"), "Bearer") {
				t.Errorf("401 without WWW-Authenticate: %v", resp.Header)
			}
		})
	}
}

// fakeStream is the part of a server stream the stream interceptor reads.
type fakeStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (f fakeStream) Context() context.Context { return f.ctx }

func TestServerInterceptors(t *testing.T) {
	env := servertest.New(t)
	in := env.Start()
	s := env.AddSession()
	c := dial(t, in.Addr, client.WithInsecure())
	down := unreachable(t)

	for _, tt := range []struct {
		name string
		c    *client.Client
		opts []client.MiddlewareOption
		md   []string
		code codes.Code
		user string
	}{
		{"bearer", c, nil, []string{"authorization", "Bearer " + s.Token}, codes.OK, s.UserID},
		{"cookie", c, nil, []string{"cookie", "session=" + s.Token}, codes.OK, s.UserID},
		{"configured cookie", c, []client.MiddlewareOption{client.WithCookie("sid")}, []string{"cookie", "sid=" + s.Token}, codes.OK, s.UserID},
		{"no token", c, nil, nil, codes.Unauthenticated, ""},
		{"unknown token", c, nil, []string{"authorization", "Bearer unknown"}, codes.Unauthenticated, ""},
		{"sessiond unreachable: fail closed", down, nil, []string{"authorization", "Bearer " + s.Token}, codes.Unavailable, ""},
		{"sessiond unreachable, fail open", down, []client.MiddlewareOption{client.WithFailOpen()}, []string{"authorization", "Bearer " + s.Token}, codes.OK, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ctx := metadata.NewIncomingContext(t.Context(), metadata.Pairs(tt.md...))
			var user string
			var called bool
			_, err := client.UnaryServerInterceptor(tt.c, tt.opts...)(ctx, nil, &grpc.UnaryServerInfo{FullMethod: "/shop.v1.Orders/List"},
				func(ctx context.Context, _ any) (any, error) {
					called, user = true, client.SessionFrom(ctx).GetUserId()
					return nil, nil
				})
			if status.Code(err) != tt.code || user != tt.user || called != (tt.code == codes.OK) {
				t.Errorf("unary: %v, user %q, handler called %v; want %v, %q", err, user, called, tt.code, tt.user)
			}
			user, called = "", false
			err = client.StreamServerInterceptor(tt.c, tt.opts...)(nil, fakeStream{ctx: ctx}, &grpc.StreamServerInfo{FullMethod: "/shop.v1.Orders/Watch"},
				func(_ any, ss grpc.ServerStream) error {
					called, user = true, client.SessionFrom(ss.Context()).GetUserId()
					return nil
				})
			if status.Code(err) != tt.code || user != tt.user || called != (tt.code == codes.OK) {
				t.Errorf("stream: %v, user %q, handler called %v; want %v, %q", err, user, called, tt.code, tt.user)
			}
		})
	}
}
