"""`python -m hd_compute.service serve` == `hdc-worker serve`."""

from .cli import main

main()
