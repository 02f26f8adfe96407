package gpu

// Test-only knobs that break the staging protocol on purpose, so that tests
// can show the fake device catches each mistake.

// SkipReadyWait makes the device-to-host copy ignore the framework's event.
func SkipReadyWait(s *Stager) { s.knobs.skipReadyWait = true }

// SkipCopyWait makes Host return before the device-to-host copy completed.
func SkipCopyWait(s *Stager) { s.knobs.skipCopyWait = true }

// SkipWriteWait makes Finish return the buffer before the host-to-device
// copy completed.
func SkipWriteWait(s *Stager) { s.knobs.skipWriteWait = true }
