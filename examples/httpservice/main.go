// Command httpservice is a small HTTP service whose endpoints need a valid
// sessiond session, through client.HTTPMiddleware:
//
//	go run ./examples/httpservice --sessiond localhost:50051 --insecure --listen :8080
//	curl -H 'Cookie: session=<token>' localhost:8080/me
//
// /me answers who the session belongs to; /healthz needs no session. A
// request without a valid session gets 401, and 503 when sessiond cannot
// answer.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/sessiond/sessiond/client"
)

func main() {
	listen := flag.String("listen", ":8080", "HTTP listen address")
	target := flag.String("sessiond", "dns:///sessiond-headless:50051", "sessiond gRPC target")
	plaintext := flag.Bool("insecure", false, "plaintext gRPC to sessiond (default: TLS, system roots)")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	opts := []client.Option{}
	if *plaintext {
		opts = append(opts, client.WithInsecure())
	}
	c, err := client.Dial(*target, opts...)
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	lis, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatal(err)
	}
	log.Printf("listening on %s", lis.Addr())
	if err := run(ctx, lis, c); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

// run serves on lis until ctx ends.
func run(ctx context.Context, lis net.Listener, c *client.Client) error {
	srv := &http.Server{Handler: routes(c), ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(shutdown)
	}()
	if err := srv.Serve(lis); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

func routes(c *client.Client) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	// Everything under /me needs a session.
	mux.Handle("GET /me", client.HTTPMiddleware(c)(http.HandlerFunc(me)))
	return mux
}

func me(w http.ResponseWriter, r *http.Request) {
	s := client.SessionFrom(r.Context()) // never nil behind the middleware (without WithFailOpen)
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(map[string]string{
		"user_id":    s.GetUserId(),
		"email":      s.GetEmail(),
		"session_id": s.GetId(),
	})
}
