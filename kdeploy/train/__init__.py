"""Host side: the only package that imports torch and transformers at module level."""
