// Package client is the Go client of sessiond, for services that validate
// their callers' sessions: Dial, Validate, and middleware for net/http and
// gRPC servers that put the caller's session into the request's context.
//
// Dial brings the defaults a caller would otherwise have to know: calls are
// spread with round_robin over every address the target resolves to (give it
// a headless Service, dns:///sessiond-headless.auth:50051: a ClusterIP would
// pin gRPC's one long-lived connection to one pod) whose gRPC health says
// SERVING (an instance still warming its cache, or shutting down, gets no
// calls; when none is SERVING, calls fail with UNAVAILABLE); ValidateSession, being
// idempotent, is retried on UNAVAILABLE (an instance restarting, Postgres
// briefly unreachable from one instance), on another instance; each call gets
// a deadline (DefaultTimeout) unless its context has one; idle connections are
// pinged every 30 s, within what sessiond accepts (at most every 10 s), so a
// dead instance is noticed without a request paying for it.
//
// The client keeps no cache, on purpose: sessiond's own cache is the one a
// revocation reaches (a ban or a deleted session is refused by every instance
// within milliseconds), and a copy here would keep saying yes for as long as
// it lived. sessiond answers a cached session in tens of microseconds.
package client

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	_ "google.golang.org/grpc/health" // client-side health checking, for healthCheckConfig
	"google.golang.org/grpc/keepalive"

	sessiondv1 "github.com/sessiond/sessiond/gen/sessiond/v1"
)

// DefaultTimeout bounds a Validate call whose context has no deadline:
// long enough for an answer from Postgres under load and for a retry on
// another instance, short enough that a request waiting on it does not hang.
const DefaultTimeout = time.Second

// serviceConfig is the gRPC service config Dial applies: round_robin over
// the instances whose health says SERVING (sessiond turns SERVING once its
// cache is warm, and NOT_SERVING first thing on shutdown, so a rolling
// restart drains without failed calls), and ValidateSession retried on
// UNAVAILABLE (at most 4 attempts, backing off from 10 ms, all within the
// call's deadline). The other RPCs are not retried: WarmCache streams, and
// the admin RPCs are the operator's.
const serviceConfig = `{
  "loadBalancingConfig": [{"round_robin": {}}],
  "healthCheckConfig": {"serviceName": "sessiond.v1.SessionService"},
  "methodConfig": [{
    "name": [{"service": "sessiond.v1.SessionService", "method": "ValidateSession"}],
    "retryPolicy": {
      "maxAttempts": 4,
      "initialBackoff": "0.01s",
      "maxBackoff": "0.1s",
      "backoffMultiplier": 2,
      "retryableStatusCodes": ["UNAVAILABLE"]
    }
  }]
}`

// keepaliveParams stay within sessiond's enforcement policy (MinTime 10 s,
// pings without calls permitted): a client pinging more often is sent
// GOAWAY "too_many_pings".
var keepaliveParams = keepalive.ClientParameters{
	Time:                30 * time.Second,
	Timeout:             10 * time.Second,
	PermitWithoutStream: true,
}

// Client validates session tokens against sessiond. It is safe for
// concurrent use; make one per process and share it.
type Client struct {
	conn    *grpc.ClientConn
	svc     sessiondv1.SessionServiceClient
	timeout time.Duration
}

// Option configures Dial.
type Option func(*options)

type options struct {
	tls      *tls.Config // nil with insecure
	tlsSet   bool
	insecure bool
	bearer   string
	timeout  time.Duration
	dial     []grpc.DialOption
}

// WithTLS verifies sessiond's certificate against rootCAs (nil: the
// system's roots). TLS with the system's roots is also what Dial does
// without a transport option.
func WithTLS(rootCAs *x509.CertPool) Option {
	return func(o *options) {
		o.tlsConfig().RootCAs = rootCAs
	}
}

// WithClientCertificate presents cert to sessiond (mutual TLS, for a
// sessiond started with --tls-client-ca). It implies TLS.
func WithClientCertificate(cert tls.Certificate) Option {
	return func(o *options) {
		c := o.tlsConfig()
		c.Certificates = append(c.Certificates, cert)
	}
}

// WithTLSConfig sets the whole TLS configuration (server name, versions,
// ...). It replaces what WithTLS and WithClientCertificate set before it.
func WithTLSConfig(c *tls.Config) Option {
	return func(o *options) {
		o.tls, o.tlsSet = c.Clone(), true
	}
}

