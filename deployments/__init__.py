"""Thin Ray Serve deployments around pipeline/ classes, and the app builder that binds the graph."""
