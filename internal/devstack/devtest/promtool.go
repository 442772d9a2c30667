package devtest

import (
	"bytes"
	"context"
	"os/exec"
	"testing"
	"time"
)

// Promtool runs promtool (Debian's prometheus package, which
// scripts/ensure-servers installs) with args and stdin, and returns what it
// printed. A missing promtool fails t; so does a non-zero exit, with the
// output.
func Promtool(t testing.TB, stdin []byte, args ...string) string {
	t.Helper()
	path, err := exec.LookPath("promtool")
	if err != nil {
		t.Fatalf("devtest: promtool not found (install Debian's prometheus package: make deps): %v", err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, path, args...)
	cmd.Stdin = bytes.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("promtool %v: %v\n%s", args, err, out)
	}
	return string(out)
}
