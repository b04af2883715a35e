"""The gRPC door (`incident_manager.IncidentService`, integration guide §3): server, servicer, auth."""
