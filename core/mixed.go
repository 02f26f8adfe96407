package core

import (
	"fmt"
	"net"

	"github.com/gobps/gobps/cluster"
	"github.com/gobps/gobps/proto"
)

// mixedWeights returns each server's share of the bytes in BytePS's mixed
// mode (BYTEPS_ENABLE_MIXED_MODE), and a line saying what it chose.
//
// A server is co-located when its data address, or the address it
// registered from, is the address some worker registered from; the others
// are dedicated. With n worker machines and k dedicated servers the
// dedicated ones get proto.MixedShare(n, k) of the bytes, which makes a
// worker machine and a dedicated one equally busy, and the co-located ones
// the rest, evenly within each kind. Without servers of both kinds there is
// nothing to weigh: every server gets the same weight.
func mixedWeights(book cluster.Book) ([]float64, string) {
	workerHosts := map[string]bool{}
	for _, w := range book.Workers {
		if w.Host != "" {
			workerHosts[w.Host] = true
		}
	}
	n := len(workerHosts)
	colocated := make([]bool, len(book.Servers))
	var c, k int
	for i, s := range book.Servers {
		host, _, err := net.SplitHostPort(s.Addr)
		if err != nil {
			host = s.Addr
		}
		colocated[i] = workerHosts[host] || workerHosts[s.Host]
		if colocated[i] {
			c++
		} else {
			k++
		}
	}
	weights := make([]float64, len(book.Servers))
	if c == 0 || k == 0 {
		for i := range weights {
			weights[i] = 1
		}
		return weights, fmt.Sprintf("mixed mode: %d co-located and %d dedicated servers, nothing to weigh: bytes spread evenly", c, k)
	}
	x := proto.MixedShare(n, k)
	for i := range weights {
		if colocated[i] {
			weights[i] = (1 - x) / float64(c)
		} else {
			weights[i] = x / float64(k)
		}
	}
	return weights, fmt.Sprintf("mixed mode: %d worker machines, %d co-located and %d dedicated servers: %.1f%% of the bytes to the dedicated ones", n, c, k, 100*x)
}
