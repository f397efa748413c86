"""What serving stacks embed: the Triton model repository (``triton`` writes it from the
graph's tensors, ``triton_io``, and ``triton_check`` checks it as Triton would), the
reference outputs (``reference``), the check that the packaged model still answers as it
did (``servecheck``), and a real Triton server on this machine for a run (``serve``, started
through PyTriton)."""
