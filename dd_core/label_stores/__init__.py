"""Label stores beyond hard labels, one file per family; importing this package registers them."""
from . import base, committee, distance, dynamic, learned, online, projector, soft  # noqa: F401
