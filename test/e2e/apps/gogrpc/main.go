// Command gogrpc is the end-to-end test pair for gRPC, built against the
// module proxy's google.golang.org/grpc with no generated code of its own:
// the service is grpc's registered health service (grpc_health_v1), whose
// Check returns NOT_FOUND for a service name the server does not know.
//
// Usage:
//
//	gogrpc server <grpc port>
//	    a gRPC server with the health service; "ok.Service" is SERVING.
//	gogrpc client <http port> <grpc target>
//	    an HTTP/1.1 server whose GET /call?service=NAME makes one unary
//	    Health/Check call to target over one shared, plaintext (h2c)
//	    connection, from the handler's goroutine, and answers with the
//	    gRPC status code's name ("OK", "NotFound") and status 200.
//	gogrpc <port>
//	    as the test apps start it: GOGRPC_MODE (server or client) and
//	    GOGRPC_TARGET (the client's) from the environment.
//
// Each prints "ready" once it listens.
// It lives in its own module so the receiver's go.mod does not depend on
// grpc directly.
package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "gogrpc:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if len(args) == 1 {
		args = append([]string{os.Getenv("GOGRPC_MODE"), args[0]}, os.Getenv("GOGRPC_TARGET"))
		if args[0] == "server" {
			args = args[:2]
		}
	}
	switch {
	case len(args) == 2 && args[0] == "server":
		return serve(ctx, args[1])
	case len(args) == 3 && args[0] == "client":
		return client(ctx, args[1], args[2])
	}
	return fmt.Errorf("usage: gogrpc server <port> | gogrpc client <http port> <grpc target>")
}

func serve(ctx context.Context, port string) error {
	ln, err := net.Listen("tcp", "127.0.0.1:"+port)
	if err != nil {
		return err
	}
	s := grpc.NewServer()
	h := health.NewServer()
	h.SetServingStatus("ok.Service", healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(s, h)
	go func() {
		<-ctx.Done()
		s.Stop()
	}()
	fmt.Println("ready")
	return s.Serve(ln)
}

func client(ctx context.Context, port, target string) error {
	conn, err := grpc.NewClient(target, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	hc := healthpb.NewHealthClient(conn)
	mux := http.NewServeMux()
	mux.HandleFunc("/call", func(w http.ResponseWriter, r *http.Request) {
		cctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
		defer cancel()
		_, err := hc.Check(cctx, &healthpb.HealthCheckRequest{Service: r.URL.Query().Get("service")})
		fmt.Fprintln(w, status.Code(err))
	})
	ln, err := net.Listen("tcp", "127.0.0.1:"+port)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: mux}
	go func() {
		<-ctx.Done()
		srv.Close()
	}()
	fmt.Println("ready")
	if err := srv.Serve(ln); err != http.ErrServerClosed {
		return err
	}
	return nil
}
