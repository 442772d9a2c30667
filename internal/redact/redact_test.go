package redact_test

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"strings"
	"testing"

	"github.com/sessiond/sessiond/internal/redact"
)

const planted = "PLANTED-SECRET-8f3a"

func TestURL(t *testing.T) {
	tests := []struct{ raw, want string }{
		{"redis://:" + planted + "@cache:6379/2", "redis://:xxxxx@cache:6379/2"},
		{"rediss://app:" + planted + "@cache:6380/0?addr=cache2:6380&master_set=main", "rediss://app:xxxxx@cache:6380/0?addr=cache2:6380&master_set=main"},
		{"postgres://app:" + planted + "@db:5432/sessions?sslmode=require", "postgres://app:xxxxx@db:5432/sessions?sslmode=require"},
		{"postgres://app@db/sessions?password=" + planted + "&sslmode=disable", "postgres://app@db/sessions?password=xxxxx&sslmode=disable"},
		{"postgres://app@db/sessions", "postgres://app@db/sessions"},
		{"unix:///run/redis.sock", "unix:///run/redis.sock"},
		{"redis://u:" + planted + "@h:bad/0", "(unparsable --redis-url)"},
		{"redis://u:PL%zz" + planted + "@h/0", "(unparsable --redis-url)"},
	}
	for _, tt := range tests {
		if got := redact.URL("--redis-url", tt.raw); got != tt.want {
			t.Errorf("URL(%q) = %q, want %q", tt.raw, got, tt.want)
		}
	}
}

func TestSecretsString(t *testing.T) {
	tests := []struct {
		name, url, text, want string
	}{
		{"the password anywhere", "redis://u:" + planted + "@h:6379/0", "auth failed with " + planted + " and again " + planted,
			"auth failed with xxxxx and again xxxxx"},
		{"the whole url becomes its redacted form", "redis://u:" + planted + "@h:6379/0", `dial "redis://u:` + planted + `@h:6379/0": refused`,
			`dial "redis://u:xxxxx@h:6379/0": refused`},
		{"percent-encoded, as written and decoded", "postgres://u:" + planted + "%2F1@h/db", "pw " + planted + "/1 or " + planted + "%2F1",
			"pw xxxxx or xxxxx"},
		{"a secret query parameter", "postgres://u@h/db?sslpassword=" + planted, "key pass " + planted, "key pass xxxxx"},
		{"a keyword/value string", "host=h user=u password='" + planted + "' dbname=d", "password=" + planted, "password=xxxxx"},
		{"an unparsable url masked whole", "redis://u:" + planted + "@h:bad/0", `parse "redis://u:` + planted + `@h:bad/0": invalid port`,
			`parse "(unparsable url)": invalid port`},
		{"and its password alone", "redis://u:" + planted + "@h:bad/0", "password " + planted + " rejected", "password xxxxx rejected"},
		{"no password: nothing changes", "redis://h:6379/0", "dial redis://h:6379/0: refused", "dial redis://h:6379/0: refused"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := redact.New(tt.url).String(tt.text); got != tt.want {
				t.Errorf("got %q, want %q", got, tt.want)
			}
		})
	}
}

func TestSecretsError(t *testing.T) {
	s := redact.New("", "postgres://u:"+planted+"@h/db")
	err := s.Error(fmt.Errorf("connect with %s: %w", planted, fs.ErrNotExist))
	if strings.Contains(err.Error(), planted) || !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("%v: secret kept or chain lost", err)
	}
	clean := errors.New("nothing secret")
	if s.Error(clean) != clean || s.Error(nil) != nil {
		t.Error("an error without secrets must come back as itself")
	}
}

type stringer struct{}

func (stringer) String() string { return "dsn " + planted }

func TestHandler(t *testing.T) {
	var buf bytes.Buffer
	s := redact.New("redis://:" + planted + "@h:6379/0")
	log := slog.New(s.Handler(slog.NewJSONHandler(&buf, nil))).With("url", "redis://:"+planted+"@h:6379/0")
	log.WithGroup("g").Warn("connect "+planted+" failed",
		"error", errors.New("auth "+planted), "str", stringer{}, slog.Group("inner", "pw", planted), "n", 3)
	if strings.Contains(buf.String(), planted) {
		t.Errorf("secret logged: %s", buf.String())
	}
	for _, want := range []string{`"msg":"connect xxxxx failed"`, `"url":"redis://:xxxxx@h:6379/0"`, `"error":"auth xxxxx"`, `"n":3`} {
		if !strings.Contains(buf.String(), want) {
			t.Errorf("want %s in %s", want, buf.String())
		}
	}
	h := slog.NewTextHandler(&buf, nil)
	if redact.New("redis://h:6379").Handler(h) != slog.Handler(h) {
		t.Error("with nothing to mask, the handler must be returned as is")
	}
}
