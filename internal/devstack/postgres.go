package devstack

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"syscall"

	"github.com/jackc/pgx/v5"
)

// superuser is the role initdb creates; it authenticates without a password (trust).
const superuser = "postgres"

// PostgresOptions configures StartPostgres. The zero value is ready to use.
type PostgresOptions struct {
	// Dir is the directory in which the server's temporary directory is created; "" means os.TempDir().
	// When running as root the server runs as an unprivileged user, who must be able to reach Dir:
	// a testing t.TempDir() does not qualify (its parent has mode 0700).
	Dir string
}

// Postgres is a throwaway PostgreSQL server started by StartPostgres. Its methods are safe for concurrent use.
type Postgres struct {
	srv     *server
	dataDir string
}

// StartPostgres runs initdb in a new temporary directory, starts postgres on a free 127.0.0.1 port and returns
// once it accepts connections. The server trades durability for speed (fsync and full_page_writes
// are off: what a commit wrote survives a crash of the server, not of the machine), allows 200 connections, keeps its Unix socket in its directory and logs to
// postgres.log there. When running as root, initdb and postgres run as the user postgres (or nobody).
//
// ctx bounds initdb and the wait for readiness (one minute if it has no deadline); the server itself lives
// until Stop, Kill, or the exit of this process. An error wraps ErrNotInstalled when the binaries are missing,
// and includes the end of the server's log when it failed to start. The server runs in its own process group,
// so a Ctrl-C in the terminal does not reach it: the caller stops it.
func StartPostgres(ctx context.Context, opts PostgresOptions) (_ *Postgres, err error) {
	bin, err := findPostgres(os.Getenv("PATH"), "/usr/lib/postgresql")
	if err != nil {
		return nil, err
	}
	return runPostgres(ctx, bin, opts.Dir, func(dataDir string, cred *syscall.Credential) error {
		return initdb(ctx, bin.initdb, dataDir, cred)
	})
}

// runPostgres creates a server directory in parent, has create make the data directory in it, and starts
// postgres there on a free port.
func runPostgres(ctx context.Context, bin pgBin, parent string, create func(dataDir string, cred *syscall.Credential) error) (_ *Postgres, err error) {
	cred, err := postgresCredential()
	if err != nil {
		return nil, err
	}
	dir, err := newDir(parent, "devstack-postgres-")
	if err != nil {
		return nil, fmt.Errorf("start postgres: %w", err)
	}
	defer func() {
		if err != nil {
			os.RemoveAll(dir)
		}
	}()
	if cred != nil {
		if err := checkSearchable(filepath.Dir(dir), cred); err != nil {
			return nil, fmt.Errorf("start postgres: %w", err)
		}
		if err := os.Chown(dir, int(cred.Uid), int(cred.Gid)); err != nil {
			return nil, fmt.Errorf("start postgres: %w", err)
		}
	}
	p := &Postgres{dataDir: filepath.Join(dir, "data")}
	if err := create(p.dataDir, cred); err != nil {
		return nil, err
	}
	p.srv = &server{
		name:    "postgres",
		dir:     dir,
		logPath: filepath.Join(dir, "postgres.log"),
		cmd: func(port int) *exec.Cmd {
			cmd := exec.Command(bin.postgres,
				"-D", p.dataDir,
				"-p", strconv.Itoa(port),
				"-c", "listen_addresses=127.0.0.1",
				"-c", "unix_socket_directories="+dir,
				"-c", "max_connections=200",
				"-c", "fsync=off",
				"-c", "full_page_writes=off",
			)
			cmd.Dir = dir
			cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
			return cmd
		},
		probe:   p.probe,
		stopSig: syscall.SIGINT, // fast shutdown: disconnect clients, checkpoint, exit
		// Immediate shutdown: like a crash for clients and for the data (recovery runs on the next start), but
		// the postmaster ends its backends before exiting. After a SIGKILL they would linger, keep serving
		// open connections during the "outage" and hold the shared memory that a restart needs.
		killSig: syscall.SIGQUIT,
	}
	if err := p.srv.startOnFreePort(ctx); err != nil {
		return nil, err
	}
	return p, nil
}

