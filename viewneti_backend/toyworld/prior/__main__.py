"""``python -m viewneti_backend.toyworld.prior``: train the toy prior (see :func:`.training.main`)."""

from .training import main

main()
