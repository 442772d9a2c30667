package devstack

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"syscall"

	"github.com/jackc/pgx/v5"
)

// replicationSlot keeps on the primary the WAL its replica has not received yet.
const replicationSlot = "devstack_replica"

// PostgresPair is a throwaway PostgreSQL primary and its streaming replica, started by StartPostgresPair.
// Its methods are safe for concurrent use.
type PostgresPair struct {
	primary, replica *Postgres
	promoted         atomic.Bool // the replica is the primary: nothing replicates any more
}

// StartPostgresPair starts a primary as StartPostgres does, copies it with pg_basebackup (-R: the copy
// starts as a standby streaming from the primary, through a replication slot) into a second directory, starts
// that replica on another free port, and returns once the replica streams. Both run with StartPostgres's
// settings; the replica answers read-only queries (hot standby). Replication is asynchronous: WaitReplicated
// waits for the replica to catch up.
//
// ctx bounds the start (one minute per step if it has no deadline). An error wraps ErrNotInstalled when a
// binary is missing, pg_basebackup included.
func StartPostgresPair(ctx context.Context, opts PostgresOptions) (_ *PostgresPair, err error) {
	bin, err := findPostgres(os.Getenv("PATH"), "/usr/lib/postgresql")
	if err != nil {
		return nil, err
	}
	basebackup, err := findPostgresTool(bin, "pg_basebackup", "postgresql-client-15")
	if err != nil {
		return nil, err
	}
	pair := &PostgresPair{}
	defer func() {
		if err != nil {
			pair.Stop()
		}
	}()
	if pair.primary, err = StartPostgres(ctx, opts); err != nil {
		return nil, err
	}
	pair.replica, err = runPostgres(ctx, bin, opts.Dir, func(dataDir string, cred *syscall.Credential) error {
		return pgBasebackup(ctx, basebackup, pair.primary.Port(), dataDir, cred)
	})
	if err != nil {
		return nil, err
	}
	if err := pair.waitStreaming(ctx); err != nil {
		return nil, err
	}
	return pair, nil
}

// findPostgresTool returns the program name of the installation bin comes from: from postgres's directory,
// else from the directory its postgres links to (a PATH directory may hold links to initdb and postgres alone).
func findPostgresTool(bin pgBin, name, pkg string) (string, error) {
	dirs := []string{filepath.Dir(bin.postgres)}
	if target, err := filepath.EvalSymlinks(bin.postgres); err == nil {
		dirs = append(dirs, filepath.Dir(target))
	}
	for _, d := range dirs {
		if p := filepath.Join(d, name); isExecutable(p) {
			return p, nil
		}
	}
	return "", fmt.Errorf("%w: %s is not beside %s; install it with `apt-get install %s` (or run `make deps`)",
		ErrNotInstalled, name, bin.postgres, pkg)
}

// pgBasebackup copies the primary on port into dataDir as a standby of it (standby.signal and
// primary_conninfo written by -R), creating the replication slot it will stream through.
func pgBasebackup(ctx context.Context, path string, port int, dataDir string, cred *syscall.Credential) error {
	ctx, cancel := withDefaultTimeout(ctx)
	defer cancel()
	cmd := exec.CommandContext(ctx, path,
		"--host=127.0.0.1",
		"--port="+strconv.Itoa(port),
		"--username="+superuser,
		"--pgdata="+dataDir,
		"--write-recovery-conf",
		"--wal-method=stream",
		"--create-slot", "--slot="+replicationSlot,
		"--checkpoint=fast", // else the copy waits for the next spread checkpoint
		"--no-sync",
		"--no-manifest", // nobody verifies this copy
		"--no-password",
	)
	cmd.Dir = filepath.Dir(dataDir)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred, Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("pg_basebackup: %w:\n%s", err, out)
	}
	return nil
}

// waitStreaming returns once the replica receives WAL from the primary.
func (pair *PostgresPair) waitStreaming(ctx context.Context) error {
	ctx, cancel := withDefaultTimeout(ctx)
	defer cancel()
	return poll(ctx, func(ctx context.Context) error {
		var status string
		err := queryRow(ctx, pair.replica.URL(), "SELECT coalesce((SELECT status FROM pg_stat_wal_receiver), 'none')", nil, &status)
		if err == nil && status != "streaming" {
			err = fmt.Errorf("wal receiver status %q", status)
		}
		return err
	}, "postgres replica not streaming")
}

