package server_test

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/genproto/googleapis/rpc/code"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	sessiondv1 "github.com/sessiond/sessiond/gen/sessiond/v1"
	"github.com/sessiond/sessiond/internal/config"
	"github.com/sessiond/sessiond/internal/devstack/devtest"
)

// checkRequest is what Envoy sends for a request with these headers (keys
// lowercase, as Envoy sends them). raw puts them in header_map with
// raw_value instead, as Envoy does with encode_raw_headers.
func checkRequest(raw bool, kv ...string) *authv3.CheckRequest {
	h := &authv3.AttributeContext_HttpRequest{Method: "GET", Path: "/api/orders", Host: "shop.example"}
	if raw {
		h.HeaderMap = &corev3.HeaderMap{}
		for i := 0; i < len(kv); i += 2 {
			h.HeaderMap.Headers = append(h.HeaderMap.Headers, &corev3.HeaderValue{Key: kv[i], RawValue: []byte(kv[i+1])})
		}
	} else {
		h.Headers = map[string]string{}
		for i := 0; i < len(kv); i += 2 {
			h.Headers[kv[i]] = kv[i+1]
		}
	}
	return &authv3.CheckRequest{Attributes: &authv3.AttributeContext{Request: &authv3.AttributeContext_Request{Http: h}}}
}

func (h *harness) check(req *authv3.CheckRequest) *authv3.CheckResponse {
	h.t.Helper()
	resp, err := authv3.NewAuthorizationClient(h.conn).Check(h.t.Context(), req)
	if err != nil {
		h.t.Fatalf("Check returned a gRPC error (Envoy would count it as a failure of the authorization service): %v", err)
	}
	return resp
}

// okHeaders returns the headers an OK answer sets, failing unless each
// overwrites what the client sent.
func okHeaders(t *testing.T, resp *authv3.CheckResponse) map[string]string {
	t.Helper()
	if resp.GetStatus().GetCode() != int32(code.Code_OK) || resp.GetOkResponse() == nil {
		t.Fatalf("want OK, got status %v, denied %v", resp.GetStatus(), resp.GetDeniedResponse())
	}
	got := map[string]string{}
	for _, o := range resp.GetOkResponse().GetHeaders() {
		if o.GetAppendAction() != corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD {
			t.Errorf("header %s: append action %v, want OVERWRITE_IF_EXISTS_OR_ADD", o.GetHeader().GetKey(), o.GetAppendAction())
		}
		got[o.GetHeader().GetKey()] = o.GetHeader().GetValue()
	}
	return got
}

func deniedWith(t *testing.T, resp *authv3.CheckResponse, rpc code.Code, httpCode typev3.StatusCode) {
	t.Helper()
	d := resp.GetDeniedResponse()
	if resp.GetStatus().GetCode() != int32(rpc) || d == nil || d.GetStatus().GetCode() != httpCode {
		t.Fatalf("got status %v, denied %v; want %v with HTTP %v", resp.GetStatus(), d, rpc, httpCode)
	}
	if resp.GetOkResponse() != nil {
		t.Error("a denied answer carries an OK response")
	}
	if httpCode == typev3.StatusCode_Unauthorized {
		var www string
		for _, o := range d.GetHeaders() {
			if o.GetHeader().GetKey() == "www-authenticate" {
				www = o.GetHeader().GetValue()
			}
		}
		if !strings.HasPrefix(www, "Bearer") {
			t.Errorf("401 without a WWW-Authenticate: Bearer header: %v", d.GetHeaders())
		}
	}
}

func TestExtAuthzCheck(t *testing.T) {
	h := start(t, devtest.Database(t), devtest.RedisURL(t))
	now := time.Now()
	u := h.addUser(user{email: "ada@example.test"})
	s := h.addSession(u, session{})
	banned := h.addSession(h.addUser(user{bannedUntil: now.Add(time.Hour)}), session{})
	expired := h.addSession(u, session{expiresAt: now.Add(-time.Second)})

	for _, raw := range []bool{false, true} {
		name := "headers"
		if raw {
			name = "header_map raw_value (encode_raw_headers)"
		}
		t.Run(name, func(t *testing.T) {
			for _, tt := range []struct {
				name    string
				headers []string
			}{
				{"cookie", []string{"cookie", "theme=dark; session=" + s.token}},
				{"bearer", []string{"authorization", "Bearer " + s.token}},
				{"spoofed identity headers", []string{"cookie", "session=" + s.token, "x-user-id", "admin", "x-user-email", "root@example.test", "x-session-id", "forged"}},
			} {
				t.Run(tt.name, func(t *testing.T) {
					got := okHeaders(t, h.check(checkRequest(raw, tt.headers...)))
					want := map[string]string{"x-user-id": u.id, "x-session-id": s.id, "x-user-email": u.email}
					for k, v := range want {
						if got[k] != v {
							t.Errorf("%s = %q, want %q", k, got[k], v)
						}
					}
				})
			}
			for _, tt := range []struct {
				name    string
				headers []string
			}{
				{"no credentials", []string{"x-user-id", "admin"}},
				{"unknown token", []string{"cookie", "session=" + newToken(t)}},
				{"other cookie name", []string{"cookie", "sid=" + s.token}},
				{"expired", []string{"cookie", "session=" + expired.token}},
				{"user banned", []string{"authorization", "Bearer " + banned.token}},
				{"token too long", []string{"authorization", "Bearer " + strings.Repeat("a", 513)}},
				{"not a token", []string{"authorization", "Bearer tök\x01n"}},
			} {
				t.Run(tt.name, func(t *testing.T) {
					deniedWith(t, h.check(checkRequest(raw, tt.headers...)), code.Code_UNAUTHENTICATED, typev3.StatusCode_Unauthorized)
				})
			}
		})
	}

	t.Run("two cookie headers joined by Envoy", func(t *testing.T) {
		got := okHeaders(t, h.check(checkRequest(false, "cookie", "theme=dark,session="+s.token)))
		if got["x-user-id"] != u.id {
			t.Errorf("x-user-id = %q", got["x-user-id"])
		}
	})
}

