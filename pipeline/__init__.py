"""Ray-free domain code of the Chatterbox TTS service: importable and testable without Ray."""
