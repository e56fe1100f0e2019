// gRPC peer for the end-to-end tests, written with grpc-go (Debian's
// golang-google-grpc-dev, GOPATH mode; it indexes `:path` in HPACK on first
// use). It speaks the protocol of tests/py/grpc_calls.py, so that it pairs
// with the grpcio, grpc-js and tonic peers: service calls.Calls, raw-bytes
// messages (no protobuf: a codec that passes []byte through), any unary
// method name.
//
//	grpc_peer server PORT   serves calls.Calls on 127.0.0.1:PORT; prints "ready"
//	grpc_peer client PORT   reads commands from stdin, one a line, over ONE
//	                        ClientConn and answers each with
//	                        "ok STATUS[ STATUS...]" when done:
//	    unary METHOD [TIMEOUT_MS [SLEEP_MS]]   a unary call
//	    unary METHOD CONTENT                   a unary call with request CONTENT
//	    sstream N | cstream N | bidi N | many N | traced TRACEPARENT
//	    quit
//
// The commands, the requests ("SLEEP_MS,REPLIES[,BYTES,padding]") and the
// server's answers (NotFound* is NOT_FOUND, Sleep sleeps, "reply:METHOD"
// and BYTES more; ServerStream, ClientStream and Bidi) are grpc_calls.py's;
// status names are printed as grpcio prints them. A reply that is not the
// one the request asked for ends the client with an error. The server's
// handler is grpc-go's unknown-service handler, so no stubs are generated
// (protoc-gen-go is not packaged for GOPATH builds here).
//
// With GRPC_TLS_DIR set (a directory with cert.pem and key.pem), both
// sides speak TLS (crypto/tls, h2 by ALPN); the client trusts any
// certificate (the tests' are self-signed).
package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

const service = "calls.Calls"

// defaultTimeout is a call's deadline when the command gives none
// (grpc_calls.py's).
const defaultTimeout = 30 * time.Second

// raw passes messages through as bytes. It is both the server's codec
// (grpc.CustomCodec) and the client's (grpc.ForceCodec).
type raw struct{}

func (raw) Marshal(v interface{}) ([]byte, error) { return *v.(*[]byte), nil }
func (raw) Unmarshal(data []byte, v interface{}) error {
	*v.(*[]byte) = append([]byte(nil), data...)
	return nil
}
func (raw) Name() string   { return "proto" }
func (raw) String() string { return "proto" }

// request is what a request asks for. Empty is one reply at once.
type request struct {
	sleep   time.Duration
	replies int
	size    int
}

func parse(req []byte) (request, error) {
	if len(req) == 0 {
		return request{replies: 1}, nil
	}
	fields := strings.SplitN(string(req), ",", 4)
	bad := status.Error(codes.InvalidArgument, "request is not SLEEP_MS,REPLIES[,BYTES,...]")
	if len(fields) < 2 {
		return request{}, bad
	}
	var n [3]int
	for i := range n {
		if i >= len(fields) {
			break
		}
		v, err := strconv.Atoi(fields[i])
		if err != nil || v < 0 {
			return request{}, bad
		}
		n[i] = v
	}
	return request{time.Duration(n[0]) * time.Millisecond, n[1], n[2]}, nil
}

// replyOf is the answer of unary `method` to a request of `size` extra bytes.
func replyOf(method string, size int) []byte {
	return append([]byte("reply:"+method), bytes.Repeat([]byte("x"), size)...)
}

// ---- server ----

