"""The engine: artifact digests (``digests``), the manifest (``manifest``), the run
directory (``rundir``), checks before anything is written (``preflight``), executing and
committing one stage (``execute``), the one scheduling loop (``scheduler``) and starting
a host or device run (``runs``)."""
