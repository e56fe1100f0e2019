// An HTTPS server on crypto/tls alone whose Read and Write calls are made
// deep in a goroutine's stack, at a depth that changes with every
// connection: across connections the stack runs out at every point of the
// calls' prologues, so some calls of (*Conn).Read and (*Conn).Write start
// by growing the stack (morestack, which restarts them), and some Reads
// grow it inside (the runtime copies the stack elsewhere, the buffer on it
// with it). Connection i (from 0) serves one request: when i is even, its
// Reads are made with i/2 more words of stack in use; when odd, its Write.
// The steps of a word cross a stack's end at every instruction that
// checks it.
// Usage: tls_deep PORT CERT KEY [implicit|late]. With "implicit", the
// server never calls Handshake: each connection's first Read shakes hands,
// as in a plain tls.Listen server. With "late", it reads the request 50 ms
// after the handshake, by when a client that sent it and half-closed has
// sent its FIN too: one receive takes both. Prints "ready" once listening.
package main

import (
	"bytes"
	"crypto/tls"
	"fmt"
	"os"
	"time"
)

//go:noinline
func deep(n int, f func()) int {
	var pad [2]int
	if n > 0 {
		pad[0] = deep(n-1, f)
	} else {
		f()
	}
	return pad[0] + pad[1] + 1
}

// Frames of 0 to 5 more words than pad0's, each calling f.
//
//go:noinline
func pad0(f func()) { f() }

//go:noinline
func pad1(f func()) { var p [1]int; f(); sink(p[:]) }

//go:noinline
func pad2(f func()) { var p [2]int; f(); sink(p[:]) }

//go:noinline
func pad3(f func()) { var p [3]int; f(); sink(p[:]) }

//go:noinline
func pad4(f func()) { var p [4]int; f(); sink(p[:]) }

//go:noinline
func pad5(f func()) { var p [5]int; f(); sink(p[:]) }

//go:noinline
func sink(p []int) {}

// f run on a new goroutine (a new stack, of the runtime's first size) with
// j more stack words in use, by steps of a word: deep frames of six words,
// then a frame of j%6 more words.
func at(j int, f func()) {
	pads := []func(func()){pad0, pad1, pad2, pad3, pad4, pad5}
	done := make(chan struct{})
	go func() {
		deep(j/6, func() { pads[j%6](f) })
		close(done)
	}()
	<-done
}

func serve(c *tls.Conn, i int, mode string) {
	defer c.Close()
	if mode != "implicit" && c.Handshake() != nil {
		return
	}
	if mode == "late" {
		time.Sleep(50 * time.Millisecond)
	}
	var req []byte
	read := func() {
		// On the reading goroutine's stack: moved with it when it grows.
		var buf [512]byte
		for !bytes.Contains(req, []byte("\r\n\r\n")) {
			n, err := c.Read(buf[:])
			if err != nil {
				return
			}
			req = append(req, buf[:n]...)
		}
	}
	var resp []byte
	respond := func() {
		line := req
		if j := bytes.IndexByte(line, '\n'); j >= 0 {
			line = line[:j]
		}
		body := fmt.Sprintf("deep %d %q\n", i, bytes.TrimSpace(line))
		resp = []byte(fmt.Sprintf("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s", len(body), body))
	}
	write := func() { c.Write(resp) }
	if i%2 == 0 {
		at(i/2, read)
		respond()
		write()
	} else {
		read()
		respond()
		at(i/2, write)
	}
}

func main() {
	mode := ""
	if len(os.Args) == 5 {
		mode = os.Args[4]
	}
	if len(os.Args) < 4 || len(os.Args) > 5 || (mode != "" && mode != "implicit" && mode != "late") {
		fmt.Fprintln(os.Stderr, "usage: tls_deep PORT CERT KEY [implicit|late]")
		os.Exit(2)
	}
	cert, err := tls.LoadX509KeyPair(os.Args[2], os.Args[3])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:"+os.Args[1], &tls.Config{Certificates: []tls.Certificate{cert}})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Println("ready")
	for i := 0; ; i++ {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go serve(c.(*tls.Conn), i, mode)
	}
}