func handle(_ interface{}, stream grpc.ServerStream) error {
	full, ok := grpc.MethodFromServerStream(stream)
	if !ok {
		return status.Error(codes.Internal, "no method")
	}
	svc, method := "", ""
	if parts := strings.SplitN(strings.TrimPrefix(full, "/"), "/", 2); len(parts) == 2 {
		svc, method = parts[0], parts[1]
	}
	if svc != service {
		return status.Errorf(codes.Unimplemented, "unknown service %s", svc)
	}
	switch method {
	case "ClientStream":
		n, err := drain(stream, nil)
		if err != nil {
			return err
		}
		reply := []byte(fmt.Sprintf("got%d", n))
		return stream.SendMsg(&reply)
	case "Bidi":
		_, err := drain(stream, func(m []byte) error {
			reply := append([]byte("echo:"), m...)
			return stream.SendMsg(&reply)
		})
		return err
	}
	var req []byte
	if err := stream.RecvMsg(&req); err != nil {
		return err
	}
	r, err := parse(req)
	if err != nil {
		return err
	}
	if method == "ServerStream" {
		for i := 0; i < r.replies; i++ {
			part := []byte(fmt.Sprintf("part%d", i))
			if err := stream.SendMsg(&part); err != nil {
				return err
			}
		}
		return nil
	}
	if strings.HasPrefix(method, "NotFound") {
		return status.Error(codes.NotFound, "no such thing")
	}
	if r.sleep > 0 {
		// An expired deadline ends the wait: the handler answers with the
		// context's status (DEADLINE_EXCEEDED), as a server that honours
		// deadlines does.
		select {
		case <-time.After(r.sleep):
		case <-stream.Context().Done():
			return status.FromContextError(stream.Context().Err()).Err()
		}
	}
	reply := replyOf(method, r.size)
	return stream.SendMsg(&reply)
}

// receiver is either end of a stream: what it reads.
type receiver interface {
	RecvMsg(m interface{}) error
}

// drain receives the messages of a stream until its end, passing each to
// `each` (if any); returns how many there were.
func drain(stream receiver, each func([]byte) error) (int, error) {
	n := 0
	for {
		var m []byte
		err := stream.RecvMsg(&m)
		if err == io.EOF {
			return n, nil
		}
		if err != nil {
			return n, err
		}
		n++
		if each != nil {
			if err := each(m); err != nil {
				return n, err
			}
		}
	}
}

func server(port string) error {
	l, err := net.Listen("tcp", "127.0.0.1:"+port)
	if err != nil {
		return err
	}
	opts := []grpc.ServerOption{grpc.CustomCodec(raw{}), grpc.UnknownServiceHandler(handle)}
	if dir := os.Getenv("GRPC_TLS_DIR"); dir != "" {
		creds, err := credentials.NewServerTLSFromFile(dir+"/cert.pem", dir+"/key.pem")
		if err != nil {
			return err
		}
		opts = append(opts, grpc.Creds(creds))
	}
	s := grpc.NewServer(opts...)
	fmt.Println("ready")
	return s.Serve(l)
}

// ---- client ----

func path(method string) string { return "/" + service + "/" + method }

// unary calls `method` with `req` within `timeout` and checks the reply.
func unary(ctx context.Context, conn *grpc.ClientConn, method string, req []byte, timeout time.Duration) error {
	r, err := parse(req)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var resp []byte
	if err := conn.Invoke(ctx, path(method), &req, &resp); err != nil {
		return err
	}
	if !bytes.Equal(resp, replyOf(method, r.size)) {
		fail("call %s answered %q", method, resp[:min(len(resp), 64)])
	}
	return nil
}

// stream opens a streaming call of `method`, sends `reqs` and closes its
// side, then counts the replies.
func stream(conn *grpc.ClientConn, method string, desc grpc.StreamDesc, reqs [][]byte) (int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), defaultTimeout)
	defer cancel()
	s, err := conn.NewStream(ctx, &desc, path(method))
	if err != nil {
		return 0, err
	}
	for i := range reqs {
		if err := s.SendMsg(&reqs[i]); err != nil {
			// The status is read below.
			break
		}
	}
	if err := s.CloseSend(); err != nil {
		return 0, err
	}
	return drain(s, nil)
}

func min(a, b int) int {
	if a < b {
		return a
	}
	return b
}

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "grpc_peer: "+format+"\n", args...)
	os.Exit(1)
}

