package server

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"os"

	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/auth"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/selector"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	sessiondv1 "github.com/sessiond/sessiond/gen/sessiond/v1"
	"github.com/sessiond/sessiond/internal/config"
)

// securityOptions are the gRPC server options for cfg's transport and admin
// credential: TLS (or mutual TLS) credentials when --tls-cert is set, and the
// admin-token check on the admin RPCs when --admin-token is set. Their
// interceptors chain after serverOptions' own, so a refused call is still
// logged. The PEM files are read here, once: a renewed certificate takes a
// restart (reloading on change, e.g. through tls.Config.GetCertificate, is
// out of scope).
func securityOptions(cfg config.Config, log *slog.Logger) ([]grpc.ServerOption, error) {
	var opts []grpc.ServerOption
	if cfg.TLSCert != "" {
		tc, err := serverTLS(cfg)
		if err != nil {
			return nil, err
		}
		opts = append(opts, grpc.Creds(credentials.NewTLS(tc)))
	}
	if cfg.AdminToken == "" {
		log.Warn("no --admin-token: WarmCache, InvalidateSessions and GetStats are open to every caller")
		return opts, nil
	}
	if cfg.TLSCert == "" {
		log.Warn("--admin-token without --tls-cert: admin callers send the token in clear")
	}
	check := adminAuth(cfg.AdminToken)
	admin := selector.MatchFunc(func(_ context.Context, c interceptors.CallMeta) bool { return isAdminMethod(c) })
	return append(opts,
		grpc.ChainUnaryInterceptor(selector.UnaryServerInterceptor(auth.UnaryServerInterceptor(check), admin)),
		grpc.ChainStreamInterceptor(selector.StreamServerInterceptor(auth.StreamServerInterceptor(check), admin)),
	), nil
}

// isAdminMethod reports whether a call needs the admin credential: every
// SessionService RPC except ValidateSession (today WarmCache,
// InvalidateSessions and GetStats). An RPC added later is admin-only until
// it is listed here as public: the mistake then shows as a refused call, not
// as an open one. Health and reflection are other services and need none.
func isAdminMethod(c interceptors.CallMeta) bool {
	return c.Service == ServiceName && !callIs(c, sessiondv1.SessionService_ValidateSession_FullMethodName)
}

// adminAuth returns the check of the admin credential, sent as
// `authorization: Bearer <token>` metadata: none or malformed is
// Unauthenticated, another token PermissionDenied. It compares SHA-256
// digests in constant time, so neither the content nor the length of the
// token leaks through timing. The token is never logged or echoed.
func adminAuth(token string) auth.AuthFunc {
	want := sha256.Sum256([]byte(token))
	return func(ctx context.Context) (context.Context, error) {
		got, err := auth.AuthFromMD(ctx, "bearer")
		if err != nil || got == "" {
			return nil, status.Error(codes.Unauthenticated, "admin RPC: send the server's --admin-token as metadata `authorization: Bearer <token>`")
		}
		sum := sha256.Sum256([]byte(got))
		if subtle.ConstantTimeCompare(sum[:], want[:]) != 1 {
			return nil, status.Error(codes.PermissionDenied, "admin RPC: wrong admin token")
		}
		return ctx, nil
	}
}

// serverTLS loads the listener's certificate and, with --tls-client-ca, the
// CAs whose client certificates it requires. Errors name the flag and file.
func serverTLS(cfg config.Config) (*tls.Config, error) {
	certPEM, err := os.ReadFile(cfg.TLSCert)
	if err != nil {
		return nil, fmt.Errorf("invalid --tls-cert: %w", err)
	}
	keyPEM, err := os.ReadFile(cfg.TLSKey)
	if err != nil {
		return nil, fmt.Errorf("invalid --tls-key: %w", err)
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("invalid --tls-cert %s / --tls-key %s: %w", cfg.TLSCert, cfg.TLSKey, err)
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert}}
	if cfg.TLSClientCA != "" {
		caPEM, err := os.ReadFile(cfg.TLSClientCA)
		if err != nil {
			return nil, fmt.Errorf("invalid --tls-client-ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(caPEM) {
			return nil, fmt.Errorf("invalid --tls-client-ca %s: no PEM certificate in it", cfg.TLSClientCA)
		}
		tc.ClientCAs = pool
		tc.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return tc, nil
}
