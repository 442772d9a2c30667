package server_test

import (
	"crypto/tls"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/credentials"

	"github.com/sessiond/sessiond/internal/config"
	"github.com/sessiond/sessiond/internal/devstack/devtest"
)

func withHTTP(c *config.Config) { c.HTTPAddr = "127.0.0.1:0" }

// authURL is the forward-auth endpoint of h.
func (h *harness) authURL() string {
	h.t.Helper()
	a := h.srv.HTTPAddr()
	if a == nil {
		h.t.Fatal("forward-auth is off")
	}
	return "http://" + a.String() + "/v1/auth"
}

func doAuth(t *testing.T, c *http.Client, method, url string, header ...string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < len(header); i += 2 {
		req.Header.Add(header[i], header[i+1])
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, string(b)
}

func TestForwardAuth(t *testing.T) {
	h := start(t, devtest.Database(t), devtest.RedisURL(t), withHTTP)
	u := h.addUser(user{email: "ada@example.test"})
	s := h.addSession(u, session{})
	expired := h.addSession(u, session{expiresAt: time.Now().Add(-time.Second)})
	url := h.authURL()
	c := http.DefaultClient

	for _, tt := range []struct {
		name   string
		method string
		header []string
	}{
		{"cookie", "GET", []string{"Cookie", "theme=dark; session=" + s.token}},
		{"bearer", "GET", []string{"Authorization", "Bearer " + s.token}},
		{"any method (Caddy and Traefik send the original's)", "POST", []string{"Cookie", "session=" + s.token}},
		{"HEAD", "HEAD", []string{"Cookie", "session=" + s.token}},
		{"original method and URI play no part", "DELETE", []string{"Cookie", "session=" + s.token, "X-Original-URI", "/admin", "X-Forwarded-Method", "DELETE"}},
		{"spoofed identity headers are not echoed", "GET", []string{"Cookie", "session=" + s.token, "X-User-Id", "admin"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			resp, _ := doAuth(t, c, tt.method, url, tt.header...)
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("status %d, want 200", resp.StatusCode)
			}
			for k, want := range map[string]string{"X-User-Id": u.id, "X-Session-Id": s.id, "X-User-Email": u.email, "Cache-Control": "no-store"} {
				if got := resp.Header.Get(k); got != want {
					t.Errorf("%s = %q, want %q", k, got, want)
				}
			}
		})
	}
	for _, tt := range []struct {
		name   string
		header []string
	}{
		{"no credentials", []string{"X-User-Id", "admin"}},
		{"unknown token", []string{"Cookie", "session=" + newToken(t)}},
		{"expired", []string{"Cookie", "session=" + expired.token}},
		{"token too long", []string{"Authorization", "Bearer " + strings.Repeat("a", 513)}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			resp, body := doAuth(t, c, "GET", url, tt.header...)
			if resp.StatusCode != http.StatusUnauthorized || !strings.HasPrefix(resp.Header.Get("WWW-Authenticate"), "Bearer") {
				t.Fatalf("status %d, WWW-Authenticate %q; want 401 with a Bearer challenge", resp.StatusCode, resp.Header.Get("WWW-Authenticate"))
			}
			if resp.Header.Get("X-User-Id") != "" {
				t.Error("a 401 carries X-User-Id")
			}
			if strings.Contains(body, s.token) {
				t.Error("the body echoes a token")
			}
		})
	}
	t.Run("other paths are not found", func(t *testing.T) {
		resp, _ := doAuth(t, c, "GET", strings.TrimSuffix(url, "/v1/auth")+"/v1/other", "Cookie", "session="+s.token)
		if resp.StatusCode != http.StatusNotFound {
			t.Errorf("status %d, want 404", resp.StatusCode)
		}
	})
}

func TestForwardAuthCookieName(t *testing.T) {
	h := start(t, devtest.Database(t), devtest.RedisURL(t), withHTTP, func(c *config.Config) { c.SessionCookie = "__Host-sid" })
	s := h.addSession(h.addUser(user{}), session{})
	if resp, _ := doAuth(t, http.DefaultClient, "GET", h.authURL(), "Cookie", "session="+s.token); resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("default cookie name with --session-cookie=__Host-sid: %d, want 401", resp.StatusCode)
	}
	if resp, _ := doAuth(t, http.DefaultClient, "GET", h.authURL(), "Cookie", "__Host-sid="+s.token); resp.StatusCode != http.StatusOK {
		t.Errorf("configured cookie: %d, want 200", resp.StatusCode)
	}
}

func TestForwardAuthOffByDefault(t *testing.T) {
	h := start(t, devtest.Database(t), devtest.RedisURL(t))
	if a := h.srv.HTTPAddr(); a != nil {
		t.Errorf("forward-auth listens on %v without --http-addr", a)
	}
}

// With --tls-cert, the forward-auth port speaks TLS too, and with
// --tls-client-ca it requires the gateway's client certificate.
func TestForwardAuthTLS(t *testing.T) {
	pki := devtest.NewPKI(t)
	h := prepare(t, devtest.Database(t), devtest.RedisURL(t), withHTTP, func(c *config.Config) {
		c.TLSCert, c.TLSKey, c.TLSClientCA = pki.ServerCert, pki.ServerKey, pki.CAFile
	})
	h.creds = credentials.NewTLS(&tls.Config{RootCAs: pki.CAPool, Certificates: []tls.Certificate{pki.Client}})
	h.run()
	s := h.addSession(h.addUser(user{}), session{})
	url := "https://" + h.srv.HTTPAddr().String() + "/v1/auth"

	roots := pki.CAPool
	withCert := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, Certificates: []tls.Certificate{pki.Client}}}}
	if resp, _ := doAuth(t, withCert, "GET", url, "Cookie", "session="+s.token); resp.StatusCode != http.StatusOK {
		t.Errorf("over mutual TLS: %d, want 200", resp.StatusCode)
	}
	noCert := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}}}
	if resp, err := noCert.Get(url); err == nil {
		resp.Body.Close()
		t.Errorf("without a client certificate: %d, want the handshake refused", resp.StatusCode)
	}
	if resp, err := http.Get("http://" + h.srv.HTTPAddr().String() + "/v1/auth"); err == nil && resp.StatusCode == http.StatusOK {
		resp.Body.Close()
		t.Error("plain HTTP answered 200 on a TLS port")
	}
}
