package bench

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

func TestWritePlot(t *testing.T) {
	path := filepath.Join(t.TempDir(), "p.png")
	lines := []PlotLine{
		{Name: "a", Series: []Second{{T: 0, HitRate: 50, P99: 1}, {T: 1, HitRate: 90, P99: 0.5}}},
		{Name: "b", Series: []Second{{T: 0, HitRate: 0, P99: 3}}},
	}
	if err := WritePlot(path, lines); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(b, []byte("\x89PNG")) {
		t.Errorf("%s is not a PNG", path)
	}
}
