// gRPC peer for tests/tests/grpc_peers.rs, written with grpc-go (Debian's
// golang-google-grpc-dev, GOPATH mode). It speaks the protocol of
// tests/py/grpc_calls.py so that it pairs with grpcio and grpc-js peers:
// service calls.Calls, raw-bytes messages (no protobuf: a codec that passes
// []byte through), any unary method name.
//
//	grpc_peer server PORT   serves calls.Calls on 127.0.0.1:PORT; prints "ready"
//	grpc_peer client PORT   reads commands from stdin over ONE ClientConn and
//	                        answers each with "ok STATUS":
//	    unary METHOD [CONTENT]   a unary call of /calls.Calls/METHOD with
//	                             request CONTENT (default "0,1")
//	    quit
//
// A method whose name starts with "NotFound" is answered NOT_FOUND; any
// other is answered "reply:METHOD". The server's handler is grpc-go's
// unknown-service handler, so no stubs are generated (protoc-gen-go is not
// packaged for GOPATH builds here).
package main

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

const service = "calls.Calls"

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
	var req []byte
	if err := stream.RecvMsg(&req); err != nil {
		return err
	}
	if strings.HasPrefix(method, "NotFound") {
		return status.Error(codes.NotFound, "no such thing")
	}
	reply := []byte("reply:" + method)
	return stream.SendMsg(&reply)
}

func server(port string) error {
	l, err := net.Listen("tcp", "127.0.0.1:"+port)
	if err != nil {
		return err
	}
	s := grpc.NewServer(grpc.CustomCodec(raw{}), grpc.UnknownServiceHandler(handle))
	fmt.Println("ready")
	return s.Serve(l)
}

func client(port string) error {
	conn, err := grpc.Dial("127.0.0.1:"+port, grpc.WithInsecure(),
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
		if words[0] != "unary" || len(words) < 2 {
			return fmt.Errorf("unknown command %q", in.Text())
		}
		req := []byte("0,1")
		if len(words) > 2 {
			req = []byte(words[2])
		}
		var resp []byte
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		err := conn.Invoke(ctx, "/"+service+"/"+words[1], &req, &resp)
		cancel()
		if err == nil && string(resp) != "reply:"+words[1] {
			return fmt.Errorf("call %s answered %q", words[1], resp)
		}
		fmt.Println("ok " + statusName(status.Code(err)))
	}
	return in.Err()
}

// statusName is the code's name as grpcio prints it (NOT_FOUND, not NotFound).
func statusName(c codes.Code) string {
	switch c {
	case codes.OK:
		return "OK"
	case codes.NotFound:
		return "NOT_FOUND"
	case codes.DeadlineExceeded:
		return "DEADLINE_EXCEEDED"
	case codes.Unimplemented:
		return "UNIMPLEMENTED"
	}
	return strings.ToUpper(c.String())
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
