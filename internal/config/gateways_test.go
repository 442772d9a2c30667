package config

import (
	"strings"
	"testing"
)

func TestParseGateways(t *testing.T) {
	base := map[string]string{"DATABASE_URL": "postgres://db/x", "REDIS_URL": "redis://r:6379"}
	t.Run("defaults: ext_authz on, forward-auth off, cookie session", func(t *testing.T) {
		c, err := parse(t, nil, base)
		if err != nil {
			t.Fatal(err)
		}
		if !c.ExtAuthz || c.HTTPAddr != "" || c.SessionCookie != "session" {
			t.Errorf("got ext-authz=%v http-addr=%q session-cookie=%q", c.ExtAuthz, c.HTTPAddr, c.SessionCookie)
		}
	})
	t.Run("environment", func(t *testing.T) {
		env := map[string]string{"SESSIOND_EXT_AUTHZ": "false", "SESSIOND_HTTP_ADDR": ":8080", "SESSIOND_SESSION_COOKIE": "__Host-sid"}
		for k, v := range base {
			env[k] = v
		}
		c, err := parse(t, nil, env)
		if err != nil {
			t.Fatal(err)
		}
		if c.ExtAuthz || c.HTTPAddr != ":8080" || c.SessionCookie != "__Host-sid" {
			t.Errorf("got ext-authz=%v http-addr=%q session-cookie=%q", c.ExtAuthz, c.HTTPAddr, c.SessionCookie)
		}
	})
	for _, tt := range []struct {
		name string
		args []string
		want string
	}{
		{"http-addr without a port", []string{"--http-addr=localhost"}, "--http-addr"},
		{"empty cookie name", []string{"--session-cookie="}, "--session-cookie"},
		{"cookie name with a space", []string{"--session-cookie=my session"}, "--session-cookie"},
		{"cookie name with =", []string{"--session-cookie=a=b"}, "--session-cookie"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parse(t, tt.args, base)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want one naming %s", err, tt.want)
			}
		})
	}
}
