// The second of two programs run in one process (see exec_first.go):
//
//	exec_second SPIN_MS
//
// Spends SPIN_MS of CPU in main.secondProgramSpins and prints "done".
package main

import (
	"os"
	"strconv"
	"time"
)

//go:noinline
func secondProgramSpins(d time.Duration) (n uint64) {
	for end := time.Now().Add(d); time.Now().Before(end); {
		for i := uint64(0); i < 100000; i++ {
			n += i ^ n>>2
		}
	}
	return n
}

func main() {
	ms, err := strconv.Atoi(os.Args[len(os.Args)-1])
	if err != nil {
		os.Exit(2)
	}
	if secondProgramSpins(time.Duration(ms)*time.Millisecond) == 1 {
		os.Exit(3)
	}
	os.Stdout.WriteString("done\n")
}
