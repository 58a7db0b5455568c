"""
The lab's command line (run as root, from the repo: ``.venv/bin/python -m test.lab``
is not needed; use ``make lab-up`` / ``make lab-down``).

    python test/lab up [--profile default|fast] [--floating-ips N] [--masterless] [--name NAME]
    python test/lab up --pillar FILE [--masterless] [--name NAME]
    python test/lab up --pillar-root DIR [--masterless] [--name NAME]
    python test/lab down [--name NAME]

Without --pillar the lab's default pillar (lab.default_pillar), with the
profile and number of floating IPs given; --pillar FILE is a whole pillar
(YAML, with an hcloud_lb mapping) to build the project from and apply instead;
--pillar-root DIR a pillar tree (top.sls and SLS files), compiled by Salt.
"""

import argparse
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lab.lab import Lab, LabError, default_pillar


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
    parser.add_argument("--pillar", type=Path, help="a whole pillar (YAML) instead of the default")
    parser.add_argument("--pillar-root", type=Path, help="a pillar tree (top.sls, SLS files)")
    args = parser.parse_args()
    try:
        if args.pillar:
            pillar = yaml.safe_load(args.pillar.read_text())
        else:
            pillar = default_pillar(profile=args.profile, floating_ips=args.floating_ips)
        files = None
        if args.pillar_root:
            pillar, root = None, args.pillar_root
            files = {str(f.relative_to(root)): f.read_text() for f in root.rglob("*.sls")}
        lab = Lab(name=args.name, masterless=args.masterless, pillar=pillar, pillar_files=files)
        if args.command == "down":
            lab.down()
            return 0
        lab.up()
    except (LabError, OSError, yaml.YAMLError) as exc:
        print(f"lab: {exc}", file=sys.stderr)
        return 1
    print(f"lab {lab.name}: up; {lab.describe()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
