"""Manifests, importers, audio I/O, bad-input policy and the embedded synthetic corpus."""

from speechkd.data.manifest import ManifestError, Utterance, read_manifest, validate_manifest, write_manifest

__all__ = ["Utterance", "ManifestError", "read_manifest", "write_manifest", "validate_manifest"]
