//go:build faults

package faults

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// sessiondBin is the sessiond binary built by TestMain: the suite runs the
// same program production runs, in its own processes.
var sessiondBin string

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
	os.RemoveAll(dir)
	os.Exit(code)
}
