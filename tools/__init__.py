"""Repository tools: scripts, and the main job written once (main_job)."""
