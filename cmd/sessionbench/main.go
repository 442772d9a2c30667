// Command sessionbench measures sessiond: seed benchmark data, drive checked
// ValidateSession traffic at a server, or compare sessiond with a
// direct-Postgres baseline and a no-op gRPC server in one command. See
// internal/bench and `sessionbench --help`.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/sessiond/sessiond/internal/bench"
)

func main() {
	bench.RunSessiondChild() // coldstart runs sessiond as this program
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := bench.Main(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil && !errors.Is(err, flag.ErrHelp) {
		fmt.Fprintln(os.Stderr, "sessionbench:", err)
		os.Exit(1)
	}
}
