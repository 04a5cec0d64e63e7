"""harmonize_bids: remove scanner/site differences from T1w MRI, as a BIDS App."""
import os
from importlib.metadata import PackageNotFoundError, version

# No telemetry, ever: nipype would otherwise ask the network for its latest version.
os.environ.setdefault("NIPYPE_NO_ET", "1")

try:
    __version__ = version("harmonize_bids")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["__version__"]