// run runs one command; returns what follows "ok ".
func run(conn *grpc.ClientConn, words []string) (string, error) {
	cmd, args := words[0], words[1:]
	num := func(i int) int {
		if i >= len(args) {
			fail("%s: argument %d missing", cmd, i+1)
		}
		v, err := strconv.Atoi(args[i])
		if err != nil {
			fail("%s: argument %d is not a number", cmd, i+1)
		}
		return v
	}
	ok := statusName(codes.OK)
	switch cmd {
	case "unary":
		if len(args) == 0 {
			fail("unary: no method")
		}
		// A number after the method is a timeout; anything else is the
		// request's content.
		if len(args) > 1 && strings.Trim(args[1], "0123456789") == "" {
			sleep := 0
			if len(args) > 2 {
				sleep = num(2)
			}
			req := []byte(fmt.Sprintf("%d,1", sleep))
			timeout := time.Duration(num(1)) * time.Millisecond
			return ok, unary(context.Background(), conn, args[0], req, timeout)
		}
		req := []byte("0,1")
		if len(args) > 1 {
			req = []byte(args[1])
		}
		return ok, unary(context.Background(), conn, args[0], req, defaultTimeout)
	case "traced":
		if len(args) == 0 {
			fail("traced: no traceparent")
		}
		ctx := metadata.AppendToOutgoingContext(context.Background(), "traceparent", args[0])
		return ok, unary(ctx, conn, "Traced", nil, defaultTimeout)
	case "sstream":
		n := num(0)
		req := [][]byte{[]byte(fmt.Sprintf("0,%d", n))}
		got, err := stream(conn, "ServerStream", grpc.StreamDesc{ServerStreams: true}, req)
		if err == nil && got != n {
			fail("sstream %d: %d replies", n, got)
		}
		return ok, err
	case "cstream":
		reqs := make([][]byte, num(0))
		for i := range reqs {
			reqs[i] = []byte("m")
		}
		_, err := stream(conn, "ClientStream", grpc.StreamDesc{ClientStreams: true}, reqs)
		return ok, err
	case "bidi":
		n := num(0)
		reqs := make([][]byte, n)
		for i := range reqs {
			reqs[i] = []byte(fmt.Sprintf("m%d", i))
		}
		desc := grpc.StreamDesc{ClientStreams: true, ServerStreams: true}
		got, err := stream(conn, "Bidi", desc, reqs)
		if err == nil && got != n {
			fail("bidi %d: %d replies", n, got)
		}
		return ok, err
	case "many":
		return many(conn, num(0)), nil
	}
	fail("unknown command %q", strings.Join(words, " "))
	return "", nil
}

// many makes `n` unary calls M0..M(n-1), all started before any is waited
// for, so that they are multiplexed on the connection.
func many(conn *grpc.ClientConn, n int) string {
	names := make([]string, n)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			err := unary(context.Background(), conn, fmt.Sprintf("M%d", i), []byte("20,1"), 60*time.Second)
			names[i] = statusName(status.Code(err))
		}(i)
	}
	wg.Wait()
	return strings.Join(names, " ")
}

func client(port string) error {
	security := grpc.WithInsecure()
	if os.Getenv("GRPC_TLS_DIR") != "" {
		security = grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{InsecureSkipVerify: true}))
	}
	conn, err := grpc.Dial("127.0.0.1:"+port, security,
		grpc.WithDefaultCallOptions(grpc.ForceCodec(raw{})))
	if err != nil {
		return err
	}
	defer conn.Close()
	fmt.Println("ready")
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		words := strings.Fields(in.Text())
		if len(words) == 0 || words[0] == "quit" {
			break
		}
		answer, err := run(conn, words)
		if err != nil {
			answer = statusName(status.Code(err))
			if status.Code(err) == codes.Unknown {
				fmt.Fprintln(os.Stderr, "grpc_peer:", err)
			}
		}
		fmt.Println("ok " + answer)
	}
	return in.Err()
}

// statusName is the code's name as grpcio prints it (NOT_FOUND, not
// NotFound; CANCELLED, which grpc-go spells Canceled).
func statusName(c codes.Code) string {
	if c == codes.Canceled {
		return "CANCELLED"
	}
	var b strings.Builder
	var last rune
	for _, r := range c.String() {
		if r >= 'A' && r <= 'Z' && last >= 'a' && last <= 'z' {
			b.WriteByte('_')
		}
		b.WriteRune(r)
		last = r
	}
	return strings.ToUpper(b.String())
}

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: grpc_peer server|client PORT")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "server":
		err = server(os.Args[2])
	case "client":
		err = client(os.Args[2])
	default:
		err = fmt.Errorf("unknown role %s", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "grpc_peer:", err)
		os.Exit(1)
	}
}
