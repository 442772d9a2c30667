package devstack

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// readyPath is where a gateway started here answers with its nonce: the probe knows it talks to the process it
// started, not to another one that took the port.
const readyPath = "/__devstack_ready"

// NginxOptions configures StartNginx.
type NginxOptions struct {
	// Dir is the directory in which the server's temporary directory is created; "" means os.TempDir().
	Dir string
	// Server holds directives for the one server block, which listens on 127.0.0.1:PORT (locations,
	// proxy_set_header, ...); an upstream block can go in HTTP.
	Server string
	// HTTP holds directives for the http block, outside the server block.
	HTTP string
}

// Nginx is a throwaway nginx started by StartNginx. Its methods are safe for concurrent use.
type Nginx struct{ srv *server }

// StartNginx starts nginx on a free 127.0.0.1 port, as the current user, in one process (master_process off,
// so it cannot leave workers behind), with its configuration, pid file, logs and temporary files in a new
// temporary directory, and returns once it answers. Nothing is read or written under /etc or /var.
//
// ctx bounds the wait for readiness (one minute if it has no deadline). An error wraps ErrNotInstalled when
// nginx is missing, and includes the end of its log when it failed to start.
func StartNginx(ctx context.Context, opts NginxOptions) (*Nginx, error) {
	srv, err := startGateway(ctx, opts.Dir, gateway{
		name: "nginx", binDir: "/usr/sbin", confFile: "nginx.conf",
		conf: func(dir string, port int, nonce string) string { return nginxConf(dir, port, nonce, opts) },
		args: func(dir, conf string) []string {
			return []string{"-p", dir + "/", "-c", conf, "-e", filepath.Join(dir, "nginx.log"), "-g", "daemon off;"}
		},
		stopSig: syscall.SIGQUIT, // graceful: in-flight requests finish
	})
	if err != nil {
		return nil, err
	}
	return &Nginx{srv: srv}, nil
}

func nginxConf(dir string, port int, nonce string, opts NginxOptions) string {
	tmp := func(name string) string { return filepath.Join(dir, "tmp-"+name) }
	return fmt.Sprintf(`# written by sessiond's internal/devstack
master_process off;
pid %s;
error_log %s info;
events { worker_connections 256; }
http {
    access_log %s;
    client_body_temp_path %s;
    proxy_temp_path %s;
    fastcgi_temp_path %s;
    uwsgi_temp_path %s;
    scgi_temp_path %s;
%s
    server {
        listen 127.0.0.1:%d;
        location = %s { return 200 "%s"; }
%s
    }
}
`, filepath.Join(dir, "nginx.pid"), filepath.Join(dir, "nginx.log"), filepath.Join(dir, "access.log"),
		tmp("body"), tmp("proxy"), tmp("fastcgi"), tmp("uwsgi"), tmp("scgi"), opts.HTTP, port, readyPath, nonce, opts.Server)
}

// URL returns http://127.0.0.1:PORT.
func (n *Nginx) URL() string {
	return "http://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(n.srv.port))
}

// Dir returns the server's directory, which holds nginx.conf, nginx.log and access.log. Stop removes it.
func (n *Nginx) Dir() string { return n.srv.dir }

// Stop shuts nginx down gracefully (SIGQUIT), waits for it to exit and removes its directory. Later calls do
// nothing and return nil.
func (n *Nginx) Stop() error { return n.srv.stop() }

// CaddyOptions configures StartCaddy.
type CaddyOptions struct {
	// Dir is the directory in which the server's temporary directory is created; "" means os.TempDir().
	Dir string
	// Site holds the Caddyfile directives of the one site, http://127.0.0.1:PORT. They run inside a handle
	// block, so they see every request but the readiness probe's.
	Site string
}

// Caddy is a throwaway Caddy started by StartCaddy. Its methods are safe for concurrent use.
type Caddy struct{ srv *server }

// StartCaddy starts caddy on a free 127.0.0.1 port, as the current user, with its admin endpoint and automatic
// HTTPS off, and its Caddyfile, HOME and XDG directories (storage, autosave) in a new temporary directory, and
// returns once it answers.
//
// ctx bounds the wait for readiness (one minute if it has no deadline). An error wraps ErrNotInstalled when
// caddy is missing, and includes the end of its log when it failed to start.
func StartCaddy(ctx context.Context, opts CaddyOptions) (*Caddy, error) {
	srv, err := startGateway(ctx, opts.Dir, gateway{
		name: "caddy", binDir: "/usr/bin", confFile: "Caddyfile",
		conf: func(dir string, port int, nonce string) string { return caddyfile(dir, port, nonce, opts) },
		args: func(_, conf string) []string { return []string{"run", "--config", conf, "--adapter", "caddyfile"} },
		env: func(dir string) []string {
			return []string{"HOME=" + dir, "XDG_CONFIG_HOME=" + filepath.Join(dir, "config"), "XDG_DATA_HOME=" + filepath.Join(dir, "data")}
		},
		stopSig: syscall.SIGTERM, // graceful
	})
	if err != nil {
		return nil, err
	}
	return &Caddy{srv: srv}, nil
}

