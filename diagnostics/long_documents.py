"""Long documents for the harness: each of 8 consecutive validation paragraphs joined into one (about 1,300
tokens), asked 4 questions from each of its paragraphs (32), so that routing picks among ~60 sentences.

Why: the served document form routes each question to one of a document's sentences; it was measured on single
paragraphs (7 sentences). A user posts manuals and reports. This writes a data folder the harness reads
(`<out>/validation/document.jsonl`); configs/eval_validation_long_documents{,_one}.toml score it.
  python diagnostics/long_documents.py --config configs/eval_validation_documents_routed.toml \\
      --out runs/long-documents-data
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hyperadapter.config import load_settings  # noqa: E402
from hyperadapter.evaluation.harness import eval_records, load_eval_config  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True, help="the eval config whose validation paragraphs are joined")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--join", type=int, default=8, help="paragraphs per long document")
    ap.add_argument("--per-paragraph", type=int, default=4, help="questions kept from each paragraph")
    args = ap.parse_args()
    settings = load_settings()
    paragraphs = eval_records(settings.prepared_data_dir, load_eval_config(args.config), "document")
    long = []
    for start in range(0, len(paragraphs) - args.join + 1, args.join):
        part = paragraphs[start:start + args.join]
        long.append(dataclasses.replace(
            part[0], id=f"long-{start // args.join}", group=f"long-{start // args.join}",
            context=" ".join(p.context.strip() for p in part),
            queries=[q for p in part for q in p.queries[:args.per_paragraph]], support=[]))
    folder = args.out / "validation"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "document.jsonl").write_text("".join(r.to_json() + "\n" for r in long))
    print(f"{len(long)} long documents, {sum(len(r.queries) for r in long)} questions -> {folder}")


if __name__ == "__main__":
    main()
