package core

import (
	"fmt"
	"math"
	"strings"
	"testing"

	"github.com/gobps/gobps/cluster"
)

// book makes an address book: one worker per host in workers, one server
// per host in servers (data address host:port).
func book(workers, servers []string) cluster.Book {
	var b cluster.Book
	for i, h := range workers {
		b.Workers = append(b.Workers, cluster.Node{Role: cluster.RoleWorker, Rank: i, Host: h})
	}
	for i, h := range servers {
		b.Servers = append(b.Servers, cluster.Node{Role: cluster.RoleServer, Rank: i, Host: h, Addr: fmt.Sprintf("%s:%d", h, 9000+i)})
	}
	return b
}

func TestMixedWeights(t *testing.T) {
	hosts := []string{"10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"}
	for _, tc := range []struct {
		name    string
		b       cluster.Book
		want    []float64
		sayings string
	}{
		{
			// BytePS's example: n = 4, k = 2, x* = 2·2·3/(16+2·2) = 0.6
			name: "n=4 k=2", b: book(hosts, append(hosts[:4:4], "10.0.0.5", "10.0.0.6")),
			want: []float64{0.1, 0.1, 0.1, 0.1, 0.3, 0.3}, sayings: "60.0% of the bytes to the dedicated ones",
		},
		{
			// k = n: x = 1, the co-located servers carry nothing
			name: "n=2 k=2", b: book(hosts[:2], []string{"10.0.0.1", "10.0.0.2", "10.0.0.5", "10.0.0.6"}),
			want: []float64{0, 0, 0.5, 0.5}, sayings: "100.0%",
		},
		{
			name: "n=3 k=1", b: book(hosts[:3], []string{"10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.9"}),
			// x = 2·1·2/(9+1) = 0.4
			want: []float64{0.2, 0.2, 0.2, 0.4}, sayings: "40.0%",
		},
		{
			// local aggregation: two workers per machine count as one machine
			name: "2 workers per machine", b: book([]string{"10.0.0.1", "10.0.0.1", "10.0.0.2", "10.0.0.2"}, []string{"10.0.0.1", "10.0.0.2", "10.0.0.7"}),
			// n = 2, k = 1: x = 2·1·1/(4+0) = 0.5
			want: []float64{0.25, 0.25, 0.5}, sayings: "2 worker machines",
		},
		{
			name: "one worker machine", b: book(hosts[:1], []string{"10.0.0.1", "10.0.0.8"}),
			want: []float64{1, 0}, sayings: "0.0%",
		},
		{
			name: "all co-located", b: book(hosts, hosts),
			want: []float64{1, 1, 1, 1}, sayings: "nothing to weigh",
		},
		{
			name: "all dedicated", b: book(hosts[:2], []string{"10.0.0.7", "10.0.0.8"}),
			want: []float64{1, 1}, sayings: "nothing to weigh",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, note := mixedWeights(tc.b)
			if len(got) != len(tc.want) {
				t.Fatalf("weights %v, want %v", got, tc.want)
			}
			for i := range got {
				if math.Abs(got[i]-tc.want[i]) > 1e-12 {
					t.Fatalf("weights %v, want %v", got, tc.want)
				}
			}
			if !strings.Contains(note, tc.sayings) {
				t.Errorf("note %q does not say %q", note, tc.sayings)
			}
		})
	}
}

// TestMixedWeightsRegisteredFrom: a server whose data address is not a
// worker's but that registered from a worker's address is co-located.
func TestMixedWeightsRegisteredFrom(t *testing.T) {
	// n = 3, k = 1: co-located servers weigh 0.2, the dedicated one 0.4
	b := book([]string{"10.0.0.1", "10.0.0.2", "10.0.0.3"}, []string{"10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.9"})
	b.Servers[0].Addr = "192.168.1.1:9000"
	w, _ := mixedWeights(b)
	if math.Abs(w[0]-0.2) > 1e-12 || math.Abs(w[3]-0.4) > 1e-12 {
		t.Errorf("weights %v, want server 0 co-located (0.2) and server 3 dedicated (0.4)", w)
	}
}
