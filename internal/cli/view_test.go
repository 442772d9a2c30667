package cli

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	sessiondv1 "github.com/sessiond/sessiond/gen/sessiond/v1"
)

func TestProgressPercent(t *testing.T) {
	for _, tt := range []struct {
		done, total int32
		want        int
	}{
		{100, 856, 12}, {200, 856, 23}, {855, 856, 99}, {856, 856, 100}, {0, 5, 0}, {0, 0, 100},
	} {
		if got := progressPercent(tt.done, tt.total); got != tt.want {
			t.Errorf("progressPercent(%d, %d) = %d, want %d", tt.done, tt.total, got, tt.want)
		}
	}
}

func TestPercent(t *testing.T) {
	for _, tt := range []struct {
		v    float64
		want string
	}{{100, "100"}, {92.5, "92.5"}, {200.0 / 3, "66.67"}, {0, "0"}, {0.004, "0"}} {
		if got := percent(tt.v); got != tt.want {
			t.Errorf("percent(%v) = %q, want %q", tt.v, got, tt.want)
		}
	}
}

// The bar is drawn on terminals only; here it draws into a buffer.
func TestBarView(t *testing.T) {
	completed := sessiondv1.WarmOutcome_WARM_OUTCOME_COMPLETED
	failed := sessiondv1.WarmOutcome_WARM_OUTCOME_FAILED
	for _, tt := range []struct {
		name string
		msgs []*sessiondv1.WarmCacheProgress
		want []string
	}{
		{"completed", []*sessiondv1.WarmCacheProgress{
			{Total: 7}, {Total: 7, Warmed: 3, Batches: 1}, {Total: 7, Warmed: 7, Batches: 2},
			{Total: 7, Warmed: 7, Batches: 2, Done: true, Outcome: completed},
		}, []string{"Warming 7 sessions", "(7/7)"}},
		{"failed half way", []*sessiondv1.WarmCacheProgress{
			{Total: 10}, {Total: 10, Warmed: 2, Failed: 3, Batches: 1},
			{Total: 10, Warmed: 2, Failed: 3, Batches: 1, Done: true, Outcome: failed},
		}, []string{"3 failed", "(5/10)"}},
		{"nothing to warm", []*sessiondv1.WarmCacheProgress{{Done: true, Outcome: completed}}, nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			v := &barView{w: &buf}
			for _, m := range tt.msgs {
				if err := v.show(m); err != nil {
					t.Fatal(err)
				}
			}
			v.close() // after the last message: writes nothing more
			out := buf.String()
			for _, w := range tt.want {
				if !strings.Contains(out, w) {
					t.Errorf("bar output lacks %q: %q", w, out)
				}
			}
			if tt.want == nil && out != "" {
				t.Errorf("drew %q for an empty run", out)
			}
			if out != "" && (!strings.HasSuffix(out, "\n") || strings.HasSuffix(out, "\n\n")) {
				t.Errorf("the bar's line is not ended exactly once: %q", out)
			}
		})
	}
}

func TestViewChoice(t *testing.T) {
	file, err := os.Create(filepath.Join(t.TempDir(), "out"))
	if err != nil {
		t.Fatal(err)
	}
	defer file.Close()
	for _, tt := range []struct {
		name string
		o    warmOptions
		w    io.Writer
		want string
	}{
		{"a buffer", warmOptions{}, &bytes.Buffer{}, "*cli.lineView"},
		{"a regular file", warmOptions{}, file, "*cli.lineView"},
		{"json", warmOptions{json: true}, file, "cli.jsonView"},
		{"estimate", warmOptions{estimate: true}, file, "cli.discardView"},
	} {
		if got := fmt.Sprintf("%T", tt.o.view(tt.w)); got != tt.want {
			t.Errorf("%s: %s, want %s", tt.name, got, tt.want)
		}
	}
}
