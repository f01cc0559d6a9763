"""`qwen25 tokenizer build-qwen | train | encode`."""

from __future__ import annotations

import argparse

from qwen25.argtypes import positive_int


def cmd_tokenizer_build_qwen(args: argparse.Namespace) -> None:
    from qwen25.tokenizer.official import build_official, official_tokenizer

    if args.out:
        tok = build_official(args.tiktoken)
        tok.save(args.out)
    else:
        tok = official_tokenizer(rebuild=args.rebuild)
    print(f"{tok.path}: {tok.vocab_size} tokens ({tok.num_regular_tokens} regular + 22 control), "
          f"'Hello world, 你好世界!' -> {tok.encode('Hello world, 你好世界!')}")


def cmd_tokenizer_train(args: argparse.Namespace) -> None:
    from qwen25.tokenizer import load_tokenizer
    from qwen25.tokenizer.train import bytes_per_token, iter_texts, train_bbpe

    tok = train_bbpe(iter_texts(args.inputs, args.jsonl_field), args.vocab_size, args.min_frequency)
    tok.save(args.out)
    print(f"saved {args.out}: {tok.vocab_size} tokens ({tok.num_regular_tokens} regular + 22 control)")
    if args.heldout:
        heldout = list(iter_texts(args.heldout, args.jsonl_field))
        bad = [i for i, t in enumerate(heldout) if tok.decode(tok.encode_ordinary(t)) != _nfc(t)]
        print(f"held-out round trip: {len(heldout) - len(bad)}/{len(heldout)} documents exact")
        print(f"bytes per token on held-out text: trained {bytes_per_token(tok, heldout):.3f}, "
              f"official qwen2.5 {bytes_per_token(load_tokenizer('qwen2.5'), heldout):.3f}")


def _nfc(text: str) -> str:
    import unicodedata

    return unicodedata.normalize("NFC", text)


def cmd_tokenizer_encode(args: argparse.Namespace) -> None:
    from qwen25.io import read_text_file
    from qwen25.tokenizer import load_tokenizer

    tok = load_tokenizer(args.tokenizer)
    text = args.text if args.text is not None else read_text_file(args.file)
    ids = tok.encode_ordinary(text) if args.ordinary else tok.encode(text)
    print(" ".join(map(str, ids)))


def add_tokenizer_verbs(sub) -> None:
    tok = sub.add_parser("tokenizer", help="build, train and use tokenizers").add_subparsers(dest="action", required=True)
    p = tok.add_parser("build-qwen", help="build the official Qwen2.5 tokenizer offline from qwen.tiktoken")
    p.add_argument("--out", help="write here instead of the per-machine cache")
    p.add_argument("--tiktoken", help="path to qwen.tiktoken (default: from the cached qwen-agent wheel)")
    p.add_argument("--rebuild", action="store_true", help="rebuild the cached copy")
    p.set_defaults(func=cmd_tokenizer_build_qwen)
    p = tok.add_parser("train", help="train a byte-level BPE tokenizer of the Qwen2.5 design")
    p.add_argument("inputs", nargs="+", help="text files (one document each) or .jsonl files")
    p.add_argument("--vocab-size", type=positive_int, required=True, help="total size, the 22 control tokens included")
    p.add_argument("--out", required=True)
    p.add_argument("--heldout", nargs="*", help="held-out files: report round trip and bytes per token")
    p.add_argument("--jsonl-field", default="text")
    p.add_argument("--min-frequency", type=positive_int, default=2)
    p.set_defaults(func=cmd_tokenizer_train)
    p = tok.add_parser("encode", help="print token ids")
    p.add_argument("--tokenizer", default="qwen2.5", help="'qwen2.5' or a tokenizer directory")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--text")
    src.add_argument("--file")
    p.add_argument("--ordinary", action="store_true", help="never turn text into control tokens")
    p.set_defaults(func=cmd_tokenizer_encode)
