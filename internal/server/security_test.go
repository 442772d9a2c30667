package server_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"

	sessiondv1 "github.com/sessiond/sessiond/gen/sessiond/v1"
	"github.com/sessiond/sessiond/internal/config"
	"github.com/sessiond/sessiond/internal/devstack/devtest"
	"github.com/sessiond/sessiond/internal/server"
	"github.com/sessiond/sessiond/internal/server/servertest"
)

// clientCreds is how a test client connects.
type clientCreds struct {
	tls   bool
	roots *x509.CertPool
	certs []tls.Certificate
}

func (c clientCreds) transport() credentials.TransportCredentials {
	if !c.tls {
		return insecure.NewCredentials()
	}
	return credentials.NewTLS(&tls.Config{MinVersion: tls.VersionTLS12, RootCAs: c.roots, Certificates: c.certs})
}

func (c clientCreds) dial(t *testing.T, addr string) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(c.transport()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// addr is where h's server listens (its own client was made for it).
func (h *harness) addr() string { return h.conn.Target() }

func TestTransportSecurity(t *testing.T) {
	p := devtest.NewPKI(t)
	plain := clientCreds{}
	trusting := clientCreds{tls: true, roots: p.CAPool}
	distrusting := clientCreds{tls: true, roots: p.OtherCAPool}
	withCert := clientCreds{tls: true, roots: p.CAPool, certs: []tls.Certificate{p.Client}}
	withStrangerCert := clientCreds{tls: true, roots: p.CAPool, certs: []tls.Certificate{p.Stranger}}

	type client struct {
		name  string
		creds clientCreds
		ok    bool
	}
	for _, mode := range []struct {
		name    string
		opt     option
		harness clientCreds // the harness's own client, which waits for SERVING
		clients []client
	}{
		{"plaintext", func(*config.Config) {}, plain, []client{
			{"plaintext client", plain, true},
			{"TLS client", trusting, false},
		}},
		{"TLS", func(c *config.Config) { c.TLSCert, c.TLSKey = p.ServerCert, p.ServerKey }, trusting, []client{
			{"client trusting the CA", trusting, true},
			{"client trusting the CA, with a certificate it need not show", withCert, true},
			{"plaintext client", plain, false},
			{"client not trusting the CA", distrusting, false},
		}},
		{"mutual TLS", func(c *config.Config) { c.TLSCert, c.TLSKey, c.TLSClientCA = p.ServerCert, p.ServerKey, p.CAFile }, withCert, []client{
			{"client with a certificate from the CA", withCert, true},
			{"client without a certificate", trusting, false},
			{"client with a certificate from another CA", withStrangerCert, false},
			{"plaintext client", plain, false},
		}},
	} {
		t.Run(mode.name, func(t *testing.T) {
			h := prepare(t, devtest.Database(t), devtest.RedisURL(t), mode.opt)
			h.creds = mode.harness.transport()
			h.run()
			s := h.addSession(h.addUser(user{}), session{})
			for _, c := range mode.clients {
				t.Run(c.name, func(t *testing.T) {
					conn := c.creds.dial(t, h.addr())
					ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
					defer cancel()
					resp, err := sessiondv1.NewSessionServiceClient(conn).ValidateSession(ctx, &sessiondv1.ValidateSessionRequest{Token: s.token})
					if !c.ok {
						if status.Code(err) != codes.Unavailable {
							t.Fatalf("got %v, %v; want the connection refused (Unavailable)", resp, err)
						}
						return
					}
					if err != nil {
						t.Fatalf("ValidateSession: %v", err)
					}
					if !resp.GetValid() {
						t.Errorf("valid=%v reason=%v, want a valid session", resp.GetValid(), resp.GetReason())
					}
					if r, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
						t.Errorf("health Check: %v, %v", r, err)
					}
				})
			}
		})
	}
}

// adminCase is a call's credential and the code the admin RPCs answer it.
type adminCase struct {
	name string
	md   metadata.MD
	want codes.Code
}

