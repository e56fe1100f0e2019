// An HTTPS server on net/http and crypto/tls: 200 for every path. HTTP/1.1
// only (h2 turned off), unless TLS_H2=1 (net/http's default: h2 by ALPN).
// With TLS_WRAP=1 every accepted connection is wrapped three times before
// TLS, as proxies do (traefik: peeked bytes, tracked connections, each
// embedding the connection it wraps first, as its own interface type; the
// PROXY protocol's connection, holding it after fields of its own).
// Usage: tls_server PORT CERT KEY. Prints "ready" once listening.
package main

import (
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"os"
	"sync"
	"time"
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
	return &tracked{writeCloser: &peeked{writeCloser: &proxied{conn: tcp}}}, nil
}

// proxied stands for a PROXY-protocol connection: the client's address
// read once from the stream's first line, the connection in a later field.
type proxied struct {
	client *net.TCPAddr
	once   sync.Once
	reads  int
	conn   writeCloser
}

func (p *proxied) Read(b []byte) (int, error) {
	p.once.Do(func() { p.client, _ = p.conn.RemoteAddr().(*net.TCPAddr) })
	p.reads++
	return p.conn.Read(b)
}

func (p *proxied) Write(b []byte) (int, error)        { return p.conn.Write(b) }
func (p *proxied) Close() error                       { return p.conn.Close() }
func (p *proxied) CloseWrite() error                  { return p.conn.CloseWrite() }
func (p *proxied) LocalAddr() net.Addr                { return p.conn.LocalAddr() }
func (p *proxied) RemoteAddr() net.Addr               { return p.conn.RemoteAddr() }
func (p *proxied) SetDeadline(t time.Time) error      { return p.conn.SetDeadline(t) }
func (p *proxied) SetReadDeadline(t time.Time) error  { return p.conn.SetReadDeadline(t) }
func (p *proxied) SetWriteDeadline(t time.Time) error { return p.conn.SetWriteDeadline(t) }
