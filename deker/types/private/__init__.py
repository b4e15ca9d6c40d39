"""deker 1.1.7's ``deker.types.private`` package: only :mod:`deker.types.private.shell` is kept."""
