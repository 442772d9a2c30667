package seed

import (
	"bufio"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"
)

// The tokens file has one line per session and no header:
//
//	token \t session_id \t user_id \t valid \t reason \t last_activity_at
//
// valid is "true" or "false", reason is empty for a valid session, and
// last_activity_at is RFC 3339 with nanoseconds, in UTC.
const tokenFields = 6

// WriteTokens returns an emit function for Load that writes each Truth to w
// as a line of the tokens file. Each line is one Write call: for millions of
// sessions wrap a file in a bufio.Writer, and Flush it after Load returns.
func WriteTokens(w io.Writer) func(Truth) error {
	var line []byte
	return func(t Truth) error {
		line = line[:0]
		line = append(line, t.Token...)
		line = append(line, '\t')
		line = append(line, t.SessionID...)
		line = append(line, '\t')
		line = append(line, t.UserID...)
		line = append(line, '\t')
		line = strconv.AppendBool(line, t.Valid)
		line = append(line, '\t')
		line = append(line, t.Reason...)
		line = append(line, '\t')
		line = t.LastActivityAt.UTC().AppendFormat(line, time.RFC3339Nano)
		line = append(line, '\n')
		if _, err := w.Write(line); err != nil {
			return fmt.Errorf("seed: write tokens: %w", err)
		}
		return nil
	}
}

// ReadTokens reads a tokens file written by WriteTokens. It reads the whole
// file into memory (about 200 bytes per session); a malformed line is an
// error naming its line number.
func ReadTokens(r io.Reader) ([]Truth, error) {
	var out []Truth
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		f := strings.Split(sc.Text(), "\t")
		if len(f) != tokenFields {
			return nil, fmt.Errorf("seed: read tokens: line %d: %d fields, want %d", n, len(f), tokenFields)
		}
		valid, err := strconv.ParseBool(f[3])
		if err != nil {
			return nil, fmt.Errorf("seed: read tokens: line %d: valid: %w", n, err)
		}
		last, err := time.Parse(time.RFC3339Nano, f[5])
		if err != nil {
			return nil, fmt.Errorf("seed: read tokens: line %d: last_activity_at: %w", n, err)
		}
		if f[0] == "" || valid != (f[4] == "") {
			return nil, fmt.Errorf("seed: read tokens: line %d: empty token, or valid=%v with reason %q", n, valid, f[4])
		}
		out = append(out, Truth{
			Token:          f[0],
			SessionID:      f[1],
			UserID:         f[2],
			Valid:          valid,
			Reason:         f[4],
			LastActivityAt: last,
		})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("seed: read tokens: %w", err)
	}
	return out, nil
}
