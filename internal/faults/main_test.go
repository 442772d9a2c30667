//go:build faults

package faults

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// sessiondBin is the sessiond binary built by TestMain: the suite runs the
// same program production runs, in its own processes.
var sessiondBin string

// report gathers the rows of every suite that ran (TestFaults, then
// TestEngineFaults), for the one table TestMain prints.
var report reportLog

type reportLog struct {
	mu   sync.Mutex
	rows []Row
}

func (r *reportLog) add(rows []Row) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.rows = append(r.rows, rows...)
}

// print prints the table and writes it to $FAULTS_REPORT if set.
func (r *reportLog) print() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.rows) == 0 {
		return nil
	}
	md := Markdown(r.rows)
	fmt.Printf("\n## Fault suite (%s)\n\n%s\n", time.Now().UTC().Format("2006-01-02 15:04 UTC"), md)
	if path := os.Getenv("FAULTS_REPORT"); path != "" {
		if err := os.WriteFile(path, []byte(md), 0o644); err != nil {
			return fmt.Errorf("write FAULTS_REPORT: %w", err)
		}
	}
	return nil
}

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "sessiond-faults-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "faults:", err)
		os.Exit(1)
	}
	sessiondBin = filepath.Join(dir, "sessiond")
	// go test puts its own GOROOT/bin first in PATH: this is the go that runs the test.
	build := exec.Command("go", "build", "-o", sessiondBin, "github.com/sessiond/sessiond/cmd/sessiond")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "faults: build sessiond:", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	if err := report.print(); err != nil {
		fmt.Fprintln(os.Stderr, "faults:", err)
		code = max(code, 1)
	}
	os.RemoveAll(dir)
	os.Exit(code)
}
