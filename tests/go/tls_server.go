// An HTTPS server on net/http and crypto/tls: 200 for every path. HTTP/1.1
// only (h2 turned off), unless TLS_H2=1 (net/http's default: h2 by ALPN).
// With TLS_WRAP=1 every accepted connection is wrapped twice before TLS,
// as proxies do (traefik: peeked bytes, tracked connections), each wrapper
// embedding the connection it wraps first, as its own interface type.
// Usage: tls_server PORT CERT KEY. Prints "ready" once listening.
package main

import (
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"os"
)

func main() {
	if len(os.Args) != 4 {
		fmt.Fprintln(os.Stderr, "usage: tls_server PORT CERT KEY")
		os.Exit(2)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:"+os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/plain")
			fmt.Fprintf(w, "go tls ok %s\n", r.URL.Path)
		}),
	}
	if os.Getenv("TLS_H2") != "1" {
		srv.TLSNextProto = map[string]func(*http.Server, *tls.Conn, http.Handler){}
	}
	if os.Getenv("TLS_WRAP") == "1" {
		ln = wrapListener{ln}
	}
	fmt.Println("ready")
	if err := srv.ServeTLS(ln, os.Args[2], os.Args[3]); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

// writeCloser is a connection that can half-close: a proxy's own
// connection interface, so the itab over *net.TCPConn is not net.Conn's.
type writeCloser interface {
	net.Conn
	CloseWrite() error
}

// peeked and tracked stand for a proxy's wrappers.
type peeked struct {
	writeCloser
	peeked int
}

type tracked struct {
	writeCloser
	requests int
}

type wrapListener struct{ net.Listener }

func (l wrapListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	tcp, ok := c.(*net.TCPConn)
	if !ok {
		return c, nil
	}
	return &tracked{writeCloser: &peeked{writeCloser: tcp}}, nil
}
