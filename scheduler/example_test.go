package scheduler_test

import (
	"fmt"

	"github.com/gobps/gobps/scheduler"
)

// The worker engine's loop: push gradients as backprop produces them, hand
// out whatever Next allows, and call Next again after each Done.
func Example() {
	q := scheduler.New[string](100)

	// Backprop produces the last layer first; the first layer gets the
	// largest priority because the next forward pass needs it first.
	q.Push(scheduler.Item[string]{Key: 3, Priority: 0, Bytes: 60, Value: "layer3"})
	q.Push(scheduler.Item[string]{Key: 2, Priority: 1, Bytes: 60, Value: "layer2"})
	q.Push(scheduler.Item[string]{Key: 1, Priority: 2, Bytes: 60, Value: "layer1"})

	send := func() {
		for {
			it, ok := q.Next()
			if !ok {
				fmt.Printf("blocked: %d queued, %d bytes in flight\n", q.Len(), q.InFlight())
				return
			}
			fmt.Println("send", it.Value)
		}
	}
	send()
	q.Done(60) // layer1 acknowledged
	send()

	// Output:
	// send layer1
	// blocked: 2 queued, 60 bytes in flight
	// send layer2
	// blocked: 1 queued, 60 bytes in flight
}
