"""
The lab's command line (run as root, from the repo: ``.venv/bin/python -m test.lab``
is not needed; use ``make lab-up`` / ``make lab-down``).

    python test/lab up [--profile default|fast] [--masterless] [--name NAME]
    python test/lab down [--name NAME]
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lab.lab import Lab, LabError


def main():
    parser = argparse.ArgumentParser(
        prog="lab", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("command", choices=["up", "down"])
    parser.add_argument("--name", default="hlab", help="namespace prefix (default hlab)")
    parser.add_argument("--profile", default="default", choices=["default", "fast"])
    parser.add_argument(
        "--masterless",
        action="store_true",
        help="apply with salt-call --local on each node instead of a salt-master",
    )
    parser.add_argument("--floating-ips", type=int, default=2)
    args = parser.parse_args()
    lab = Lab(
        name=args.name,
        profile=args.profile,
        masterless=args.masterless,
        floating_ips=args.floating_ips,
    )
    if args.command == "down":
        lab.down()
        return 0
    try:
        lab.up()
    except LabError as exc:
        print(f"lab: {exc}", file=sys.stderr)
        return 1
    print(f"lab {lab.name}: up; {lab.describe()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