func TestExtAuthzEmptyEmailIsRemoved(t *testing.T) {
	h := start(t, devtest.Database(t), devtest.RedisURL(t))
	u := h.addUser(user{})
	s := h.addSession(u, session{})
	if _, err := h.db.Exec(t.Context(), `UPDATE platform.users SET email = '' WHERE id = $1`, u.id); err != nil {
		t.Fatal(err)
	}
	resp := h.check(checkRequest(false, "cookie", "session="+s.token, "x-user-email", "root@example.test"))
	got := okHeaders(t, resp)
	if _, ok := got["x-user-email"]; ok {
		t.Errorf("x-user-email set to %q: Envoy drops an empty value and would pass the client's", got["x-user-email"])
	}
	if rm := resp.GetOkResponse().GetHeadersToRemove(); len(rm) != 1 || rm[0] != "x-user-email" {
		t.Errorf("headers_to_remove = %v, want [x-user-email]", rm)
	}
}

// With Postgres down, both fronts answer what sessiond holds and say 503
// for what it cannot know: not 401 (the session may be valid), and for
// ext_authz not a gRPC error.
func TestCallersPostgresDown(t *testing.T) {
	pg := devtest.OwnPostgres(t)
	dbURL, err := pg.CreateDatabase(t.Context(), "sessiond_callers_outage")
	if err != nil {
		t.Fatal(err)
	}
	h := start(t, dbURL, devtest.RedisURL(t), withHTTP, func(c *config.Config) { c.PostgresTimeout = time.Second })
	u := h.addUser(user{})
	cached := h.addSession(u, session{})
	uncached := h.addSession(u, session{})
	heard(t, h, 2) // the inserts' notifications, which read Postgres
	localOn(t, cached.token, h)
	h.db.Close()
	if err := pg.Kill(); err != nil {
		t.Fatal(err)
	}

	okHeaders(t, h.check(checkRequest(false, "cookie", "session="+cached.token)))
	deniedWith(t, h.check(checkRequest(false, "cookie", "session="+uncached.token)), code.Code_UNAVAILABLE, typev3.StatusCode_ServiceUnavailable)

	if resp, _ := doAuth(t, http.DefaultClient, "GET", h.authURL(), "Cookie", "session="+cached.token); resp.StatusCode != http.StatusOK {
		t.Errorf("forward-auth, cached session: %d, want 200", resp.StatusCode)
	}
	resp, body := doAuth(t, http.DefaultClient, "GET", h.authURL(), "Cookie", "session="+uncached.token)
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("X-User-Id") != "" {
		t.Errorf("forward-auth, uncached session: %d %q, want 503 (fail closed)", resp.StatusCode, body)
	}
}

// heard waits until h has handled n notifications. An insert's
// notification reads the new row from Postgres; handled after Postgres went
// away, it would (rightly) make the instance believe nothing it caches.
func heard(t *testing.T, h *harness, n int64) {
	t.Helper()
	eventually(t, 5*time.Second, func() error {
		st, err := h.client.GetStats(t.Context(), &sessiondv1.GetStatsRequest{})
		if err != nil {
			return err
		}
		if got := st.GetCache().GetNotifications(); got < n {
			return fmt.Errorf("%d notifications handled, want %d", got, n)
		}
		return nil
	})
}

func TestExtAuthzOff(t *testing.T) {
	h := start(t, devtest.Database(t), devtest.RedisURL(t), func(c *config.Config) { c.ExtAuthz = false })
	_, err := authv3.NewAuthorizationClient(h.conn).Check(t.Context(), checkRequest(false))
	if status.Code(err) != codes.Unimplemented {
		t.Fatalf("with --ext-authz=false: %v, want Unimplemented", err)
	}
}
