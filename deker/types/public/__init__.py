"""deker 1.1.7's ``deker.types.public`` package: see :mod:`deker.types.public.classes`."""
