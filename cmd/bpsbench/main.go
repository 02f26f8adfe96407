// Command bpsbench measures gobps.
//
//	bpsbench pushpull [flags]   push+pull goodput on loopback, swept over
//	                            tensor size × workers × servers, against a
//	                            raw TCP loopback stream measured in the same run
//
// Run "bpsbench pushpull -h" for the flags.
package main

import (
	"fmt"
	"os"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: bpsbench pushpull [flags]")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "pushpull":
		err = pushPull(os.Args[2:])
	case "-h", "--help", "help":
		fmt.Println("usage: bpsbench pushpull [flags]   (bpsbench pushpull -h for flags)")
		return
	default:
		err = fmt.Errorf("unknown benchmark %q (want pushpull)", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bpsbench:", err)
		os.Exit(1)
	}
}
