// Package cli is sessiond's command line: serve (the default), migrate, warm
// and stats. cmd/sessiond only hands it the process's arguments, environment
// and signals.
package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/sessiond/sessiond/internal/config"
	"github.com/sessiond/sessiond/internal/redact"
	"github.com/sessiond/sessiond/internal/schema"
	"github.com/sessiond/sessiond/internal/server"
)

// Env is what a command may touch of its process.
type Env struct {
	Getenv func(string) string
	Stdout io.Writer
	Stderr io.Writer
}

// Exit codes.
const (
	exitOK      = 0
	exitFailed  = 1 // the command ran and failed (including a failed warm)
	exitUsage   = 2 // bad flags or configuration
	usageHeader = `sessiond validates session tokens over gRPC.

Usage:
  sessiond [serve] [flags]   run the server (the default command)
  sessiond migrate [flags]   create the platform schema, tables and indexes if absent
  sessiond warm [flags]      warm a running server's cache, showing progress
  sessiond stats [flags]     print a running server's statistics

Run 'sessiond COMMAND --help' for a command's flags.
`
)

// usageError marks errors that are the caller's to fix (exit status 2).
type usageError struct{ error }

func (e usageError) Unwrap() error { return e.error }

// Main runs the command named by args[0] (serve when absent or a flag) and
// returns the process exit status.
func Main(ctx context.Context, args []string, env Env) int {
	cmd := "serve"
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		cmd, args = args[0], args[1:]
	}
	var err error
	switch cmd {
	case "serve":
		err = serve(ctx, args, env)
	case "migrate":
		err = migrate(ctx, args, env)
	case "warm":
		err = warm(ctx, args, env)
	case "stats":
		err = stats(ctx, args, env)
	case "help":
		fmt.Fprint(env.Stdout, usageHeader)
		return exitOK
	default:
		if cmd == "-h" || cmd == "--help" {
			fmt.Fprint(env.Stdout, usageHeader)
			return exitOK
		}
		fmt.Fprintf(env.Stderr, "sessiond: unknown command %q\n\n%s", cmd, usageHeader)
		return exitUsage
	}
	switch {
	case err == nil:
		return exitOK
	case errors.Is(err, flag.ErrHelp):
		return exitOK
	case errors.As(err, new(usageError)):
		fmt.Fprintf(env.Stderr, "sessiond %s: %v\n", cmd, err)
		return exitUsage
	default:
		fmt.Fprintf(env.Stderr, "sessiond %s: %v\n", cmd, err)
		return exitFailed
	}
}

func newFlagSet(name, summary string, env Env) *flag.FlagSet {
	fs := flag.NewFlagSet("sessiond "+name, flag.ContinueOnError)
	fs.SetOutput(env.Stderr)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: sessiond %s [flags]\n\n%s\n\nFlags (each also read from the environment variable in brackets):\n", name, summary)
		fs.PrintDefaults()
	}
	return fs
}

// parse sets fs's flags from env and args; a bad value is a usage error.
func parse(fs *flag.FlagSet, args []string, env Env) error {
	if err := config.Parse(fs, args, env.Getenv); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return usageError{err}
	}
	if fs.NArg() > 0 {
		return usageError{fmt.Errorf("unexpected argument %q", fs.Arg(0))}
	}
	return nil
}

func newLogger(cfg config.Config, w io.Writer) *slog.Logger {
	var lvl slog.Level
	_ = lvl.UnmarshalText([]byte(cfg.LogLevel)) // validated already
	opts := &slog.HandlerOptions{Level: lvl}
	if cfg.LogFormat == "text" {
		return slog.New(slog.NewTextHandler(w, opts))
	}
	return slog.New(slog.NewJSONHandler(w, opts))
}

func serve(ctx context.Context, args []string, env Env) error {
	cfg := config.Default()
	fs := newFlagSet("serve", "Serve SessionService, gRPC health and reflection.", env)
	cfg.RegisterFlags(fs)
	if err := parse(fs, args, env); err != nil {
		return err
	}
	if err := cfg.Validate(); err != nil {
		return usageError{err}
	}
	log := newLogger(cfg, env.Stderr)
	opts, release, err := server.OpsOptions(ctx, cfg, env.Getenv, log)
	if err != nil {
		return err
	}
	defer release()
	srv, err := server.New(ctx, cfg, log, opts...)
	if err != nil {
		return err
	}
	lis, err := net.Listen("tcp", cfg.GRPCAddr)
	if err != nil {
		return fmt.Errorf("listen on --grpc-addr %s: %w", cfg.GRPCAddr, err)
	}
	return srv.Run(ctx, lis)
}

func migrate(ctx context.Context, args []string, env Env) error {
	cfg := config.Default()
	fs := newFlagSet("migrate", "Create schema platform, its two tables and the warming and lookup indexes where absent,\nand the triggers that tell sessiond what to drop from its cache.\nIdempotent; never drops or alters the application's tables.", env)
	fs.StringVar(&cfg.DatabaseURL, "database-url", "", "Postgres URL")
	triggers := fs.Bool("triggers", true, "install the change-notification triggers (sessiond_* on user_sessions and users); without them, call InvalidateSessions")
	if err := parse(fs, args, env); err != nil {
		return err
	}
	if cfg.DatabaseURL == "" {
		return usageError{errors.New("invalid --database-url ($DATABASE_URL): required")}
	}
	if err := redact.Check("the value", cfg.DatabaseURL); err != nil {
		return usageError{fmt.Errorf("invalid --database-url ($DATABASE_URL): %w", err)}
	}
	secrets := redact.New(cfg.DatabaseURL)
	conn, err := pgx.Connect(ctx, cfg.DatabaseURL)
	if err != nil {
		return fmt.Errorf("connect to postgres: %w", secrets.Error(err))
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var opts []schema.Option
	if !*triggers {
		opts = append(opts, schema.WithoutTriggers())
	}
	if err := schema.Migrate(ctx, conn, opts...); err != nil {
		return secrets.Error(err)
	}
	fmt.Fprintln(env.Stdout, "migrated: schema platform, tables users and user_sessions, indexes idx_user_sessions_activity and idx_user_sessions_token are present")
	if *triggers {
		fmt.Fprintf(env.Stdout, "invalidation triggers sessiond_session_{insert,update,delete} and sessiond_user_{update,delete} notify channel %s\n", schema.Channel)
	}
	return nil
}
