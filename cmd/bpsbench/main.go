// Command bpsbench measures gobps.
//
//	bpsbench pushpull [flags]   push+pull goodput on loopback, swept over
//	                            tensor size × workers × servers, against a
//	                            raw TCP loopback stream measured in the same run
//	bpsbench sum [flags]        summation kernels (dst += src) per
//	                            implementation × dtype × size, against copy()
//	                            and a non-temporal copy measured in the same run
//	bpsbench codec [flags]      gradient codecs (summation/codec) on one core,
//	                            against the summation kernel in the same run
//	bpsbench allreduce [flags]  one rank of a ring all-reduce over gobps's TCP
//	                            transport: the baseline of the allreduce-vs-PS
//	                            benchmark (scripts/bench_allreduce_vs_ps.sh)
//	bpsbench psworker [flags]   a worker that times push_pull of one tensor
//	                            (run under bpsrun, DMLC_ROLE=worker)
//	bpsbench netperf [flags]    TCP goodput of one link (netcluster.sh verify)
//	bpsbench report [flags]     table, bounds and plot from the benchmark's results
//	bpsbench model [flags]      the scale model: gobps against ring and tree
//	                            all-reduce at any size (calibrate, validate)
//
// Run "bpsbench pushpull -h" or "bpsbench sum -h" for the flags.
package main

import (
	"fmt"
	"os"

	// NVML device discovery for the worker engine (see gpu.Discover).
	_ "github.com/gobps/gobps/gpu/nvml"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: bpsbench pushpull|sum|codec|allreduce|psworker|netperf|report|model [flags]")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "pushpull":
		err = pushPull(os.Args[2:])
	case "sum":
		err = sum(os.Args[2:])
	case "codec":
		err = codecBench(os.Args[2:])
	case "allreduce":
		err = allReduce(os.Args[2:])
	case "psworker":
		err = psWorker(os.Args[2:])
	case "netperf":
		err = netperf(os.Args[2:])
	case "report":
		err = report(os.Args[2:])
	case "model":
		err = model(os.Args[2:])
	case "-h", "--help", "help":
		fmt.Println("usage: bpsbench pushpull|sum|codec|allreduce|psworker|netperf|report|model [flags]   (bpsbench NAME -h for flags)")
		return
	default:
		err = fmt.Errorf("unknown benchmark %q (want pushpull, sum, codec, allreduce, psworker, netperf, report or model)", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bpsbench:", err)
		os.Exit(1)
	}
}
