package main

import (
	"bytes"
	"context"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The dev tool with URLs it cannot use: its error and output never show
// their password. (Its servers' own paths are those of server.New, tested
// in internal/cli.)
func TestNoSecretInDevToolErrors(t *testing.T) {
	const planted = "PLANTED-SECRET-8f3a"
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := strconv.Itoa(lis.Addr().(*net.TCPAddr).Port)
	lis.Close()
	db := "postgres://app:" + planted + "@127.0.0.1:" + closed + "/sessions?sslmode=disable"
	redis := "redis://:" + planted + "@127.0.0.1:" + closed + "/0"
	for _, tt := range []struct{ name, db, redis string }{
		{"postgres unreachable", db, redis},
		{"malformed redis url", db, "redis://u:" + planted + "@r:bad/0"},
		{"malformed postgres url", "postgres://u:12/" + planted + "@db/x", redis},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
			defer cancel()
			env := map[string]string{"DATABASE_URL": tt.db, "REDIS_URL": tt.redis}
			var stdout, stderr bytes.Buffer
			err := run(ctx, []string{"--grpc-addr=127.0.0.1:0"}, func(k string) string { return env[k] }, &stdout, &stderr)
			if err == nil {
				t.Fatal("no error")
			}
			for what, text := range map[string]string{"error": err.Error(), "stdout": stdout.String(), "stderr": stderr.String()} {
				if strings.Contains(text, "PLANTED") || strings.Contains(text, "SECRET-8f3a") {
					t.Errorf("%s shows the password: %s", what, text)
				}
			}
		})
	}
}