// probe succeeds once our postgres accepts connections. It checks the data directory because, if another
// process took the port, we might otherwise be talking to a different server.
func (p *Postgres) probe(ctx context.Context, port, _ int) error {
	conn, err := pgx.Connect(ctx, p.URL())
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	var dataDir string
	if err := conn.QueryRow(ctx, "SHOW data_directory").Scan(&dataDir); err != nil {
		return err
	}
	if dataDir != p.dataDir {
		return fmt.Errorf("port %d is served by another postgres (data directory %s)", port, dataDir)
	}
	return nil
}

// URL returns the superuser's URL for the default database: postgres://postgres@127.0.0.1:PORT/postgres?sslmode=disable.
// It stays the same across Kill and Restart.
func (p *Postgres) URL() string {
	return fmt.Sprintf("postgres://%s@127.0.0.1:%d/postgres?sslmode=disable", superuser, p.Port())
}

// Port returns the TCP port the server listens on.
func (p *Postgres) Port() int { return p.srv.port }

// Dir returns the server's directory, which holds its data directory, Unix socket and postgres.log. Stop removes it.
func (p *Postgres) Dir() string { return p.srv.dir }

// CreateDatabase creates the database name on this server and returns its URL. See the function CreateDatabase.
func (p *Postgres) CreateDatabase(ctx context.Context, name string) (url string, err error) {
	return CreateDatabase(ctx, p.URL(), name)
}

// DropDatabase drops the database name on this server. See the function DropDatabase.
func (p *Postgres) DropDatabase(ctx context.Context, name string) error {
	return DropDatabase(ctx, p.URL(), name)
}

// Stop shuts the server down (fast shutdown: clients are disconnected), waits for it to exit and removes its
// directory. Later calls, and later Kill calls, do nothing and return nil; Restart fails.
func (p *Postgres) Stop() error { return p.srv.stop() }

// Kill stops the server abruptly, as a crash would (PostgreSQL's immediate shutdown), and returns once it and
// all its backends have exited, so clients see an outage at once. The data directory is kept for Restart;
// every committed transaction survives it (synchronous_commit stays on, so outage tests keep their data). Kill on a stopped server does nothing.
func (p *Postgres) Kill() error {
	p.srv.kill()
	return nil
}

// Restart starts the server again on the same port, and so with the same URL, after Kill; if it is running,
// Restart shuts it down cleanly first. It returns once the server accepts connections (after crash recovery,
// if needed), bounded by ctx as in StartPostgres. It fails after Stop, which removed the data, and if another
// process has taken the port meanwhile.
func (p *Postgres) Restart(ctx context.Context) error { return p.srv.restart(ctx) }

// CreateDatabase creates the database name on the server that serverURL (a postgres:// URL whose role may
// create databases) points to, and returns serverURL with its database replaced by name. It fails if the
// database exists. ctx bounds connecting and creating.
func CreateDatabase(ctx context.Context, serverURL, name string) (url string, err error) {
	dbURL, err := withDatabase(serverURL, name)
	if err != nil {
		return "", err
	}
	if err := execAdmin(ctx, serverURL, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		return "", fmt.Errorf("create database %q: %w", name, err)
	}
	return dbURL, nil
}

// DropDatabase drops the database name on the server that serverURL points to, ending its open connections
// first. A database that does not exist is not an error. ctx bounds connecting and dropping.
func DropDatabase(ctx context.Context, serverURL, name string) error {
	if err := execAdmin(ctx, serverURL, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)"); err != nil {
		return fmt.Errorf("drop database %q: %w", name, err)
	}
	return nil
}

// execAdmin runs one statement on its own connection. CREATE and DROP DATABASE cannot run in a transaction,
// and a short-lived connection survives Kill and Restart of the server between calls.
func execAdmin(ctx context.Context, serverURL, sql string) error {
	conn, err := pgx.Connect(ctx, serverURL)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	_, err = conn.Exec(ctx, sql)
	return err
}

