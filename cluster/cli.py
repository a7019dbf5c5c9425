"""`wsdhq` console entry point: one front door, each subcommand is a stage's own `main(argv)`.

Stages stay runnable alone (`python -m shards ...`, `python -m trainer.train ...`,
`python -m eval.encode ...`); this only dispatches, importing a stage when it is called.
"""
from __future__ import annotations

import importlib
import sys

# subcommand -> (module with main(argv), one-line help)
COMMANDS = {
    "demo": ("cluster.demo", "run the main job end to end on the built-in demo data"),
    "shards": ("shards.__main__", "convert sources to WebDataset shards, summarise, verify"),
    "tags": ("trainer.tags.__main__", "build the tag semantics artifact from training shards"),
    "train": ("trainer.train", "train WSDHQ / DPQ on Ray Train"),
    "extract": ("eval.extract", "frozen-backbone features of image shards, once (a Ray job)"),
    "encode": ("eval.encode", "encode a corpus into codes (a Ray job)"),
    "evaluate": ("eval.evaluate", "retrieval evaluation and report"),
    "index": ("eval.index", "build a searchable faiss index from a code set"),
    "search": ("eval.search", "top-k by image, by key or by tags over an index"),
    "robustness": ("eval.robustness", "mAP under adversarial queries (white-box, transfer)"),
    "ray": ("cluster.local", "start / stop a local Ray head, submit and follow jobs"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print("usage: wsdhq <command> [args...]\n\ncommands:")
        for name, (_, text) in COMMANDS.items():
            print(f"  {name:<10} {text}")
        print("\n`wsdhq <command> --help` for a command's options.")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"wsdhq: unknown command {name!r}; try `wsdhq --help`", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
