"""Published students on S3, a small model registry: each version's files with a manifest of their
SHA-256s, aliases (latest, staging, production) pointing at versions, a gate that keeps a better published
model, and a fetch that verifies everything it downloads (pipelines/registry/manifest.py has the layout)."""
