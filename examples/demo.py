"""The demo: an order-processing workflow on the embedded default server.

The SDK (tasks, workflows, client, worker) is not built yet; until it lands this
script says so and exits with success, so the README's demo command already works.
"""

from __future__ import annotations

import aiki_core


def main() -> None:
    """Run the demo."""
    print(  # noqa: T201 - the demo talks to a person
        f"Aiki {aiki_core.__version__}: the demo is not yet here; "
        "it arrives with the SDK (tasks, workflows, client, worker)."
    )


if __name__ == "__main__":
    main()
