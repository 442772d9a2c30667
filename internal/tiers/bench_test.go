package tiers

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"
)

func BenchmarkTokenHash(b *testing.B) {
	tok := "3f2c9b1e8d7a6f5e4d3c2b1a0f9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e"
	b.ReportAllocs()
	for b.Loop() {
		_ = TokenKey(tok)
	}
}

func BenchmarkCheckTokenAndRule(b *testing.B) {
	tok := "3f2c9b1e8d7a6f5e4d3c2b1a0f9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e"
	now := time.Now()
	ban := now.Add(-time.Hour)
	rec := &Record{ExpiresAt: now.Add(time.Hour), BannedUntil: &ban}
	b.ReportAllocs()
	for b.Loop() {
		if CheckToken(tok) != nil || Check(rec, now) != ReasonNone {
			b.Fatal("wrong answer")
		}
	}
}

type nopTruth struct{}

func (nopTruth) Lookup(context.Context, string) (*Record, error) { return nil, nil }

// BenchmarkReadThroughLocalHit is the hot path below gRPC: a session answered
// from rueidis's client-side cache of a real Redis, rule included.
func BenchmarkReadThroughLocalHit(b *testing.B) {
	r := trustedRedis(b, devtestRedisURL(b))
	tok := "3f2c9b1e8d7a6f5e4d3c2b1a0f9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e"
	now := time.Now()
	s := func(v string) *string { return &v }
	rec := &Record{ID: "0d4f4a5e-8d0c-4b0e-9a57-3e1f7b2c9d10", UserID: "6b1e2f3a-4c5d-4e6f-8a9b-0c1d2e3f4a5b", ExpiresAt: now.Add(time.Hour),
		LastActivityAt: now, CreatedAt: now, Email: "ada@example.test", FirstName: s("Ada"), UserAgent: s("Mozilla/5.0"), IPAddress: s("203.0.113.7")}
	gen, err := r.Gen(b.Context())
	if err != nil {
		b.Fatal(err)
	}
	if _, err := r.Set(b.Context(), Key(TokenHash(tok)), rec, Stamp{ReadStart: now, Gen: gen}); err != nil {
		b.Fatal(err)
	}
	rt := NewReadThrough(r, nopTruth{}, ReadThroughOptions{RedisTimeout: time.Second, PostgresTimeout: time.Second}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	ctx := context.Background()
	deadline := time.Now().Add(5 * time.Second)
	for { // until the answer comes from process memory
		res, err := rt.Validate(ctx, tok)
		if err != nil {
			b.Fatal(err)
		}
		if res.Source == SourceLocal {
			break
		}
		if time.Now().After(deadline) {
			b.Fatal("never answered locally")
		}
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		res, err := rt.Validate(ctx, tok)
		if err != nil || res.Source != SourceLocal || !res.Valid() {
			b.Fatalf("%+v %v", res, err)
		}
	}
}
