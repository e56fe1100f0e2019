// The first of two programs run in one process (standard library only;
// built at test time in GOPATH mode):
//
//	exec_first SECOND SPIN_MS
//
// Spends SPIN_MS of CPU in main.firstProgramSpins, then execs SECOND with
// SPIN_MS. Both are non-PIE Go executables, loaded at the same address:
// this one is the larger (net/http is linked in), so the other's code lies
// in addresses this one's code covered.
package main

import (
	"fmt"
	"net/http"
	"os"
	"strconv"
	"syscall"
	"time"
)

//go:noinline
func firstProgramSpins(d time.Duration) (n uint64) {
	for end := time.Now().Add(d); time.Now().Before(end); {
		for i := uint64(0); i < 100000; i++ {
			n += i ^ n>>3
		}
	}
	return n
}

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: exec_first SECOND SPIN_MS")
		os.Exit(2)
	}
	ms, err := strconv.Atoi(os.Args[2])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	if firstProgramSpins(time.Duration(ms)*time.Millisecond) == 1 {
		// Never taken: keeps net/http's code in the executable.
		_, _ = http.Get(os.Args[1])
	}
	err = syscall.Exec(os.Args[1], []string{os.Args[1], os.Args[2]}, os.Environ())
	fmt.Fprintln(os.Stderr, "exec:", err)
	os.Exit(1)
}
