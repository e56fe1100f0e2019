// A Go net/http service for the parent tests (standard library only; built
// at test time in GOPATH mode):
//
//	timer_proxy PORT BACKEND_PORT [POLL_MS [PREFIX]]
//
// Each request's handler calls the backend on 127.0.0.1:BACKEND_PORT with
// the same method, path (after PREFIX, default none) and Host, as a
// reverse proxy does, from a new goroutine and answers with what it got; independently, a goroutine
// polls the backend at /poll/N every POLL_MS (default 20; 0: never).
// Prints "ready" once listening.
package main

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"time"
)

func main() {
	port := os.Args[1]
	backend := "http://127.0.0.1:" + os.Args[2]
	pollMs := 20
	if len(os.Args) > 3 {
		pollMs, _ = strconv.Atoi(os.Args[3])
	}
	prefix := ""
	if len(os.Args) > 4 {
		prefix = os.Args[4]
	}
	client := &http.Client{Timeout: 10 * time.Second}
	if pollMs > 0 {
		go func() {
			for n := 0; ; n++ {
				time.Sleep(time.Duration(pollMs) * time.Millisecond)
				if r, err := client.Get(fmt.Sprintf("%s/poll/%d", backend, n)); err == nil {
					io.Copy(io.Discard, r.Body)
					r.Body.Close()
				}
			}
		}()
	}
	http.HandleFunc("/", func(w http.ResponseWriter, in *http.Request) {
		type result struct {
			status int
			body   []byte
			err    error
		}
		done := make(chan result, 1)
		go func() {
			req, err := http.NewRequest(in.Method, backend+prefix+in.URL.RequestURI(), nil)
			if err != nil {
				done <- result{err: err}
				return
			}
			// A reverse proxy passes the Host on.
			req.Host = in.Host
			if id := in.Header.Get("X-Request-Id"); id != "" {
				req.Header.Set("X-Request-Id", id)
			}
			r, err := client.Do(req)
			if err != nil {
				done <- result{err: err}
				return
			}
			body, err := io.ReadAll(r.Body)
			r.Body.Close()
			done <- result{r.StatusCode, body, err}
		}()
		res := <-done
		if res.err != nil {
			http.Error(w, res.err.Error(), http.StatusBadGateway)
			return
		}
		w.WriteHeader(res.status)
		w.Write(res.body)
	})
	l, err := net.Listen("tcp", "127.0.0.1:"+port)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Println("ready")
	http.Serve(l, nil)
}
