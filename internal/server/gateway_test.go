package server_test

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sessiond/sessiond/internal/devstack"
	"github.com/sessiond/sessiond/internal/devstack/devtest"
)

// readmeSnippet returns the fenced block of README.md whose first line
// starts with marker, with the README's placeholder addresses replaced: the
// tests run the configuration the README shows.
func readmeSnippet(t *testing.T, marker string, replace ...string) string {
	t.Helper()
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(b), "\n"+marker)
	if !ok {
		t.Fatalf("README.md has no block starting %q", marker)
	}
	_, rest, _ = strings.Cut(rest, "\n") // the rest of the marker's line
	block, _, ok := strings.Cut(rest, "\n```")
	if !ok {
		t.Fatalf("README.md: the block starting %q does not end", marker)
	}
	return strings.NewReplacer(replace...).Replace(block)
}

// stopAtCleanup fails t if the gateway did not start, and stops it when t
// ends.
func stopAtCleanup(t *testing.T, gw interface{ Stop() error }, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := gw.Stop(); err != nil {
			t.Error(err)
		}
	})
}

// upstream is the application behind the gateway: it records the identity
// headers of each request it receives.
type upstream struct {
	*httptest.Server
	mu   sync.Mutex
	seen []http.Header
}

func newUpstream(t *testing.T) *upstream {
	u := &upstream{}
	u.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u.mu.Lock()
		u.seen = append(u.seen, r.Header.Clone())
		u.mu.Unlock()
		fmt.Fprintf(w, "hello %s\n", r.Header.Get("X-User-Id"))
	}))
	t.Cleanup(u.Close)
	return u
}

func (u *upstream) hits() []http.Header {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]http.Header(nil), u.seen...)
}

// exchange sends one request through the gateway and logs it and the answer
// (the token shown by name, never its value).
type exchange struct {
	t      *testing.T
	base   string
	tokens map[string]string // token → how the log names it
}

func (e exchange) do(method, path string, header ...string) (*http.Response, string) {
	e.t.Helper()
	req, err := http.NewRequestWithContext(e.t.Context(), method, e.base+path, nil)
	if err != nil {
		e.t.Fatal(err)
	}
	var log strings.Builder
	fmt.Fprintf(&log, "> %s %s\n", method, path)
	for i := 0; i < len(header); i += 2 {
		req.Header.Add(header[i], header[i+1])
		fmt.Fprintf(&log, "> %s: %s\n", header[i], e.redact(header[i+1]))
	}
	resp, err := (&http.Client{Transport: &http.Transport{DisableKeepAlives: true}}).Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		e.t.Fatal(err)
	}
	fmt.Fprintf(&log, "< %s\n", resp.Status)
	for _, k := range []string{"Www-Authenticate", "Content-Type"} {
		if v := resp.Header.Get(k); v != "" {
			fmt.Fprintf(&log, "< %s: %s\n", k, v)
		}
	}
	fmt.Fprintf(&log, "< %s", strings.TrimSpace(e.redact(string(body))))
	e.t.Logf("\n%s", log.String())
	return resp, string(body)
}

func (e exchange) redact(s string) string {
	for tok, name := range e.tokens {
		s = strings.ReplaceAll(s, tok, name)
	}
	return s
}

