"""Entry point for both `pulumi up` (Pulumi.yaml's `main: infra/`) and `python -m infra`.

Under the Pulumi engine the runtime already holds a resource monitor; then this file is
the program. Without one, it is the offline command line (plan, ...).
"""

import sys
from pathlib import Path

# The engine runs this directory as a script, so make the package importable as `infra`.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pulumi.runtime import settings

if settings.SETTINGS.monitor is not None:
    import pulumi

    from infra.config import ConfigError
    from infra.stack import run

    try:
        run()
    except ConfigError as exc:
        # RunError prints its message alone: one line naming the key, no traceback.
        raise pulumi.RunError(f"config error: {exc}") from None
else:
    from infra.cli import main

    sys.exit(main())
