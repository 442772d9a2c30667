package cli

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"

	"golang.org/x/term"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// defaultAddr is where warm and stats look for a running sessiond: the
// server's default --grpc-addr on this host.
const defaultAddr = "localhost:50051"

// registerAddr adds --addr ($SESSIOND_ADDR) to a client command's flags,
// with the TLS and admin-token flags (tls.go) that dial takes.
func registerAddr(fs *flag.FlagSet, addr *string) *connFlags {
	fs.StringVar(addr, "addr", defaultAddr, "address of a running sessiond (host:port)")
	c := &connFlags{}
	c.register(fs)
	return c
}

func checkAddr(addr string) error {
	if addr == "" {
		return usageError{errors.New("invalid --addr ($SESSIOND_ADDR): required (host:port)")}
	}
	return nil
}

// dial returns a client connection to the sessiond at addr. It is the one
// place the client commands' transport is decided: plaintext, or TLS (with a
// client certificate for mutual TLS) and the admin bearer token, as c says.
// grpc.NewClient does not connect: an unreachable server shows as an
// Unavailable error from the first call.
func dial(addr string, c *connFlags) (*grpc.ClientConn, error) {
	opts, err := c.dialOptions()
	if err != nil {
		return nil, err
	}
	conn, err := grpc.NewClient(addr, append(opts, grpc.WithUserAgent("sessiond-cli"))...)
	if err != nil {
		return nil, usageError{fmt.Errorf("invalid --addr ($SESSIOND_ADDR) %q: %w", addr, err)}
	}
	return conn, nil
}

// rpcError says which call to which server failed and with what gRPC code.
func rpcError(method, addr string, err error) error {
	st := status.Convert(err)
	hint := ""
	if st.Code() == codes.Unauthenticated || st.Code() == codes.PermissionDenied {
		hint = " (the server wants its admin token: --admin-token or $SESSIOND_ADMIN_TOKEN)"
	}
	return fmt.Errorf("%s on %s failed: %s: %s%s", method, addr, st.Code(), st.Message(), hint)
}

// isTerminal reports whether w is a terminal: only an *os.File can be.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}
