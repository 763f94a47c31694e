"""The control plane: engine, scheduler, train jobs, merge, metadata, HTTP server."""
