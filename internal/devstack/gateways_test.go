package devstack

import (
	"errors"
	"io"
	"net/http"
	"os"
	"strings"
	"testing"
)

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

func TestGatewayLifecycle(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name  string
		start func(t *testing.T) (url, dir string, stop func() error)
	}{
		{"nginx", func(t *testing.T) (string, string, func() error) {
			n, err := StartNginx(testCtx(t), NginxOptions{Server: `location = /hello { return 200 "from nginx"; }`})
			if err != nil {
				t.Fatal(err)
			}
			return n.URL(), n.Dir(), n.Stop
		}},
		{"caddy", func(t *testing.T) (string, string, func() error) {
			c, err := StartCaddy(testCtx(t), CaddyOptions{Site: `respond /hello "from caddy" 200`})
			if err != nil {
				t.Fatal(err)
			}
			return c.URL(), c.Dir(), c.Stop
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			url, dir, stop := tt.start(t)
			if code, body := get(t, url+"/hello"); code != 200 || body != "from "+tt.name {
				t.Errorf("GET /hello: %d %q", code, body)
			}
			if err := stop(); err != nil {
				t.Fatal(err)
			}
			if _, err := os.Stat(dir); !os.IsNotExist(err) {
				t.Errorf("%s still there after Stop (%v)", dir, err)
			}
			if _, err := http.Get(url + "/hello"); err == nil {
				t.Error("still answering after Stop")
			}
			if err := stop(); err != nil {
				t.Errorf("second Stop: %v", err)
			}
		})
	}
}

func TestFindGatewayNotInstalled(t *testing.T) {
	_, err := findGateway("nginx", t.TempDir(), t.TempDir())
	if !errors.Is(err, ErrNotInstalled) || !strings.Contains(err.Error(), "apt-get install nginx") ||
		!strings.Contains(err.Error(), "make deps") {
		t.Errorf("err = %v, want ErrNotInstalled naming the package and make deps", err)
	}
}
