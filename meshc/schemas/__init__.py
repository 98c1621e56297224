"""The published CRD schemas of the Kubernetes targets (package data; see SOURCES.md here)."""