func caddyfile(dir string, port int, nonce string, opts CaddyOptions) string {
	return fmt.Sprintf(`# written by sessiond's internal/devstack
{
	admin off
	auto_https off
	skip_install_trust
	storage file_system %s
}

http://127.0.0.1:%d {
	handle %s {
		respond "%s" 200
	}
	handle {
%s
	}
}
`, filepath.Join(dir, "data"), port, readyPath, nonce, opts.Site)
}

// URL returns http://127.0.0.1:PORT.
func (c *Caddy) URL() string {
	return "http://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(c.srv.port))
}

// Dir returns the server's directory, which holds the Caddyfile and caddy.log. Stop removes it.
func (c *Caddy) Dir() string { return c.srv.dir }

// Stop shuts caddy down gracefully (SIGTERM), waits for it to exit and removes its directory. Later calls do
// nothing and return nil.
func (c *Caddy) Stop() error { return c.srv.stop() }

// gateway is what the gateways' starts differ in.
type gateway struct {
	name     string // the binary's name, and the package's
	binDir   string // where Debian installs it, when it is not in PATH
	confFile string
	conf     func(dir string, port int, nonce string) string // the configuration for this port, answering nonce at readyPath
	args     func(dir, conf string) []string
	env      func(dir string) []string // added to the environment; may be nil
	stopSig  syscall.Signal
}

// startGateway starts g in a new temporary directory inside parent, on a
// free port, and returns once it answers its nonce.
func startGateway(ctx context.Context, parent string, g gateway) (_ *server, err error) {
	bin, err := findGateway(g.name, os.Getenv("PATH"), g.binDir)
	if err != nil {
		return nil, err
	}
	dir, err := newDir(parent, "devstack-"+g.name+"-")
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", g.name, err)
	}
	defer func() {
		if err != nil {
			os.RemoveAll(dir)
		}
	}()
	nonce := newNonce()
	conf := filepath.Join(dir, g.confFile)
	srv := &server{
		name:    g.name,
		dir:     dir,
		logPath: filepath.Join(dir, g.name+".log"),
		cmd: func(port int) *exec.Cmd {
			// A write error shows as the gateway failing to read its configuration, with the log tail.
			_ = os.WriteFile(conf, []byte(g.conf(dir, port, nonce)), 0o644)
			cmd := exec.Command(bin, g.args(dir, conf)...)
			cmd.Dir = dir
			if g.env != nil {
				cmd.Env = append(os.Environ(), g.env(dir)...)
			}
			return cmd
		},
		probe:   nonceProbe(nonce),
		stopSig: g.stopSig,
		killSig: syscall.SIGKILL,
	}
	if err := srv.startOnFreePort(ctx); err != nil {
		return nil, err
	}
	return srv, nil
}

// findGateway returns the path of a gateway binary from pathList, else from dir, where Debian installs it
// (root's PATH has /usr/sbin, a user's may not).
func findGateway(name, pathList, dir string) (string, error) {
	for _, d := range append(filepath.SplitList(pathList), dir) {
		if d == "" {
			continue
		}
		if p := filepath.Join(d, name); isExecutable(p) {
			return p, nil
		}
	}
	return "", fmt.Errorf("%w: %s is not in PATH nor in %s; install it with `apt-get install %s` (or run `make deps`)",
		ErrNotInstalled, name, dir, name)
}

func newNonce() string {
	var b [8]byte
	_, _ = rand.Read(b[:]) // crypto/rand never fails on Linux
	return hex.EncodeToString(b[:])
}

// nonceProbe succeeds once GET readyPath on port answers the nonce.
func nonceProbe(nonce string) func(ctx context.Context, port, _ int) error {
	return func(ctx context.Context, port, _ int) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+net.JoinHostPort("127.0.0.1", strconv.Itoa(port))+readyPath, nil)
		if err != nil {
			return err
		}
		// A fresh transport: no connection kept to a server that may be replaced.
		resp, err := (&http.Client{Transport: &http.Transport{DisableKeepAlives: true}}).Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<10))
		if err != nil {
			return err
		}
		if resp.StatusCode != http.StatusOK || strings.TrimSpace(string(body)) != nonce {
			return fmt.Errorf("%s answered %d %q: another server holds the port", readyPath, resp.StatusCode, body)
		}
		return nil
	}
}
