package devtest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// PKI is a throwaway set of certificates for transport tests: a CA, a
// server certificate for 127.0.0.1, ::1 and localhost, a client certificate
// from that CA, and a client certificate from another CA. Files are PEM in a
// temp dir of the test.
type PKI struct {
	CAFile, ServerCert, ServerKey string
	ClientCert, ClientKey         string
	StrangerCert, StrangerKey     string

	CAPool, OtherCAPool *x509.CertPool
	Client, Stranger    tls.Certificate
}

// NewPKI makes the certificates, valid for an hour either side of now.
func NewPKI(t testing.TB) *PKI {
	t.Helper()
	dir := t.TempDir()
	write := func(name string, b []byte) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	ca, other := newCA(t, "sessiond test CA"), newCA(t, "some other CA")
	p := &PKI{CAPool: x509.NewCertPool(), OtherCAPool: x509.NewCertPool()}
	p.CAPool.AddCert(ca.cert)
	p.OtherCAPool.AddCert(other.cert)
	p.CAFile = write("ca.pem", ca.pem)
	certPEM, keyPEM := ca.issue(t, "sessiond", true)
	p.ServerCert, p.ServerKey = write("server.pem", certPEM), write("server-key.pem", keyPEM)
	pair := func(name string, ca *testCA, certFile, keyFile *string, out *tls.Certificate) {
		certPEM, keyPEM := ca.issue(t, name, false)
		*certFile, *keyFile = write(name+".pem", certPEM), write(name+"-key.pem", keyPEM)
		c, err := tls.X509KeyPair(certPEM, keyPEM)
		if err != nil {
			t.Fatal(err)
		}
		*out = c
	}
	pair("client", ca, &p.ClientCert, &p.ClientKey, &p.Client)
	pair("stranger", other, &p.StrangerCert, &p.StrangerKey, &p.Stranger)
	return p
}

type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  []byte
}

func newKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return key
}

func newCA(t testing.TB, name string) *testCA {
	t.Helper()
	key := newKey(t)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &testCA{cert: cert, key: key, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// issue returns a PEM certificate and key signed by ca: a server certificate
// for 127.0.0.1, ::1 and localhost, or a client certificate.
func (ca *testCA) issue(t testing.TB, name string, server bool) (certPEM, keyPEM []byte) {
	t.Helper()
	key := newKey(t)
	serial, err := rand.Int(rand.Reader, big.NewInt(1<<62))
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial, Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	if server {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		tmpl.DNSNames = []string{"localhost"}
		tmpl.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
}
