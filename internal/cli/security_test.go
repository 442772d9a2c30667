package cli_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sessiond/sessiond/internal/config"
	"github.com/sessiond/sessiond/internal/devstack/devtest"
)

// testPKI writes a CA, a server certificate for 127.0.0.1 and localhost, a
// client certificate from that CA and one from another CA, as PEM files.
type testPKI struct {
	ca, serverCert, serverKey, clientCert, clientKey, strangerCert, strangerKey string
}

func newTestPKI(t *testing.T) testPKI {
	t.Helper()
	dir := t.TempDir()
	write := func(name string, typ string, der []byte) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	newCA := func(name string) (*x509.Certificate, *ecdsa.PrivateKey, []byte) {
		key := newKey(t)
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
			IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
		if err != nil {
			t.Fatal(err)
		}
		cert, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		return cert, key, der
	}
	// issue writes a certificate signed by ca and its key; serial must differ per CA.
	issue := func(name string, serial int64, ca *x509.Certificate, caKey *ecdsa.PrivateKey, server bool) (string, string) {
		key := newKey(t)
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: name},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		}
		if server {
			tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
			tmpl.DNSNames, tmpl.IPAddresses = []string{"localhost"}, []net.IP{net.IPv4(127, 0, 0, 1)}
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		keyDER, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			t.Fatal(err)
		}
		return write(name+".pem", "CERTIFICATE", der), write(name+"-key.pem", "PRIVATE KEY", keyDER)
	}
	ca, caKey, caDER := newCA("sessiond test CA")
	other, otherKey, _ := newCA("some other CA")
	var p testPKI
	p.ca = write("ca.pem", "CERTIFICATE", caDER)
	p.serverCert, p.serverKey = issue("server", 2, ca, caKey, true)
	p.clientCert, p.clientKey = issue("client", 3, ca, caKey, false)
	p.strangerCert, p.strangerKey = issue("stranger", 2, other, otherKey, false)
	return p
}

func newKey(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return key
}

// warm and stats reach a server with TLS, mutual TLS and an admin token.
func TestClientSecurity(t *testing.T) {
	const token = "s3cret-admin-token"
	p := newTestPKI(t)
	db, redisURL := devtest.Database(t), devtest.RedisURL(t)
	tlsToken := start(t, db, redisURL, func(c *config.Config) {
		c.TLSCert, c.TLSKey, c.AdminToken = p.serverCert, p.serverKey, token
	})
	mutual := start(t, db, redisURL, func(c *config.Config) {
		c.TLSCert, c.TLSKey, c.TLSClientCA = p.serverCert, p.serverKey, p.ca
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
		{name: "stats with the token, trusting the CA", args: []string{"stats", "--admin-token", token, "--tls-ca", p.ca, "--addr", tlsToken.addr},
			code: 0, stdout: []string{"📊 sessiond at " + tlsToken.addr}},
		{name: "stats with the token from the environment", env: map[string]string{"SESSIOND_ADMIN_TOKEN": token, "SESSIOND_TLS_CA": p.ca},
			args: []string{"stats", "--addr", tlsToken.addr}, code: 0, stdout: []string{"📊 sessiond at "}},
		{name: "stats without the token", args: []string{"stats", "--tls-ca", p.ca, "--addr", tlsToken.addr},
			code: 1, stderr: []string{"GetStats on " + tlsToken.addr + " failed: Unauthenticated: ", "--admin-token"}},
		{name: "stats with a wrong token", args: []string{"stats", "--admin-token", "nope", "--tls-ca", p.ca, "--addr", tlsToken.addr},
			code: 1, stderr: []string{"failed: PermissionDenied: "}},
		{name: "warm --estimate with the token", args: []string{"warm", "--estimate", "--admin-token", token, "--tls-ca", p.ca, "--addr", tlsToken.addr},
			code: 0, stdout: []string{"Warmable sessions: "}},
		{name: "warm without the token", args: []string{"warm", "--estimate", "--tls-ca", p.ca, "--addr", tlsToken.addr},
			code: 1, stderr: []string{"WarmCache on " + tlsToken.addr + " failed: Unauthenticated: "}},
		{name: "stats over plaintext to a TLS server", args: []string{"stats", "--admin-token", token, "--addr", tlsToken.addr},
			code: 1, stderr: []string{"failed: Unavailable: "}},
		{name: "stats trusting the system's CAs only", args: []string{"stats", "--tls", "--admin-token", token, "--addr", tlsToken.addr},
			code: 1, stderr: []string{"failed: Unavailable: ", "certificate"}},
		{name: "stats with the server name the certificate carries", args: []string{"stats", "--admin-token", token, "--tls-ca", p.ca, "--tls-server-name", "localhost", "--addr", tlsToken.addr},
			code: 0, stdout: []string{"📊 sessiond at "}},
		{name: "stats with a server name the certificate lacks", args: []string{"stats", "--admin-token", token, "--tls-ca", p.ca, "--tls-server-name", "elsewhere.example", "--addr", tlsToken.addr},
			code: 1, stderr: []string{"failed: Unavailable: ", "elsewhere.example"}},

		// Mutual TLS.
		{name: "mTLS: stats with a client certificate", args: []string{"stats", "--tls-ca", p.ca, "--tls-cert", p.clientCert, "--tls-key", p.clientKey, "--addr", mutual.addr},
			code: 0, stdout: []string{"📊 sessiond at " + mutual.addr}},
		{name: "mTLS: stats without a client certificate", args: []string{"stats", "--tls-ca", p.ca, "--addr", mutual.addr},
			code: 1, stderr: []string{"failed: Unavailable: "}},
		{name: "mTLS: stats with a certificate from another CA", args: []string{"stats", "--tls-ca", p.ca, "--tls-cert", p.strangerCert, "--tls-key", p.strangerKey, "--addr", mutual.addr},
			code: 1, stderr: []string{"failed: Unavailable: "}},

		// Plaintext + admin token: sent, since the user chose plaintext.
		{name: "plaintext: stats with the token", args: []string{"stats", "--admin-token", token, "--addr", plainToken.addr},
			code: 0, stdout: []string{"📊 sessiond at " + plainToken.addr}},
		{name: "plaintext: stats without the token", args: []string{"stats", "--addr", plainToken.addr},
			code: 1, stderr: []string{"failed: Unauthenticated: "}},

		// Bad flags are usage errors.
		{name: "--tls-cert without --tls-key", args: []string{"stats", "--tls-cert", p.clientCert, "--addr", mutual.addr},
			code: 2, stderr: []string{"invalid --tls-key ($SESSIOND_TLS_KEY): required with --tls-cert"}},
		{name: "--tls-ca: no such file", args: []string{"warm", "--tls-ca", "/nonexistent/ca.pem", "--addr", mutual.addr},
			code: 2, stderr: []string{"invalid --tls-ca ($SESSIOND_TLS_CA)", "/nonexistent/ca.pem"}},
		{name: "--tls-ca: not PEM", args: []string{"stats", "--tls-ca", p.clientKey, "--addr", mutual.addr},
			code: 2, stderr: []string{"invalid --tls-ca ($SESSIOND_TLS_CA) " + p.clientKey + ": no PEM certificate"}},
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
