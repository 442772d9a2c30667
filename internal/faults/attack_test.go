//go:build faults

package faults

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"net"
	"strings"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	sessiondv1 "github.com/sessiond/sessiond/gen/sessiond/v1"
)

// sendGarbage opens a connection to addr, writes n random bytes and reads
// whatever comes back for a second.
func sendGarbage(addr string, n int) error {
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	buf := make([]byte, n)
	rand.Read(buf)
	_, err = c.Write(buf)
	_, _ = io.Copy(io.Discard, c)
	return err
}

// sendHTTP1 sends an HTTP/1.1 request (a GET, or a POST shaped like a gRPC
// call) and returns the first line of the answer, "" if none.
func sendHTTP1(addr string, get bool) (string, error) {
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	req := "GET / HTTP/1.1\r\nHost: " + addr + "\r\n\r\n"
	if !get {
		req = "POST /sessiond.v1.SessionService/ValidateSession HTTP/1.1\r\nHost: " + addr +
			"\r\nContent-Type: application/grpc\r\nTE: trailers\r\nContent-Length: 5\r\n\r\n\x00\x00\x00\x00\x00"
	}
	if _, err := io.WriteString(c, req); err != nil {
		return "", err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err == io.EOF {
		err = nil
	}
	return strings.TrimSpace(line), err
}

// sendOversized makes a ValidateSession call with a token of size bytes on
// its own connection and returns the status code.
func sendOversized(ctx context.Context, addr string, size int) (codes.Code, error) {
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return codes.Unknown, err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	_, err = sessiondv1.NewSessionServiceClient(conn).ValidateSession(ctx,
		&sessiondv1.ValidateSessionRequest{Token: strings.Repeat("a", size)})
	return status.Code(err), nil
}

// floodStreams opens one HTTP/2 connection to addr and starts n streams on
// it, each a ValidateSession call whose request never comes (HEADERS, no
// DATA), without waiting for the server's stream limit; then it reads what
// the server answers for 3 s and closes. It returns what the server did.
func floodStreams(addr string, n int) (string, error) {
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	bw := bufio.NewWriterSize(c, 64<<10)
	if _, err := bw.WriteString(http2.ClientPreface); err != nil {
		return "", err
	}
	fr := http2.NewFramer(bw, c)
	if err := fr.WriteSettings(); err != nil {
		return "", err
	}
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	for _, f := range [][2]string{
		{":method", "POST"}, {":scheme", "http"}, {":path", sessiondv1.SessionService_ValidateSession_FullMethodName},
		{":authority", addr}, {"content-type", "application/grpc"}, {"te", "trailers"},
	} {
		enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	block := hb.Bytes()
	sent := 0
	for i := range n {
		if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: uint32(2*i + 1), BlockFragment: block, EndHeaders: true}); err != nil {
			break
		}
		sent++
	}
	flushErr := bw.Flush()

	c.SetDeadline(time.Now().Add(3 * time.Second))
	rst := map[http2.ErrCode]int{}
	var goaway string
	frames := 0
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			break
		}
		frames++
		switch f := f.(type) {
		case *http2.RSTStreamFrame:
			rst[f.ErrCode]++
		case *http2.GoAwayFrame:
			goaway = fmt.Sprintf("GOAWAY %v after stream %d", f.ErrCode, f.LastStreamID)
		case *http2.SettingsFrame:
			if !f.IsAck() {
				fr.WriteSettingsAck()
				bw.Flush()
			}
		case *http2.PingFrame:
			if !f.IsAck() {
				fr.WritePing(true, f.Data)
				bw.Flush()
			}
		}
	}
	out := fmt.Sprintf("%d HEADERS sent, %d frames back, RST_STREAM %v", sent, frames, rst)
	if goaway != "" {
		out += ", " + goaway
	}
	return out, flushErr
}
