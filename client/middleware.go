package client

import (
	"context"
	"net/http"

	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/auth"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	sessiondv1 "github.com/sessiond/sessiond/gen/sessiond/v1"
	"github.com/sessiond/sessiond/internal/authn"
)

type sessionKey struct{}

// SessionFrom returns the session the middleware or an interceptor put into
// ctx; nil when there is none (outside them, or with WithFailOpen when
// sessiond could not answer).
func SessionFrom(ctx context.Context) *sessiondv1.Session {
	s, _ := ctx.Value(sessionKey{}).(*sessiondv1.Session)
	return s
}

// MiddlewareOption configures HTTPMiddleware and the interceptors.
type MiddlewareOption func(*middlewareOptions)

type middlewareOptions struct {
	cookie   string
	failOpen bool
}

// WithCookie reads the token from the named cookie instead of "session".
// An `Authorization: Bearer` header, when present, is read first.
func WithCookie(name string) MiddlewareOption {
	return func(o *middlewareOptions) { o.cookie = name }
}

// WithFailOpen lets a request through without a session when sessiond
// cannot answer (unreachable, deadline passed, Postgres down for an uncached
// session), instead of 503 / UNAVAILABLE. The handler then finds
// SessionFrom(ctx) nil and must treat the caller as anonymous. Invalid
// sessions are refused either way. Only for endpoints where serving an
// anonymous caller is acceptable.
func WithFailOpen() MiddlewareOption {
	return func(o *middlewareOptions) { o.failOpen = true }
}

func newMiddlewareOptions(opts []MiddlewareOption) middlewareOptions {
	o := middlewareOptions{cookie: authn.DefaultCookie}
	for _, opt := range opts {
		opt(&o)
	}
	return o
}

// HTTPMiddleware validates the session of every request before next sees
// it: the token from `Authorization: Bearer` or the session cookie; a valid
// session goes into the request's context (SessionFrom); no session or an
// invalid one is answered 401 with a WWW-Authenticate header; when sessiond
// cannot answer, 503 (fail closed) unless WithFailOpen.
func HTTPMiddleware(c *Client, opts ...MiddlewareOption) func(http.Handler) http.Handler {
	o := newMiddlewareOptions(opts)
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			token := authn.Token(r.Header.Get("Authorization"), r.Header.Values("Cookie"), o.cookie)
			d := authn.Check(r.Context(), c.Validate, token)
			switch {
			case d.Outcome == authn.Allow:
				next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), sessionKey{}, d.Session)))
			case d.Outcome == authn.Unknown && o.failOpen:
				next.ServeHTTP(w, r)
			case d.Outcome == authn.Deny:
				w.Header().Set("WWW-Authenticate", `Bearer realm="sessiond", error="invalid_token"`)
				w.Header().Set("Cache-Control", "no-store")
				http.Error(w, d.Why, http.StatusUnauthorized)
			default:
				w.Header().Set("Retry-After", "1")
				w.Header().Set("Cache-Control", "no-store")
				http.Error(w, d.Why, http.StatusServiceUnavailable)
			}
		})
	}
}

// UnaryServerInterceptor validates the session of every call before the
// handler sees it: the token from `authorization: Bearer` metadata or the
// session cookie in `cookie` metadata (as grpc-gateway and gRPC-Web proxies
// forward it); a valid session goes into the context (SessionFrom); none or
// an invalid one is UNAUTHENTICATED; when sessiond cannot answer,
// UNAVAILABLE (fail closed) unless WithFailOpen. A service implementing
// auth.ServiceAuthFuncOverride decides for itself.
func UnaryServerInterceptor(c *Client, opts ...MiddlewareOption) grpc.UnaryServerInterceptor {
	return auth.UnaryServerInterceptor(authFunc(c, newMiddlewareOptions(opts)))
}

// StreamServerInterceptor is UnaryServerInterceptor for streaming calls.
func StreamServerInterceptor(c *Client, opts ...MiddlewareOption) grpc.StreamServerInterceptor {
	return auth.StreamServerInterceptor(authFunc(c, newMiddlewareOptions(opts)))
}

func authFunc(c *Client, o middlewareOptions) auth.AuthFunc {
	return func(ctx context.Context) (context.Context, error) {
		md, _ := metadata.FromIncomingContext(ctx)
		var authz string
		if v := md.Get("authorization"); len(v) > 0 {
			authz = v[0]
		}
		d := authn.Check(ctx, c.Validate, authn.Token(authz, md.Get("cookie"), o.cookie))
		switch {
		case d.Outcome == authn.Allow:
			return context.WithValue(ctx, sessionKey{}, d.Session), nil
		case d.Outcome == authn.Unknown && o.failOpen:
			return ctx, nil
		case d.Outcome == authn.Deny:
			return nil, status.Error(codes.Unauthenticated, d.Why)
		}
		return nil, status.Error(codes.Unavailable, d.Why)
	}
}
