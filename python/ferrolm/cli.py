"""The ``ferrolm`` command line (also ``python -m ferrolm``).

Subcommands:
  info      version, CPU features, threads and bundled data of this installation
  tokenize  token ids (or tokens) of text, with a built-in tokenizer or a tokenizer file
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

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


def _load_tokenizer(spec: str) -> ferrolm.Tokenizer:
    from ferrolm.tokenizer import builtin_names

    if spec in builtin_names():
        return ferrolm.Tokenizer.builtin(spec)
    path = Path(spec)
    if path.is_dir():
        return ferrolm.Tokenizer.from_pretrained(path)
    if path.is_file():
        return ferrolm.Tokenizer.from_file(path)
    raise ValueError(
        f"{spec!r} is neither a built-in tokenizer ({', '.join(builtin_names())}) "
        "nor an existing file or model folder"
    )


def _tokenize(args: argparse.Namespace) -> int:
    tok = _load_tokenizer(args.tokenizer)
    texts = [sys.stdin.read() if t == "-" else t for t in args.text]
    special: dict[str, Any] = {}
    if tok.kind == "bpe":
        special = {"allowed_special": "all"} if args.allow_special else {"disallowed_special": ()}
    for ids in tok.encode_batch(texts, **special):
        if args.output == "count":
            print(len(ids))
        elif args.output == "tokens":
            print(json.dumps([tok.id_to_token(i) for i in ids], ensure_ascii=False))
        else:
            print(" ".join(map(str, ids)))
    return 0


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

    p = sub.add_parser(
        "tokenize",
        help="print the token ids (or tokens) of text",
        description='Tokenize each TEXT argument ("-" reads standard input) and print one line '
        "per text: the ids separated by spaces (default), the tokens as a JSON list, or the count. "
        "For BPE tokenizers, special-token text (such as <|endoftext|>) is encoded as ordinary "
        "text unless --allow-special is given; WordPiece tokenizers add [CLS] ... [SEP].",
    )
    p.add_argument(
        "--tokenizer",
        "-t",
        default="gpt2",
        metavar="NAME|PATH",
        help="a built-in tokenizer (gpt2, bert-base-uncased), a tokenizer file (tokenizer.json, "
        "vocab.txt, *.tiktoken) or a model folder; default: gpt2",
    )
    out = p.add_mutually_exclusive_group()
    out.add_argument(
        "--ids", dest="output", action="store_const", const="ids", help="ids (default)"
    )
    out.add_argument(
        "--tokens", dest="output", action="store_const", const="tokens", help="tokens, as JSON"
    )
    out.add_argument(
        "--count", dest="output", action="store_const", const="count", help="number of tokens"
    )
    p.add_argument(
        "--allow-special", action="store_true", help="encode special-token text as special ids"
    )
    p.add_argument("text", nargs="+", metavar="TEXT", help='text to tokenize, or "-" for stdin')
    p.set_defaults(func=_tokenize, output="ids")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except (ValueError, OSError) as e:  # FormatError is a ValueError
        print(f"ferrolm {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
