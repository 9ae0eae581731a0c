"""Build the bundled text dataset ``fedsim/datasets/wordnet_supersenses.csv.gz``.

Reads the WordNet 3.0 noun database (Debian package ``wordnet-base``,
``/usr/share/wordnet/data.noun``), keeps the definition part of every synset's gloss,
and writes a balanced, seeded sample of eight well-separated noun supersenses
(``text,label`` CSV, gzip-compressed, byte-for-byte reproducible).

Usage::

    python scripts/make_wordnet_subset.py [--data-noun PATH] [--out PATH]
        [--per-class 600] [--seed 0]

The WordNet licence must travel with the output: copy the ``License: WordNet3.0``
block of ``/usr/share/doc/wordnet-base/copyright`` to
``fedsim/datasets/WORDNET_LICENSE.txt`` (done once, committed beside the CSV).
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import logging
import random
from collections import Counter
from pathlib import Path

LOG = logging.getLogger("make_wordnet_subset")

DEFAULT_DATA_NOUN = Path("/usr/share/wordnet/data.noun")
DEFAULT_OUT = (
    Path(__file__).resolve().parent.parent / "fedsim" / "datasets" / "wordnet_supersenses.csv.gz"
)

# lex_filenum -> supersense (WordNet ``lexnames``), for the eight kept classes only.
SUPERSENSES: dict[int, str] = {
    5: "animal",
    6: "artifact",
    8: "body",
    13: "food",
    15: "location",
    18: "person",
    20: "plant",
    27: "substance",
}


def definition_of(gloss: str) -> str:
    """Return the definition part of a WordNet gloss.

    A gloss is ``definition; "usage example"; "another example"``; the definition may
    itself contain ``;``-separated clauses. Every ``;``-separated part that starts with
    a double quote is a usage example and is dropped.
    """
    parts = [part.strip() for part in gloss.split(";")]
    kept = [part for part in parts if part and not part.startswith('"')]
    return "; ".join(kept).strip()


def parse_data_noun(path: Path) -> list[tuple[str, int]]:
    """Return ``(definition, lex_filenum)`` for every synset line of ``data.noun``.

    Header lines (licence text) start with two spaces and are skipped.
    """
    rows: list[tuple[str, int]] = []
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            if line.startswith("  ") or not line.strip():
                continue
            head, sep, gloss = line.partition("|")
            if not sep:
                raise ValueError(f"{path}: synset line without a '|' gloss: {line[:60]!r}")
            fields = head.split()
            rows.append((definition_of(gloss), int(fields[1])))
    return rows


def balanced_sample(
    rows: list[tuple[str, int]], per_class: int, seed: int
) -> list[tuple[str, str]]:
    """Pick ``per_class`` distinct definitions of each kept supersense, seeded.

    A definition that occurs under two different supersenses is ambiguous and dropped
    everywhere; repeats under the same supersense are kept once.
    """
    kept = [(text, SUPERSENSES[lex]) for text, lex in rows if lex in SUPERSENSES and text]
    labels_of: dict[str, set[str]] = {}
    for text, label in kept:
        labels_of.setdefault(text, set()).add(label)
    by_label: dict[str, list[str]] = {label: [] for label in SUPERSENSES.values()}
    for text, labels in labels_of.items():
        if len(labels) == 1:
            by_label[next(iter(labels))].append(text)
    rng = random.Random(seed)
    sample: list[tuple[str, str]] = []
    for label in sorted(by_label):
        texts = sorted(by_label[label])
        if len(texts) < per_class:
            raise ValueError(
                f"per_class={per_class} exceeds the {len(texts)} distinct glosses of "
                f"noun.{label}; choose per_class <= {len(texts)}"
            )
        sample.extend((text, label) for text in rng.sample(texts, per_class))
    rng.shuffle(sample)
    return sample


def write_csv_gz(rows: list[tuple[str, str]], out: Path) -> None:
    """Write ``text,label`` rows as a reproducible gzip file (fixed mtime, no name)."""
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["text", "label"])
    writer.writerows(rows)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("wb") as raw, gzip.GzipFile(
        filename="", mode="wb", fileobj=raw, compresslevel=9, mtime=0
    ) as handle:
        handle.write(buffer.getvalue().encode("utf-8"))


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-noun", type=Path, default=DEFAULT_DATA_NOUN)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--per-class", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not args.data_noun.is_file():
        raise SystemExit(
            f"{args.data_noun} not found: install it with `apt-get install wordnet-base` "
            "or pass --data-noun PATH"
        )
    rows = balanced_sample(parse_data_noun(args.data_noun), args.per_class, args.seed)
    write_csv_gz(rows, args.out)
    counts = Counter(label for _, label in rows)
    LOG.info("wrote %d rows (%s) to %s, %d bytes", len(rows), dict(sorted(counts.items())),
             args.out, args.out.stat().st_size)


if __name__ == "__main__":
    main()
