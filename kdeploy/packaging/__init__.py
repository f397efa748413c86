"""What serving stacks embed: the Triton model repository (``triton``), the reference
outputs (``reference``) and the check that the packaged model still answers as it did
(``servecheck``)."""
