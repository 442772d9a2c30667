package cli

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"

	"golang.org/x/term"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

// defaultAddr is where warm and stats look for a running sessiond: the
// server's default --grpc-addr on this host.
const defaultAddr = "localhost:50051"

// registerAddr adds --addr ($SESSIOND_ADDR) to a client command's flags.
func registerAddr(fs *flag.FlagSet, addr *string) {
	fs.StringVar(addr, "addr", defaultAddr, "address of a running sessiond (host:port)")
}

func checkAddr(addr string) error {
	if addr == "" {
		return usageError{errors.New("invalid --addr ($SESSIOND_ADDR): required (host:port)")}
	}
	return nil
}

// dial returns a client connection to the sessiond at addr. It is the one
// place the client commands' transport is decided: plaintext for now; TLS and
// an admin bearer token (read through env) belong here when they come.
// grpc.NewClient does not connect: an unreachable server shows as an
// Unavailable error from the first call.
func dial(addr string, env Env) (*grpc.ClientConn, error) {
	_ = env // TLS and admin-token settings will come from flags and env here
	conn, err := grpc.NewClient(addr,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithUserAgent("sessiond-cli"),
	)
	if err != nil {
		return nil, usageError{fmt.Errorf("invalid --addr ($SESSIOND_ADDR) %q: %w", addr, err)}
	}
	return conn, nil
}

// rpcError says which call to which server failed and with what gRPC code.
func rpcError(method, addr string, err error) error {
	st := status.Convert(err)
	return fmt.Errorf("%s on %s failed: %s: %s", method, addr, st.Code(), st.Message())
}

// isTerminal reports whether w is a terminal: only an *os.File can be.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}
