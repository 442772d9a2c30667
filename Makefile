# sessiond: the one entry point. `make help` lists the targets.
#
# Every tool is pinned: buf in tools/buf.mod, staticcheck in tools/lint.mod,
# the protoc plugins as tool lines in go.mod, grpcurl by version below. All
# come from the Go module proxy; the servers come from Debian's packages
# (scripts/ensure-servers).

SHELL := /bin/bash
GO ?= go
BIN := $(CURDIR)/bin
GRPCURL_VERSION := v1.9.4
BUF := $(GO) tool -modfile=tools/buf.mod buf
STATICCHECK := $(GO) tool -modfile=tools/lint.mod staticcheck
# grpcurl from PATH when there is one, else a pinned copy in ./bin.
GRPCURL := $(or $(shell command -v grpcurl 2>/dev/null),$(BIN)/grpcurl)

.DEFAULT_GOAL := help

.PHONY: help
help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-16s %s\n", $$1, $$2}'

.PHONY: deps
deps: ## install PostgreSQL, Redis, nginx and Caddy server binaries if missing (apt-get, as root)
	@scripts/ensure-servers

.PHONY: run
run: deps $(GRPCURL) ## start throwaway Postgres + Redis (unless DATABASE_URL/REDIS_URL are set), load demo data, serve
	@$(GO) build -o $(BIN)/sessiond-dev ./cmd/sessiond-dev
	@GRPCURL=$(GRPCURL) $(BIN)/sessiond-dev $(ARGS)

.PHONY: test
test: deps lint check-generate ## everything CI checks: lint, generated code up to date, unit and integration tests
	$(GO) test -race -count=1 -timeout 20m ./...

# The integration suite that must pass on every Redis engine: validation,
# warming, revocation across instances, activity, InvalidateSessions.
ENGINE_SUITE := TestValidateSession|TestCachedAnswers|TestWarm|TestRevocation|TestThreeInstances|TestInvalidateSessionsRPC|TestActivity|TestNegativeCache|TestRawToken|TestEntryFromRow|TestEveryTimestamp|TestBadInput|TestRedisEntryTTL

.PHONY: test-engines
test-engines: deps ## the engines production runs on: the integration suite on a 3-master Redis Cluster and through Sentinel, and the engines themselves (~4 min)
	$(GO) test -race -count=1 -timeout 10m -run 'Cluster|Sentinel|Pair' ./internal/devstack/...
	SESSIOND_TEST_REDIS=cluster $(GO) test -race -count=1 -timeout 15m -run '$(ENGINE_SUITE)' ./internal/server/
	SESSIOND_TEST_REDIS=sentinel $(GO) test -race -count=1 -timeout 15m -run '$(ENGINE_SUITE)' ./internal/server/

.PHONY: test-faults
test-faults: deps ## the fault suite: real sessiond processes, Postgres and Redis under faults and load (≤ 10 min; FAULTS_REPORT=FILE writes its table)
	$(GO) test -tags faults -count=1 -timeout 15m -v ./internal/faults/

.PHONY: test-short
test-short: ## the tests alone, without lint or generation checks
	$(GO) test -count=1 ./...

.PHONY: lint
lint: ## gofmt, go vet, staticcheck, buf lint
	@unformatted=$$(gofmt -l $$(git ls-files -co --exclude-standard '*.go' | grep -v '^gen/')); \
	  if [ -n "$$unformatted" ]; then echo "gofmt would change:"; echo "$$unformatted"; exit 1; fi
	$(GO) vet ./...
	$(GO) vet -tags faults ./internal/faults/
	$(STATICCHECK) ./...
	$(STATICCHECK) -tags faults ./internal/faults/
	$(BUF) lint

.PHONY: generate
generate: ## regenerate gen/ from proto/ (pinned buf and plugins)
	$(BUF) generate

.PHONY: check-generate
check-generate: ## fail when gen/ is not what proto/ generates
	@tmp=$$(mktemp -d) && cp -r gen "$$tmp/gen" && $(BUF) generate && \
	  if ! diff -r "$$tmp/gen" gen >/dev/null; then \
	    echo "gen/ was stale (now regenerated): commit the result"; diff -r "$$tmp/gen" gen | head -20; rm -rf "$$tmp"; exit 1; fi; \
	  rm -rf "$$tmp"

.PHONY: build
build: ## build bin/sessiond
	$(GO) build -o $(BIN)/sessiond ./cmd/sessiond

.PHONY: bench
bench: deps ## sessionbench compare: sessiond (and with tracing on) vs no local cache vs direct Postgres vs an ideal cache vs a no-op gRPC server, 3 interleaved runs, medians (throwaway servers, ~7 min)
	$(GO) run ./cmd/sessionbench compare $(ARGS)

.PHONY: bench-warm
bench-warm: deps ## sessionbench warm: warming 1M sessions (batch 1,000, delay 0), sessions/s and Redis B/session on one Redis and a 3-master cluster (~3 min)
	$(GO) run ./cmd/sessionbench warm $(ARGS)

.PHONY: bench-flood
bench-flood: deps ## sessionbench flood: 50k/s never-seen tokens for 10 s: Postgres queries per token, caller p99, cached sessions' latency meanwhile (~40 s)
	$(GO) run ./cmd/sessionbench flood $(ARGS)

.PHONY: bench-coldstart
bench-coldstart: deps ## sessionbench coldstart: sessiond with default flags on a cold Redis, Zipf(1.1) load from SERVING: hit rate per second, time to SERVING (3 runs, ~1 min)
	$(GO) run ./cmd/sessionbench coldstart $(ARGS)

.PHONY: bench-callers
bench-callers: deps ## p50/p99 of a cache hit through ValidateSession, ext_authz Check and forward-auth GET (~30 s)
	$(GO) test -run '^$$' -bench Callers -benchtime 60000x -count 3 ./internal/server
.PHONY: alerts
alerts: deps ## check the alert rules and run their unit tests (promtool)
	promtool check rules deploy/prometheus/alerts.yml
	cd deploy/prometheus && promtool test rules alerts_test.yml

.PHONY: fuzz
fuzz: ## fuzz the ValidateSession request path (FUZZTIME=5m)
	$(GO) test -run '^$$' -fuzz FuzzValidateSession -fuzztime $(or $(FUZZTIME),5m) ./internal/server

$(BIN)/grpcurl:
	GOBIN=$(BIN) $(GO) install github.com/fullstorydev/grpcurl/cmd/grpcurl@$(GRPCURL_VERSION)

.PHONY: clean
clean: ## remove build output
	rm -rf $(BIN)