func TestAdminToken(t *testing.T) {
	const token = "s3cret-admin-token"
	bearer := func(v string) metadata.MD { return metadata.Pairs("authorization", v) }
	// The admin RPCs other than InvalidateSessions, which the table checks apart.
	calls := map[string]func(ctx context.Context, c sessiondv1.SessionServiceClient) error{
		"GetStats": func(ctx context.Context, c sessiondv1.SessionServiceClient) error {
			_, err := c.GetStats(ctx, &sessiondv1.GetStatsRequest{})
			return err
		},
		"WarmCache": func(ctx context.Context, c sessiondv1.SessionServiceClient) error {
			stream, err := c.WarmCache(ctx, &sessiondv1.WarmCacheRequest{EstimateOnly: true})
			if err != nil {
				return err
			}
			for {
				if _, err := stream.Recv(); err != nil {
					if errors.Is(err, io.EOF) {
						return nil
					}
					return err
				}
			}
		},
	}
	for _, srv := range []struct {
		name  string
		token string
		cases []adminCase
	}{
		{"token configured", token, []adminCase{
			{"no header", nil, codes.Unauthenticated},
			{"not bearer", bearer("Basic " + token), codes.Unauthenticated},
			{"no scheme", bearer(token), codes.Unauthenticated},
			{"empty bearer", bearer("Bearer "), codes.Unauthenticated},
			{"wrong token", bearer("Bearer wrong"), codes.PermissionDenied},
			{"a prefix of the token", bearer("Bearer " + token[:5]), codes.PermissionDenied},
			{"the token and more", bearer("Bearer " + token + "x"), codes.PermissionDenied},
			{"right token", bearer("Bearer " + token), codes.OK},
			{"right token, scheme in lower case", bearer("bearer " + token), codes.OK},
		}},
		{"no token configured", "", []adminCase{
			{"no header", nil, codes.OK},
			{"some header", bearer("Bearer whatever"), codes.OK},
		}},
	} {
		t.Run(srv.name, func(t *testing.T) {
			h := start(t, devtest.Database(t), devtest.RedisURL(t), func(c *config.Config) { c.AdminToken = srv.token })
			s := h.addSession(h.addUser(user{}), session{})
			for _, tt := range srv.cases {
				t.Run(tt.name, func(t *testing.T) {
					ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
					defer cancel()
					if tt.md != nil {
						ctx = metadata.NewOutgoingContext(ctx, tt.md)
					}
					for name, call := range calls {
						err := call(ctx, h.client)
						if status.Code(err) != tt.want {
							t.Errorf("%s: %v, want %v", name, err, tt.want)
						}
						if err != nil && strings.Contains(err.Error(), token) {
							t.Errorf("%s: the error repeats the token: %v", name, err)
						}
					}
					// Past the check InvalidateSessions is the service's business.
					_, err := h.client.InvalidateSessions(ctx, &sessiondv1.InvalidateSessionsRequest{Tokens: []string{newToken(t)}})
					switch got := status.Code(err); {
					case tt.want != codes.OK && got != tt.want:
						t.Errorf("InvalidateSessions: %v, want %v", err, tt.want)
					case tt.want == codes.OK && (got == codes.Unauthenticated || got == codes.PermissionDenied):
						t.Errorf("InvalidateSessions: %v, want it let through", err)
					}

					// The rest needs no credential, whatever the header says.
					if r, err := h.client.ValidateSession(ctx, &sessiondv1.ValidateSessionRequest{Token: s.token}); err != nil || !r.GetValid() {
						t.Errorf("ValidateSession: %v, %v", r, err)
					}
					if _, err := h.health.Check(ctx, &healthpb.HealthCheckRequest{Service: server.ServiceName}); err != nil {
						t.Errorf("health Check: %v", err)
					}
					if err := listServices(ctx, h.conn); err != nil {
						t.Errorf("reflection: %v", err)
					}
				})
			}
		})
	}
}

