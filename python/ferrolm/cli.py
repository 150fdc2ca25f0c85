"""The ``ferrolm`` command line (also ``python -m ferrolm``).

Subcommands:
  info    version, CPU features, threads and bundled data of this installation
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from collections.abc import Sequence

import ferrolm
from ferrolm._data import BUNDLED


def _info(args: argparse.Namespace) -> int:
    features = ferrolm.cpu_features()
    data = {
        name: {"path": str(f.path), "ok": f.verify(), "source": f.source}
        for name, f in BUNDLED.items()
    }
    report = {
        "ferrolm": ferrolm.__version__,
        "python": platform.python_version(),
        "platform": f"{platform.system()} {platform.machine()}",
        "threads": ferrolm.get_num_threads(),
        "cpu_features": features,
        "data": data,
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        on = [k for k, v in features.items() if v]
        print(f"ferrolm {report['ferrolm']} (Python {report['python']}, {report['platform']})")
        print(f"threads:      {report['threads']}")
        print(f"cpu features: {' '.join(on) if on else '(none beyond the baseline)'}")
        print("bundled data:")
        for name, d in data.items():
            state = "ok" if d["ok"] else "MISSING OR MODIFIED"
            print(f"  {name:<30} {state:<6} {d['path']}")
    return 0 if all(d["ok"] for d in data.values()) else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ferrolm",
        description="Language models from Python on a CPU, fast.",
    )
    parser.add_argument("--version", action="version", version=f"ferrolm {ferrolm.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser(
        "info",
        help="show version, CPU features, threads and bundled data",
        description="Show the ferrolm version, the detected CPU features, the thread count and "
        "the state of the bundled data files. Exits 1 if a bundled file is missing or modified.",
    )
    p.add_argument("--json", action="store_true", help="print a JSON object instead of text")
    p.set_defaults(func=_info)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except (ValueError, OSError) as e:
        print(f"ferrolm {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
