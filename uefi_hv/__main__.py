"""`python -m uefi_hv` is the same as the `uefi-hv` command."""
import sys

from uefi_hv.cli import main

sys.exit(main())
