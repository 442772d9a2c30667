package server

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors"

	sessiondv1 "github.com/sessiond/sessiond/gen/sessiond/v1"
	"github.com/sessiond/sessiond/internal/extauthz"
	"github.com/sessiond/sessiond/internal/forwardauth"
)

// callers are the fronts for gateways: Envoy ext_authz on the gRPC port
// (--ext-authz) and HTTP forward-auth on its own port (--http-addr). Both ask
// the service's ValidateSession in process, so they share its token checks,
// timeouts, read-through and counters with the gRPC API.
type callers struct {
	lis net.Listener        // nil when forward-auth is off
	fa  *forwardauth.Server // nil when forward-auth is off
	err chan error          // forward-auth's Serve result
}

// setupCallers registers ext_authz and opens the forward-auth listener. It
// runs last in New: nothing fails after the listener is open.
func (s *Server) setupCallers() error {
	validate := func(ctx context.Context, token string) (*sessiondv1.ValidateSessionResponse, error) {
		return s.svc.ValidateSession(ctx, &sessiondv1.ValidateSessionRequest{Token: token})
	}
	if s.cfg.ExtAuthz {
		authv3.RegisterAuthorizationServer(s.grpc, extauthz.New(validate, s.cfg.SessionCookie))
	}
	if s.cfg.HTTPAddr == "" {
		return nil
	}
	var tc *tls.Config
	if s.cfg.TLSCert != "" {
		var err error
		if tc, err = serverTLS(s.cfg); err != nil {
			return err
		}
	}
	lis, err := net.Listen("tcp", s.cfg.HTTPAddr)
	if err != nil {
		return fmt.Errorf("listen on --http-addr %s: %w", s.cfg.HTTPAddr, err)
	}
	s.callers = callers{
		lis: lis,
		fa:  forwardauth.NewServer(forwardauth.Handler(validate, s.cfg.SessionCookie), tc, s.log),
		err: make(chan error, 1),
	}
	return nil
}

// HTTPAddr is the forward-auth listener's address, nil when --http-addr is
// empty. It is known from New on.
func (s *Server) HTTPAddr() net.Addr {
	if s.callers.lis == nil {
		return nil
	}
	return s.callers.lis.Addr()
}

// serveCallers starts forward-auth, if on. Its failure arrives on
// s.callers.err (a nil channel, which never delivers, when off).
func (s *Server) serveCallers() {
	if s.callers.fa == nil {
		return
	}
	go func() {
		if err := s.callers.fa.Serve(s.callers.lis); err != nil {
			s.callers.err <- fmt.Errorf("forward-auth serve: %w", err)
		}
	}()
}

// stopCallers stops forward-auth the way the gRPC server stops: no new
// requests, in-flight ones finish within the shutdown timeout. The returned
// channel closes when it is done.
func (s *Server) stopCallers() <-chan struct{} {
	done := make(chan struct{})
	if s.callers.fa == nil {
		close(done)
		return done
	}
	go func() {
		defer close(done)
		ctx, cancel := context.WithTimeout(context.Background(), s.cfg.ShutdownTimeout)
		defer cancel()
		s.callers.fa.Shutdown(ctx)
	}()
	return done
}

// isHotPath reports whether a call is one per request of a caller's own
// traffic, which is not logged as it finishes (an info line per request
// would cost every caller); ValidateSession logs its own debug record.
func isHotPath(c interceptors.CallMeta) bool {
	return callIs(c, sessiondv1.SessionService_ValidateSession_FullMethodName) || callIs(c, extauthz.CheckMethod)
}

// callIs reports whether c is the method fullMethod ("/service/method")
// without building c's full name: CallMeta.FullMethod allocates, and the
// interceptors ask on every call.
func callIs(c interceptors.CallMeta, fullMethod string) bool {
	n := len(c.Service)
	return len(fullMethod) == n+len(c.Method)+2 && fullMethod[0] == '/' && fullMethod[n+1] == '/' &&
		fullMethod[1:n+1] == c.Service && fullMethod[n+2:] == c.Method
}
