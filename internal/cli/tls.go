package cli

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"os"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
)

// connFlags are how a client command reaches the server beyond --addr: TLS
// and the admin token.
type connFlags struct {
	adminToken string
	tls        bool
	ca         string
	cert, key  string
	serverName string
}

func (c *connFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&c.adminToken, "admin-token", "", "the server's --admin-token, sent as `authorization: Bearer` metadata")
	fs.BoolVar(&c.tls, "tls", false, "connect over TLS, verifying the server against the system's CAs (implied by the other --tls-* flags)")
	fs.StringVar(&c.ca, "tls-ca", "", "PEM `file` of the CA certificates to verify the server with, instead of the system's")
	fs.StringVar(&c.cert, "tls-cert", "", "PEM `file` with a client certificate, for a server that requires one (with --tls-key)")
	fs.StringVar(&c.key, "tls-key", "", "PEM `file` with the private key of --tls-cert")
	fs.StringVar(&c.serverName, "tls-server-name", "", "name the server's certificate must carry (default: the host in --addr)")
}

func (c *connFlags) useTLS() bool {
	return c.tls || c.ca != "" || c.cert != "" || c.key != "" || c.serverName != ""
}

// dialOptions are the transport credentials and the admin token's per-RPC
// credentials for c. A bad flag or an unreadable file is a usage error.
func (c *connFlags) dialOptions() ([]grpc.DialOption, error) {
	transport := insecure.NewCredentials()
	if c.useTLS() {
		tc, err := c.tlsConfig()
		if err != nil {
			return nil, usageError{err}
		}
		transport = credentials.NewTLS(tc)
	}
	opts := []grpc.DialOption{grpc.WithTransportCredentials(transport)}
	if c.adminToken != "" {
		opts = append(opts, grpc.WithPerRPCCredentials(bearer{token: c.adminToken, secure: c.useTLS()}))
	}
	return opts, nil
}

func (c *connFlags) tlsConfig() (*tls.Config, error) {
	tc := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: c.serverName}
	if c.ca != "" {
		pem, err := os.ReadFile(c.ca)
		if err != nil {
			return nil, fmt.Errorf("invalid --tls-ca ($SESSIOND_TLS_CA): %w", err)
		}
		tc.RootCAs = x509.NewCertPool()
		if !tc.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("invalid --tls-ca ($SESSIOND_TLS_CA) %s: no PEM certificate in it", c.ca)
		}
	}
	switch {
	case c.cert != "" && c.key != "":
		cert, err := tls.LoadX509KeyPair(c.cert, c.key)
		if err != nil {
			return nil, fmt.Errorf("invalid --tls-cert %s / --tls-key %s: %w", c.cert, c.key, err)
		}
		tc.Certificates = []tls.Certificate{cert}
	case c.cert != "":
		return nil, errors.New("invalid --tls-key ($SESSIOND_TLS_KEY): required with --tls-cert")
	case c.key != "":
		return nil, errors.New("invalid --tls-cert ($SESSIOND_TLS_CERT): required with --tls-key")
	}
	return tc, nil
}

// bearer sends the admin token with every call, unary or streaming. It is a
// PerRPCCredentials rather than a client interceptor so that grpc itself
// refuses to send it over a connection less secure than dial chose:
// RequireTransportSecurity is false only when the connection is plaintext by
// the user's choice (no --tls*, say a server on loopback or behind a
// TLS-terminating proxy), where grpc would otherwise refuse every call.
type bearer struct {
	token  string
	secure bool
}

func (b bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + b.token}, nil
}

func (b bearer) RequireTransportSecurity() bool { return b.secure }