// withDatabase returns serverURL naming the database name instead of its own.
func withDatabase(serverURL, name string) (string, error) {
	if name == "" {
		return "", errors.New("database name is empty")
	}
	u, err := url.Parse(serverURL)
	if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
		return "", fmt.Errorf("server URL %q is not a postgres:// URL", serverURL)
	}
	u.Path, u.RawPath = "/"+name, ""
	return u.String(), nil
}

// pgBin holds the two PostgreSQL programs we run, from one installation.
type pgBin struct{ initdb, postgres string }

// findPostgres returns the first directory of pathList holding both initdb and postgres, else the newest
// libRoot/VERSION/bin (Debian installs there without touching PATH). Taking both from one directory avoids
// an initdb of one major version with a postgres of another.
func findPostgres(pathList, libRoot string) (pgBin, error) {
	var dirs []string
	for _, d := range filepath.SplitList(pathList) {
		if d != "" {
			dirs = append(dirs, d)
		}
	}
	versions, _ := filepath.Glob(filepath.Join(libRoot, "*", "bin"))
	version := func(binDir string) int {
		v, err := strconv.Atoi(filepath.Base(filepath.Dir(binDir)))
		if err != nil {
			return -1
		}
		return v
	}
	slices.SortFunc(versions, func(a, b string) int { return version(b) - version(a) })
	for _, d := range append(dirs, versions...) {
		b := pgBin{initdb: filepath.Join(d, "initdb"), postgres: filepath.Join(d, "postgres")}
		if isExecutable(b.initdb) && isExecutable(b.postgres) {
			return b, nil
		}
	}
	return pgBin{}, fmt.Errorf("%w: initdb and postgres are in neither PATH nor %s/*/bin; "+
		"install PostgreSQL with `apt-get install postgresql-15` (or run `make deps`)", ErrNotInstalled, libRoot)
}

func isExecutable(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0
}

// postgresCredential returns whom to run initdb and postgres as: nil (ourselves) unless we are root, which
// PostgreSQL refuses to run as; then the user postgres, or nobody.
func postgresCredential() (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	for _, name := range []string{"postgres", "nobody"} {
		u, err := user.Lookup(name)
		if err != nil {
			continue
		}
		uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
		gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
		if err1 != nil || err2 != nil {
			continue
		}
		return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
	}
	return nil, errors.New("start postgres: running as root, and there is no user postgres or nobody to run it as")
}

// checkSearchable fails if the user of cred cannot reach dir, so that a bad PostgresOptions.Dir is named,
// not reported as initdb's "permission denied". Supplementary groups are not checked: the child has none.
func checkSearchable(dir string, cred *syscall.Credential) error {
	for d := dir; ; d = filepath.Dir(d) {
		fi, err := os.Stat(d)
		if err != nil {
			return err
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		perm := fi.Mode().Perm()
		if ok && perm&0o001 == 0 && !(st.Uid == cred.Uid && perm&0o100 != 0) && !(st.Gid == cred.Gid && perm&0o010 != 0) {
			return fmt.Errorf("uid %d, which runs postgres because we are root, cannot enter %s: choose another PostgresOptions.Dir", cred.Uid, d)
		}
		if d == filepath.Dir(d) {
			return nil
		}
	}
}

// initdb creates a cluster in dataDir whose superuser "postgres" logs in without a password.
func initdb(ctx context.Context, path, dataDir string, cred *syscall.Credential) error {
	cmd := exec.CommandContext(ctx, path,
		"--pgdata="+dataDir,
		"--username="+superuser,
		"--auth=trust",
		"--encoding=UTF8",
		"--locale=C", // the environment's locale may not exist here; C also sorts fastest
		"--no-sync",
	)
	cmd.Dir = filepath.Dir(dataDir)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred, Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("initdb: %w:\n%s", err, out)
	}
	return nil
}
