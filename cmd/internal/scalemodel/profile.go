package scalemodel

import (
	"encoding/json"
	"fmt"
	"os"
)

// Profile is what `bpsbench model calibrate` measured on a machine: the
// rates the simulator cannot know from the hardware's data sheet.
type Profile struct {
	CPU  string `json:"cpu"`  // /proc/cpuinfo's model name, family and model
	Date string `json:"date"` // when it was measured (RFC 3339)

	// SumBytes is the bytes/s one goroutine adds into a sum buffer
	// (summation/kernel, float32, 256 KiB pieces): a server engine
	// thread's rate, and a worker machine's for local aggregation.
	SumBytes float64 `json:"sum_bytes_per_s"`
	// MessageOverhead is the seconds a push_pull costs beyond moving its
	// bytes: the time of a one-page push_pull on loopback.
	MessageOverhead float64 `json:"message_overhead_s"`
	// Loopback is the bytes/s one gobps push_pull moves on loopback (one
	// worker, one server, 4 MiB partitions): the most one connection
	// carries when the network does not limit it.
	Loopback float64 `json:"loopback_bytes_per_s"`
	// LinkBits is the measured TCP goodput of one link, bit/s, if
	// calibrate was given the emulated cluster; 0 if not measured.
	LinkBits float64 `json:"link_bits_per_s,omitempty"`

	Notes []string `json:"notes,omitempty"`
}

// LoadProfile reads a profile written by SaveProfile.
func LoadProfile(path string) (Profile, error) {
	var p Profile
	b, err := os.ReadFile(path)
	if err != nil {
		return p, err
	}
	if err := json.Unmarshal(b, &p); err != nil {
		return p, fmt.Errorf("scalemodel: profile %s: %w", path, err)
	}
	if p.SumBytes < 0 || p.MessageOverhead < 0 || p.Loopback < 0 || p.LinkBits < 0 {
		return p, fmt.Errorf("scalemodel: profile %s: negative rate", path)
	}
	return p, nil
}

// SaveProfile writes p as indented JSON.
func SaveProfile(path string, p Profile) error {
	b, err := json.MarshalIndent(p, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}
