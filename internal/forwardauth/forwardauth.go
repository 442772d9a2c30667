// Package forwardauth answers the HTTP authorization subrequests of
// gateways: nginx auth_request, Caddy forward_auth, Traefik forwardAuth (as
// Authelia, Oathkeeper and oauth2-proxy answer them), from sessiond's own
// ValidateSession.
//
// GET /v1/auth (any method: gateways differ) reads the session token from
// `Authorization: Bearer` or the session cookie of the original request,
// whose headers the gateway forwards, and answers 200 with X-User-Id,
// X-Session-Id and X-User-Email for the gateway to copy to the upstream; 401
// with WWW-Authenticate for no or an invalid session; 503 when sessiond
// cannot tell (fail closed). The original method and URI headers
// (X-Original-URI, X-Forwarded-Method, ...) play no part in the decision.
package forwardauth

import (
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/sessiond/sessiond/internal/authn"
)

// Path is where the handler answers.
const Path = "/v1/auth"

// Limits of the HTTP server: a gateway keeps connections open and sends a
// copy of the client's headers; nothing else comes in.
const (
	maxHeaderBytes    = 64 << 10 // the client's headers, cookies included; nginx's default allows 32 KiB
	readHeaderTimeout = 5 * time.Second
	idleTimeout       = 2 * time.Minute
)

// Handler returns the forward-auth handler asking validate (the service's
// ValidateSession, so the same token checks, timeouts and counters apply),
// reading the token from `Authorization: Bearer` or the named cookie. It
// answers Path only; anything else is 404.
func Handler(validate authn.Validate, cookie string) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc(Path, func(w http.ResponseWriter, r *http.Request) {
		token := authn.Token(r.Header.Get("Authorization"), r.Header.Values("Cookie"), cookie)
		d := authn.Check(r.Context(), validate, token)
		h := w.Header()
		h.Set("Cache-Control", "no-store")
		switch d.Outcome {
		case authn.Allow:
			for _, id := range authn.Identity(d.Session) {
				// Sent even when empty, so that a gateway copying it
				// overwrites (nginx: drops) the client's copy.
				h.Set(id.Name, id.Value)
			}
			w.WriteHeader(http.StatusOK)
		case authn.Deny:
			h.Set("WWW-Authenticate", `Bearer realm="sessiond", error="invalid_token"`)
			http.Error(w, d.Why, http.StatusUnauthorized)
		default:
			h.Set("Retry-After", "1")
			http.Error(w, d.Why, http.StatusServiceUnavailable)
		}
	})
	return mux
}

// Server is the forward-auth HTTP server.
type Server struct {
	http *http.Server
	log  *slog.Logger
}

// NewServer returns a server for h with the limits above. With tc set (the
// gRPC listener's TLS settings) it serves HTTPS, so --tls-cert and
// --tls-client-ca cover both ports; nil means plain HTTP.
func NewServer(h http.Handler, tc *tls.Config, log *slog.Logger) *Server {
	return &Server{log: log, http: &http.Server{
		Handler:           h,
		TLSConfig:         tc,
		MaxHeaderBytes:    maxHeaderBytes,
		ReadHeaderTimeout: readHeaderTimeout,
		IdleTimeout:       idleTimeout,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}}
}

// Serve serves on lis until Shutdown, and then returns nil.
func (s *Server) Serve(lis net.Listener) error {
	s.log.Info("forward-auth serving", "addr", lis.Addr().String(), "path", Path, "tls", s.http.TLSConfig != nil)
	var err error
	if s.http.TLSConfig != nil {
		err = s.http.ServeTLS(lis, "", "") // the certificate is in TLSConfig
	} else {
		err = s.http.Serve(lis)
	}
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// Shutdown stops accepting, lets in-flight requests finish until ctx ends,
// then closes what is left.
func (s *Server) Shutdown(ctx context.Context) {
	if err := s.http.Shutdown(ctx); err != nil {
		s.log.Warn("forward-auth requests did not finish in time; closing them", "error", err)
		s.http.Close()
	}
}
