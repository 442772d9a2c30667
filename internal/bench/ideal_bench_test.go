package bench

import (
	"crypto/sha256"
	"testing"
	"time"

	sessiondv1 "github.com/sessiond/sessiond/gen/sessiond/v1"
	"github.com/sessiond/sessiond/internal/tiers"
)

// BenchmarkIdealServer is the ideal cache's handler alone, below gRPC:
// what the floor spends per call beyond the no-op's constant answer.
func BenchmarkIdealServer(b *testing.B) {
	tok := "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	s := &idealServer{sessions: map[[sha256.Size]byte]*tiers.Record{sha256.Sum256([]byte(tok)): sampleRecord(time.Now())}}
	req := &sessiondv1.ValidateSessionRequest{Token: tok}
	b.ReportAllocs()
	for b.Loop() {
		if r, err := s.ValidateSession(b.Context(), req); err != nil || !r.GetValid() {
			b.Fatal(r, err)
		}
	}
}
