"""The small core every layer may import: errors, optional-dependency imports, atomic file
writes and digests, device facts, host facts. Imports nothing else of kdeploy."""
