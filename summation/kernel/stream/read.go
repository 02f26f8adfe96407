package stream

// readOR returns the OR of every byte of a and b, in Go.
func readOR(a, b []byte) byte {
	var or byte
	for _, c := range a {
		or |= c
	}
	for _, c := range b {
		or |= c
	}
	return or
}