// queryRow runs a one-row query with args on a new connection to url and scans it into dest.
func queryRow(ctx context.Context, url, sql string, args []any, dest ...any) error {
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	return conn.QueryRow(ctx, sql, args...).Scan(dest...)
}

// URL returns the pair's URL for the default database, naming both servers, primary first, so that a client
// connects to whichever of them accepts writes, as pgx reads it:
// postgres://postgres@127.0.0.1:P1,127.0.0.1:P2/postgres?sslmode=disable&target_session_attrs=read-write.
func (pair *PostgresPair) URL() string {
	return fmt.Sprintf("postgres://%s@127.0.0.1:%d,127.0.0.1:%d/postgres?sslmode=disable&target_session_attrs=read-write",
		superuser, pair.primary.Port(), pair.replica.Port())
}

// Primary returns the server that was started as the primary. Killing it is an outage; restarting it after
// Promote would make a second primary, listed first in URL: do not.
func (pair *PostgresPair) Primary() *Postgres { return pair.primary }

// Replica returns the server that was started as the primary's streaming replica, and is the primary after
// Promote.
func (pair *PostgresPair) Replica() *Postgres { return pair.replica }

// CreateDatabase creates the database name on the primary and returns its URL in the form of URL, once the
// replica has it too. See the function CreateDatabase.
func (pair *PostgresPair) CreateDatabase(ctx context.Context, name string) (url string, err error) {
	if url, err = CreateDatabase(ctx, pair.URL(), name); err != nil {
		return "", err
	}
	return url, pair.WaitReplicated(ctx)
}

// WaitReplicated returns once the replica has replayed everything the primary had written when it was called,
// so that what was committed survives Promote; after Promote, at once. ctx bounds the wait (one minute if it
// has no deadline).
func (pair *PostgresPair) WaitReplicated(ctx context.Context) error {
	if pair.promoted.Load() {
		return nil
	}
	ctx, cancel := withDefaultTimeout(ctx)
	defer cancel()
	var lsn string
	if err := queryRow(ctx, pair.primary.URL(), "SELECT pg_current_wal_lsn()::text", nil, &lsn); err != nil {
		return fmt.Errorf("postgres pair: primary's WAL position: %w", err)
	}
	return poll(ctx, func(ctx context.Context) error {
		var caughtUp bool
		err := queryRow(ctx, pair.replica.URL(), "SELECT coalesce(pg_last_wal_replay_lsn() >= $1::pg_lsn, false)", []any{lsn}, &caughtUp)
		if err == nil && !caughtUp {
			err = fmt.Errorf("replica has not replayed up to %s", lsn)
		}
		return err
	}, "postgres pair: replica behind")
}

// Promote makes the replica the primary: it kills the primary if it still runs (so that there are never two),
// promotes the replica (pg_promote(), the SQL form of pg_ctl promote), and returns once the replica accepts
// writes. Transactions the replica had not received are lost, as in a real failover: call WaitReplicated
// first to keep them. Later calls do nothing. ctx bounds the promotion (one minute if it has no deadline).
func (pair *PostgresPair) Promote(ctx context.Context) error {
	if pair.promoted.Load() {
		return nil
	}
	ctx, cancel := withDefaultTimeout(ctx)
	defer cancel()
	if err := pair.primary.Kill(); err != nil {
		return err
	}
	var promoted bool
	if err := queryRow(ctx, pair.replica.URL(), "SELECT pg_promote(wait => true, wait_seconds => 60)", nil, &promoted); err != nil {
		return fmt.Errorf("postgres pair: promote: %w", err)
	}
	if !promoted {
		return errors.New("postgres pair: promote: the replica did not leave recovery within 60 s")
	}
	pair.promoted.Store(true)
	return poll(ctx, func(ctx context.Context) error {
		var readOnly string
		err := queryRow(ctx, pair.URL(), "SHOW transaction_read_only", nil, &readOnly)
		if err == nil && readOnly != "off" {
			err = fmt.Errorf("transaction_read_only = %s", readOnly)
		}
		return err
	}, "postgres pair: promoted replica does not accept writes")
}

// Stop shuts both servers down and removes their directories. Later calls do nothing and return nil.
func (pair *PostgresPair) Stop() error {
	var errs []error
	for _, p := range []*Postgres{pair.replica, pair.primary} {
		if p != nil {
			errs = append(errs, p.Stop())
		}
	}
	return errors.Join(errs...)
}