func listServices(ctx context.Context, conn *grpc.ClientConn) error {
	stream, err := reflectionpb.NewServerReflectionClient(conn).ServerReflectionInfo(ctx)
	if err != nil {
		return err
	}
	if err := stream.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{}}); err != nil {
		return err
	}
	_, err = stream.Recv()
	_ = stream.CloseSend()
	return err
}

// Bad security settings stop New before anything starts, naming the setting
// (and the file); the token never shows.
func TestSecurityConfigErrors(t *testing.T) {
	p := devtest.NewPKI(t)
	missing := filepath.Join(t.TempDir(), "missing.pem")
	notPEM := filepath.Join(t.TempDir(), "not.pem")
	if err := os.WriteFile(notPEM, []byte("hello"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name string
		opt  option
		want []string
	}{
		{"cert without key", func(c *config.Config) { c.TLSCert = p.ServerCert }, []string{"--tls-key", "required with --tls-cert"}},
		{"key without cert", func(c *config.Config) { c.TLSKey = p.ServerKey }, []string{"--tls-cert", "required with --tls-key"}},
		{"client CA without TLS", func(c *config.Config) { c.TLSClientCA = p.CAFile }, []string{"--tls-client-ca", "requires --tls-cert"}},
		{"missing cert file", func(c *config.Config) { c.TLSCert, c.TLSKey = missing, p.ServerKey }, []string{"--tls-cert", missing}},
		{"missing key file", func(c *config.Config) { c.TLSCert, c.TLSKey = p.ServerCert, missing }, []string{"--tls-key", missing}},
		{"cert and key that do not match", func(c *config.Config) { c.TLSCert, c.TLSKey = p.ServerCert, notPEM }, []string{"--tls-cert", "--tls-key", notPEM}},
		{"missing client CA", func(c *config.Config) { c.TLSCert, c.TLSKey, c.TLSClientCA = p.ServerCert, p.ServerKey, missing }, []string{"--tls-client-ca", missing}},
		{"client CA not PEM", func(c *config.Config) { c.TLSCert, c.TLSKey, c.TLSClientCA = p.ServerCert, p.ServerKey, notPEM }, []string{"--tls-client-ca", notPEM}},
		{"token with a space", func(c *config.Config) { c.AdminToken = "two words" }, []string{"--admin-token", "$SESSIOND_ADMIN_TOKEN"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cfg := config.Default()
			// Never reached: the settings are refused first.
			cfg.DatabaseURL, cfg.RedisURL = "postgres://127.0.0.1:1/none", "redis://127.0.0.1:1"
			tt.opt(&cfg)
			srv, err := server.New(t.Context(), cfg, slog.New(slog.DiscardHandler))
			if err == nil {
				t.Fatalf("New succeeded (%v), want an error", srv)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error lacks %q: %v", w, err)
				}
			}
			if strings.Contains(err.Error(), "two words") {
				t.Errorf("the error repeats the token: %v", err)
			}
		})
	}
}

// The server tells, once at start, that the admin RPCs are open, and never
// logs the token.
func TestAdminTokenLogging(t *testing.T) {
	for _, tt := range []struct {
		name, token string
		wantWarning bool
	}{
		{"no token", "", true},
		{"token", "s3cret-admin-token", false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var buf strings.Builder
			_, stop := servertest.Offline(t, slog.New(slog.NewTextHandler(&buf, nil)),
				func(c *config.Config) { c.AdminToken = tt.token })
			stop()
			log := buf.String()
			if got := strings.Count(log, "open to every caller"); (got == 1) != tt.wantWarning || got > 1 {
				t.Errorf("%d warnings that admin RPCs are open, want %v:\n%s", got, tt.wantWarning, log)
			}
			if tt.token != "" && strings.Contains(log, tt.token) {
				t.Errorf("the log holds the token:\n%s", log)
			}
		})
	}
}
