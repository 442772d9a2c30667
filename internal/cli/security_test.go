package cli_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/sessiond/sessiond/internal/config"
	"github.com/sessiond/sessiond/internal/devstack/devtest"
)

// warm and stats reach a server with TLS, mutual TLS and an admin token.
func TestClientSecurity(t *testing.T) {
	const token = "s3cret-admin-token"
	p := devtest.NewPKI(t)
	db, redisURL := devtest.Database(t), devtest.RedisURL(t)
	tlsToken := start(t, db, redisURL, func(c *config.Config) {
		c.TLSCert, c.TLSKey, c.AdminToken = p.ServerCert, p.ServerKey, token
	})
	mutual := start(t, db, redisURL, func(c *config.Config) {
		c.TLSCert, c.TLSKey, c.TLSClientCA = p.ServerCert, p.ServerKey, p.CAFile
	})
	plainToken := start(t, db, redisURL, func(c *config.Config) { c.AdminToken = token })

	for _, tt := range []struct {
		name   string
		env    map[string]string
		args   []string
		code   int
		stdout []string
		stderr []string
	}{
		// TLS + admin token.
		{name: "stats with the token, trusting the CA", args: []string{"stats", "--admin-token", token, "--tls-ca", p.CAFile, "--addr", tlsToken.addr},
			code: 0, stdout: []string{"📊 sessiond at " + tlsToken.addr}},
		{name: "stats with the token from the environment", env: map[string]string{"SESSIOND_ADMIN_TOKEN": token, "SESSIOND_TLS_CA": p.CAFile},
			args: []string{"stats", "--addr", tlsToken.addr}, code: 0, stdout: []string{"📊 sessiond at "}},
		{name: "stats without the token", args: []string{"stats", "--tls-ca", p.CAFile, "--addr", tlsToken.addr},
			code: 1, stderr: []string{"GetStats on " + tlsToken.addr + " failed: Unauthenticated: ", "--admin-token"}},
		{name: "stats with a wrong token", args: []string{"stats", "--admin-token", "nope", "--tls-ca", p.CAFile, "--addr", tlsToken.addr},
			code: 1, stderr: []string{"failed: PermissionDenied: "}},
		{name: "warm --estimate with the token", args: []string{"warm", "--estimate", "--admin-token", token, "--tls-ca", p.CAFile, "--addr", tlsToken.addr},
			code: 0, stdout: []string{"Warmable sessions: "}},
		{name: "warm without the token", args: []string{"warm", "--estimate", "--tls-ca", p.CAFile, "--addr", tlsToken.addr},
			code: 1, stderr: []string{"WarmCache on " + tlsToken.addr + " failed: Unauthenticated: "}},
		{name: "stats over plaintext to a TLS server", args: []string{"stats", "--admin-token", token, "--addr", tlsToken.addr},
			code: 1, stderr: []string{"failed: Unavailable: "}},
		{name: "stats trusting the system's CAs only", args: []string{"stats", "--tls", "--admin-token", token, "--addr", tlsToken.addr},
			code: 1, stderr: []string{"failed: Unavailable: ", "certificate"}},
		{name: "stats with the server name the certificate carries", args: []string{"stats", "--admin-token", token, "--tls-ca", p.CAFile, "--tls-server-name", "localhost", "--addr", tlsToken.addr},
			code: 0, stdout: []string{"📊 sessiond at "}},
		{name: "stats with a server name the certificate lacks", args: []string{"stats", "--admin-token", token, "--tls-ca", p.CAFile, "--tls-server-name", "elsewhere.example", "--addr", tlsToken.addr},
			code: 1, stderr: []string{"failed: Unavailable: ", "elsewhere.example"}},

		// Mutual TLS.
		{name: "mTLS: stats with a client certificate", args: []string{"stats", "--tls-ca", p.CAFile, "--tls-cert", p.ClientCert, "--tls-key", p.ClientKey, "--addr", mutual.addr},
			code: 0, stdout: []string{"📊 sessiond at " + mutual.addr}},
		{name: "mTLS: stats without a client certificate", args: []string{"stats", "--tls-ca", p.CAFile, "--addr", mutual.addr},
			code: 1, stderr: []string{"failed: Unavailable: "}},
		{name: "mTLS: stats with a certificate from another CA", args: []string{"stats", "--tls-ca", p.CAFile, "--tls-cert", p.StrangerCert, "--tls-key", p.StrangerKey, "--addr", mutual.addr},
			code: 1, stderr: []string{"failed: Unavailable: "}},

		// Plaintext + admin token: sent, since the user chose plaintext.
		{name: "plaintext: stats with the token", args: []string{"stats", "--admin-token", token, "--addr", plainToken.addr},
			code: 0, stdout: []string{"📊 sessiond at " + plainToken.addr}},
		{name: "plaintext: stats without the token", args: []string{"stats", "--addr", plainToken.addr},
			code: 1, stderr: []string{"failed: Unauthenticated: "}},

		// Bad flags are usage errors.
		{name: "--tls-cert without --tls-key", args: []string{"stats", "--tls-cert", p.ClientCert, "--addr", mutual.addr},
			code: 2, stderr: []string{"invalid --tls-key ($SESSIOND_TLS_KEY): required with --tls-cert"}},
		{name: "--tls-ca: no such file", args: []string{"warm", "--tls-ca", "/nonexistent/ca.pem", "--addr", mutual.addr},
			code: 2, stderr: []string{"invalid --tls-ca ($SESSIOND_TLS_CA)", "/nonexistent/ca.pem"}},
		{name: "--tls-ca: not PEM", args: []string{"stats", "--tls-ca", p.ClientKey, "--addr", mutual.addr},
			code: 2, stderr: []string{"invalid --tls-ca ($SESSIOND_TLS_CA) " + p.ClientKey + ": no PEM certificate"}},
		{name: "stats --help", args: []string{"stats", "--help"},
			code: 0, stderr: []string{"-admin-token", "[$SESSIOND_ADMIN_TOKEN]", "-tls-ca file", "-tls-cert file", "-tls-key file", "-tls-server-name", "  -tls\n"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
			defer cancel()
			r := run(ctx, tt.env, tt.args...)
			if r.code != tt.code {
				t.Errorf("exit %d, want %d\nstdout:\n%s\nstderr:\n%s", r.code, tt.code, r.stdout, r.stderr)
			}
			mustContain(t, "stdout", r.stdout, tt.stdout...)
			mustContain(t, "stderr", r.stderr, tt.stderr...)
			if strings.Contains(r.stdout+r.stderr, token) {
				t.Errorf("the output repeats the token")
			}
		})
	}
}