// TestGateways puts real nginx (auth_request) and real Caddy (forward_auth),
// configured with the README's snippets, in front of an application, with
// sessiond's forward-auth deciding.
func TestGateways(t *testing.T) {
	h := start(t, devtest.Database(t), devtest.RedisURL(t), withHTTP)
	sessiond := h.srv.HTTPAddr().String()

	for _, gw := range []struct {
		name  string
		start func(t *testing.T, app string) string // returns the gateway's URL
	}{
		{"nginx", func(t *testing.T, app string) string {
			conf := readmeSnippet(t, "# nginx, inside a server block", "sessiond:8081", sessiond, "app:8080", app)
			n, err := devstack.StartNginx(t.Context(), devstack.NginxOptions{Server: conf})
			stopAtCleanup(t, n, err)
			return n.URL()
		}},
		{"caddy", func(t *testing.T, app string) string {
			conf := readmeSnippet(t, "# Caddy, inside a site block", "sessiond:8081", sessiond, "app:8080", app)
			c, err := devstack.StartCaddy(t.Context(), devstack.CaddyOptions{Site: conf})
			stopAtCleanup(t, c, err)
			return c.URL()
		}},
	} {
		t.Run(gw.name, func(t *testing.T) {
			app := newUpstream(t)
			u := h.addUser(user{email: "ada@example.test"})
			s := h.addSession(u, session{})
			unknown := newToken(t)
			ex := exchange{t: t, base: gw.start(t, strings.TrimPrefix(app.URL, "http://")),
				tokens: map[string]string{s.token: "<valid token>", unknown: "<unknown token>"}}

			// A valid cookie reaches the app with the session's identity, not
			// the one the client claims.
			resp, body := ex.do("GET", "/orders", "Cookie", "theme=dark; session="+s.token, "X-User-Id", "admin", "X-User-Email", "root@example.test")
			if resp.StatusCode != http.StatusOK || strings.TrimSpace(body) != "hello "+u.id {
				t.Fatalf("valid cookie: %d %q, want 200 from the app for %s", resp.StatusCode, body, u.id)
			}
			hits := app.hits()
			if len(hits) != 1 {
				t.Fatalf("the app saw %d requests, want 1", len(hits))
			}
			for k, want := range map[string]string{"X-User-Id": u.id, "X-Session-Id": s.id, "X-User-Email": u.email} {
				if got := hits[0].Values(k); len(got) != 1 || got[0] != want {
					t.Errorf("the app got %s %q, want exactly %q", k, got, want)
				}
			}
			if resp, _ := ex.do("GET", "/orders", "Authorization", "Bearer "+s.token); resp.StatusCode != http.StatusOK {
				t.Errorf("valid bearer: %d, want 200", resp.StatusCode)
			}

			// No session, or an unknown one: refused at the gateway, spoofed
			// identity and all.
			for _, header := range [][]string{
				{"X-User-Id", u.id},
				{"Cookie", "session=" + unknown, "X-User-Id", u.id},
			} {
				resp, _ := ex.do("GET", "/orders", header...)
				if resp.StatusCode != http.StatusUnauthorized {
					t.Errorf("%v: %d, want 401", header[0], resp.StatusCode)
				}
			}
			if n := len(app.hits()); n != 2 {
				t.Errorf("the app saw %d requests, want 2 (the refused ones never reach it)", n)
			}

			// Revoked in Postgres (the user banned): refused within the
			// revocation bound.
			localOn(t, s.token, h)
			revoked := time.Now()
			if _, err := h.db.Exec(t.Context(), `UPDATE platform.users SET banned_until = now() + interval '1 hour' WHERE id = $1`, u.id); err != nil {
				t.Fatal(err)
			}
			devtest.Eventually(t, 2*time.Second, func() error {
				req, err := http.NewRequestWithContext(t.Context(), "GET", ex.base+"/orders", nil)
				if err != nil {
					return err
				}
				req.Header.Set("Cookie", "session="+s.token)
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					return err
				}
				resp.Body.Close()
				if resp.StatusCode != http.StatusUnauthorized {
					return fmt.Errorf("still %d after the ban", resp.StatusCode)
				}
				return nil
			})
			t.Logf("banned in Postgres → refused by %s after %v", gw.name, time.Since(revoked).Round(time.Microsecond))
			resp, _ = ex.do("GET", "/orders", "Cookie", "session="+s.token)
			if resp.StatusCode != http.StatusUnauthorized {
				t.Errorf("revoked session: %d, want 401", resp.StatusCode)
			}
		})
	}
}
