// An HTTPS client on net/http and crypto/tls (keep-alive; HTTP/1.1, or h2
// by ALPN when TLS_H2=1):
// prints "ready", waits for a line on stdin (so that the agent can find it
// first), then GETs BASE+PATH for every PATH, prints "done" and exits when
// stdin closes (the transport's read loop meanwhile back in a Read). With
// TLS_WARM=PATH it first GETs BASE+PATH before printing "ready": its
// connection stays open, the transport's read loop waiting in a Read.
// Usage: tls_client BASE PATH...
package main

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"os"
)

func main() {
	if len(os.Args) < 3 {
		fmt.Fprintln(os.Stderr, "usage: tls_client BASE PATH...")
		os.Exit(2)
	}
	client := &http.Client{Transport: &http.Transport{
		// A TLS config of its own: net/http then does not offer h2, unless
		// forced to.
		TLSClientConfig:   &tls.Config{InsecureSkipVerify: true},
		ForceAttemptHTTP2: os.Getenv("TLS_H2") == "1",
	}}
	get := func(p string) {
		resp, err := client.Get(os.Args[1] + p)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			fmt.Fprintln(os.Stderr, p, resp.Status)
			os.Exit(1)
		}
	}
	if warm := os.Getenv("TLS_WARM"); warm != "" {
		get(warm)
	}
	fmt.Println("ready")
	stdin := bufio.NewReader(os.Stdin)
	if _, err := stdin.ReadString('\n'); err != nil {
		os.Exit(1)
	}
	for _, p := range os.Args[2:] {
		get(p)
	}
	fmt.Println("done")
	io.Copy(io.Discard, stdin)
}
