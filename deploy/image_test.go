package deploy_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The image's binary, built as the Dockerfile builds it, runs `serve --help`
// and `migrate --help` in an empty root filesystem, as the image's non-root
// user: it needs nothing a distroless static image lacks. (No image can be
// built here: there is no container engine.)
func TestStaticBinary(t *testing.T) {
	dockerfile, err := os.ReadFile("../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	const build = `CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/sessiond ./cmd/sessiond`
	for _, want := range []string{build, "FROM gcr.io/distroless/static-debian12:nonroot", "USER nonroot:nonroot", `ENTRYPOINT ["/sessiond"]`, `CMD ["serve"]`, "EXPOSE 50051 9090"} {
		if !strings.Contains(string(dockerfile), want) {
			t.Errorf("the Dockerfile lacks %q", want)
		}
	}

	root := t.TempDir()
	if err := os.Chmod(root, 0o755); err != nil { // the image's user must reach /sessiond
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags=-s -w", "-o", filepath.Join(root, "sessiond"), "../cmd/sessiond")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	entries, err := os.ReadDir(root)
	if err != nil || len(entries) != 1 {
		t.Fatalf("the root filesystem holds %v (%v), want the binary alone", entries, err)
	}

	for _, args := range [][]string{{"serve", "--help"}, {"migrate", "--help"}, {"--help"}} {
		// As root, chroot and drop to the image's user (distroless nonroot,
		// 65532); otherwise chroot inside a user namespace.
		argv := append([]string{"unshare", "-r", "chroot", root, "/sessiond"}, args...)
		if os.Geteuid() == 0 {
			argv = append([]string{"chroot", "--userspec=65532:65532", root, "/sessiond"}, args...)
		}
		out, err := exec.CommandContext(ctx, argv[0], argv[1:]...).CombinedOutput()
		if err != nil {
			t.Errorf("%s: %v\n%s", strings.Join(argv, " "), err, out)
			continue
		}
		if !strings.Contains(string(out), "Usage: sessiond") {
			t.Errorf("%s printed no usage:\n%s", strings.Join(argv, " "), out)
		}
		if args[0] == "serve" && !strings.Contains(string(out), "-metrics-addr") {
			t.Errorf("serve --help lacks --metrics-addr:\n%s", out)
		}
	}
}
