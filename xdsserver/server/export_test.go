package server

// DeltaWatches is the number of delta watches the snapshot cache holds for an Envoy node.
func (s *Server) DeltaWatches(node string) int {
	info := s.snapshots.GetStatusInfo(node)
	if info == nil {
		return 0
	}
	return info.GetNumDeltaWatches()
}
