package main

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sessiond/sessiond/client"
	"github.com/sessiond/sessiond/internal/devstack/devtest"
	"github.com/sessiond/sessiond/internal/server/servertest"
)

func TestMain(m *testing.M) { devtest.Main(m) }

// The example, built as a program, serves against a real sessiond.
func TestHTTPService(t *testing.T) {
	env := servertest.New(t)
	in := env.Start()
	s := env.AddSession()

	bin := filepath.Join(t.TempDir(), "httpservice")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	// The built program, on a port of its choosing, which it logs.
	cmd := exec.Command(bin, "--listen", "127.0.0.1:0", "--sessiond", in.Addr, "--insecure")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	lines := bufio.NewScanner(stderr)
	var addr string
	for addr == "" && lines.Scan() {
		_, addr, _ = strings.Cut(lines.Text(), "listening on ")
	}
	if addr == "" {
		t.Fatalf("httpservice never said where it listens (%v)", lines.Err())
	}
	go io.Copy(io.Discard, stderr) // keep the pipe drained
	check(t, "http://"+addr, s)

	// And run in process, as its main does.
	c, err := client.Dial(in.Addr, client.WithInsecure())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, lis, c) }()
	check(t, "http://"+lis.Addr().String(), s)
	stop()
	if err := <-done; err != nil {
		t.Errorf("run: %v", err)
	}
}

func check(t *testing.T, base string, s servertest.Session) {
	t.Helper()
	get := func(cookie string) *http.Response {
		req, err := http.NewRequest("GET", base+"/me", nil)
		if err != nil {
			t.Fatal(err)
		}
		if cookie != "" {
			req.Header.Set("Cookie", "session="+cookie)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}
	resp := get(s.Token)
	defer resp.Body.Close()
	var me map[string]string
	if err := json.NewDecoder(resp.Body).Decode(&me); err != nil || resp.StatusCode != 200 {
		t.Fatalf("GET /me with a valid cookie: %d, %v", resp.StatusCode, err)
	}
	if me["user_id"] != s.UserID || me["email"] != s.Email || me["session_id"] != s.ID {
		t.Errorf("GET /me = %v, want user %s", me, s.UserID)
	}
	for _, cookie := range []string{"", "unknown"} {
		resp := get(cookie)
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("GET /me with cookie %q: %d, want 401", cookie, resp.StatusCode)
		}
	}
}