// WithInsecure speaks plaintext gRPC, for a sessiond without --tls-cert
// (inside a mesh that encrypts for it, or on one host). Dial refuses it
// together with a TLS option or a bearer token.
func WithInsecure() Option { return func(o *options) { o.insecure = true } }

// WithBearerToken sends `authorization: Bearer <token>` with every call: for
// a proxy or mesh in front of sessiond that requires one, or for the admin
// RPCs through Conn. It requires TLS.
func WithBearerToken(token string) Option { return func(o *options) { o.bearer = token } }

// WithTimeout sets the deadline of a Validate call whose context has none
// (DefaultTimeout otherwise); 0 leaves such calls unbounded.
func WithTimeout(d time.Duration) Option { return func(o *options) { o.timeout = d } }

// WithDialOptions adds gRPC dial options after Dial's own, e.g. a resolver
// (grpc.WithResolvers) or interceptors for tracing.
func WithDialOptions(opts ...grpc.DialOption) Option {
	return func(o *options) { o.dial = append(o.dial, opts...) }
}

func (o *options) tlsConfig() *tls.Config {
	if o.tls == nil {
		o.tls = &tls.Config{MinVersion: tls.VersionTLS12}
	}
	o.tlsSet = true
	return o.tls
}

// Dial returns a client of the sessiond instances target names, a gRPC
// target: "dns:///sessiond-headless.auth:50051", or "host:port" (resolved by
// DNS too). Like grpc.NewClient it does not connect: the first call does, and
// connection failures show as UNAVAILABLE there.
func Dial(target string, opts ...Option) (*Client, error) {
	o := options{timeout: DefaultTimeout}
	for _, opt := range opts {
		opt(&o)
	}
	var creds credentials.TransportCredentials
	switch {
	case o.insecure && o.tlsSet:
		return nil, errors.New("sessiond client: WithInsecure together with a TLS option")
	case o.insecure && o.bearer != "":
		return nil, errors.New("sessiond client: a bearer token over plaintext would travel in clear; use TLS")
	case o.insecure:
		creds = insecure.NewCredentials()
	default:
		creds = credentials.NewTLS(o.tlsConfig())
	}
	dial := []grpc.DialOption{
		grpc.WithTransportCredentials(creds),
		grpc.WithDefaultServiceConfig(serviceConfig),
		grpc.WithKeepaliveParams(keepaliveParams),
		grpc.WithUserAgent("sessiond-go-client"),
	}
	if o.bearer != "" {
		dial = append(dial, grpc.WithPerRPCCredentials(bearer(o.bearer)))
	}
	conn, err := grpc.NewClient(target, append(dial, o.dial...)...)
	if err != nil {
		return nil, fmt.Errorf("sessiond client: %w", err)
	}
	return &Client{conn: conn, svc: sessiondv1.NewSessionServiceClient(conn), timeout: o.timeout}, nil
}

// Validate asks whether token names a valid session. An invalid session is
// a normal answer (Valid false and a Reason), not an error. Errors are gRPC
// status errors: INVALID_ARGUMENT for what cannot be a token (empty, over
// 512 bytes, bytes outside printable ASCII); UNAVAILABLE when no instance
// could answer after the retries; DEADLINE_EXCEEDED or CANCELLED when ctx (or
// the default deadline) ends first.
func (c *Client) Validate(ctx context.Context, token string) (*sessiondv1.ValidateSessionResponse, error) {
	if _, ok := ctx.Deadline(); !ok && c.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.timeout)
		defer cancel()
	}
	return c.svc.ValidateSession(ctx, &sessiondv1.ValidateSessionRequest{Token: token})
}

// Conn is the underlying connection, for the other RPCs
// (sessiondv1.NewSessionServiceClient(c.Conn())) and health checks.
func (c *Client) Conn() *grpc.ClientConn { return c.conn }

// Close closes the connections; calls in flight fail with CANCELLED.
func (c *Client) Close() error { return c.conn.Close() }

// bearer is a per-call credential that requires TLS (grpc refuses to send it
// over plaintext). Hand-written: grpc's credentials/oauth would bring in
// golang.org/x/oauth2 for one header.
type bearer string

func (b bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(b)}, nil
}

func (bearer) RequireTransportSecurity() bool { return true }
