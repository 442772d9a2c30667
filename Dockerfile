# syntax=docker/dockerfile:1
# sessiond's image: a static binary on distroless, as a non-root user.
#
#   docker build -t sessiond .
#   docker run -p 50051:50051 -p 9090:9090 -e DATABASE_URL=... -e REDIS_URL=... sessiond
#
# No image is built in this repository's CI (no container engine there); go test ./deploy builds the binary
# exactly as below and runs `serve --help` and `migrate --help` in an empty root filesystem, which is what
# this image holds besides CA certificates and /etc/passwd.

FROM golang:1.26.8-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/sessiond ./cmd/sessiond
# For container runtimes' own health checks (Kubernetes probes /readyz and /healthz instead).
RUN CGO_ENABLED=0 GOBIN=/out go install -trimpath github.com/grpc-ecosystem/grpc-health-probe@v0.4.62

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/sessiond /sessiond
COPY --from=build /out/grpc-health-probe /grpc_health_probe
USER nonroot:nonroot
# gRPC; ops HTTP (/metrics, /healthz, /readyz).
EXPOSE 50051 9090
# Plaintext gRPC only: with --tls-cert, probe /readyz on the ops port instead.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5m CMD ["/grpc_health_probe", "-addr=127.0.0.1:50051"]
ENTRYPOINT ["/sessiond"]
CMD ["serve"]
