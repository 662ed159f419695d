"""Build the demo model's five-domain corpus from text every Debian/Python machine has offline.

Domains (chosen to differ clearly, so routing has something to specialize on):
- ``python``: source files of the Python standard library (PSF licence);
- ``english``: Python's ``pydoc_data`` topic help plus the English source strings (msgids) of the
  installed programs' gettext catalogs (technical English);
- ``german`` / ``russian``: the German and Russian translations (msgstrs) of those catalogs;
- ``numbers``: tables, ledgers and arithmetic generated here from a fixed seed (written for the
  project).

Each domain's text is cut into chunks of about ``CHUNK_CHARS`` characters; every ``HELDOUT_EVERY``-th
chunk is held out (never trained on) for evaluation and for the prompt sets. Everything is
deterministic: sorted file lists, fixed seed.
"""

from __future__ import annotations

import json
import random
import struct
import sysconfig
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from routescope.models.demo import DEMO_DOMAINS

DOMAINS: tuple[str, ...] = DEMO_DOMAINS
CHUNK_CHARS = 1500
HELDOUT_EVERY = 20
MAX_CHARS_PER_DOMAIN = 3_000_000
LOCALE_DIR = Path("/usr/share/locale")
LANG_CODES = {"german": "de", "russian": "ru"}
# The catalogs the shipped model was trained on (Debian 12 packages; iso_* name lists excluded).
# A fixed list, so that installing more packages later does not change the corpus.
CATALOGS_DE: tuple[str, ...] = (
    "Linux-PAM",
    "PackageKit",
    "adduser",
    "appstream",
    "apt",
    "at-spi2-core",
    "avahi",
    "bash",
    "coreutils",
    "diffutils",
    "dpkg",
    "dpkg-dev",
    "elfutils",
    "findutils",
    "gdk-pixbuf",
    "gettext-runtime",
    "gettext-tools",
    "git",
    "glib20",
    "gnupg2",
    "gnutls30",
    "gprof",
    "grep",
    "gsettings-desktop-schemas",
    "gstreamer-1.0",
    "gtk20",
    "gtk20-properties",
    "gtk30",
    "gtk30-properties",
    "initdb-15",
    "ld",
    "libapt-pkg6.0",
    "libc",
    "libidn2",
    "libpq5-15",
    "make",
    "man-db",
    "man-db-gnulib",
    "mit-krb5",
    "net-tools",
    "opcodes",
    "pg_amcheck-15",
    "pg_archivecleanup-15",
    "pg_basebackup-15",
    "pg_checksums-15",
    "pg_config-15",
    "pg_controldata-15",
    "pg_ctl-15",
    "pg_dump-15",
    "pg_resetwal-15",
    "pg_rewind-15",
    "pg_test_fsync-15",
    "pg_test_timing-15",
    "pg_upgrade-15",
    "pg_verifybackup-15",
    "pg_waldump-15",
    "pgscripts-15",
    "plpgsql-15",
    "polkit-1",
    "postgres-15",
    "procps-ng",
    "psmisc",
    "psql-15",
    "python-apt",
    "sed",
    "shadow",
    "shared-mime-info",
    "software-properties",
    "systemd",
    "tar",
    "wget",
    "wget-gnulib",
    "xkeyboard-config",
    "xz",
)
CATALOGS_RU: tuple[str, ...] = (
    "Linux-PAM",
    "PackageKit",
    "adduser",
    "appstream",
    "apt",
    "at-spi2-core",
    "avahi",
    "bash",
    "bfd",
    "binutils",
    "coreutils",
    "diffutils",
    "dpkg",
    "dpkg-dev",
    "findutils",
    "gas",
    "gdk-pixbuf",
    "gettext-runtime",
    "gettext-tools",
    "git",
    "glib20",
    "gnupg2",
    "gprof",
    "grep",
    "gsettings-desktop-schemas",
    "gstreamer-1.0",
    "gtk20",
    "gtk20-properties",
    "gtk30",
    "gtk30-properties",
    "initdb-15",
    "ld",
    "libapt-pkg6.0",
    "libc",
    "libidn2",
    "libpq5-15",
    "make",
    "man-db",
    "man-db-gnulib",
    "pg_amcheck-15",
    "pg_archivecleanup-15",
    "pg_basebackup-15",
    "pg_checksums-15",
    "pg_config-15",
    "pg_controldata-15",
    "pg_ctl-15",
    "pg_dump-15",
    "pg_resetwal-15",
    "pg_rewind-15",
    "pg_test_fsync-15",
    "pg_test_timing-15",
    "pg_upgrade-15",
    "pg_verifybackup-15",
    "pg_waldump-15",
    "pgscripts-15",
    "plpgsql-15",
    "postgres-15",
    "psmisc",
    "psql-15",
    "python-apt",
    "sed",
    "shadow",
    "shared-mime-info",
    "software-properties",
    "systemd",
    "tar",
    "wget",
    "wget-gnulib",
    "xdg-user-dirs",
    "xkeyboard-config",
)


@dataclass(frozen=True)
class Chunk:
    """One piece of a domain's text and whether it is held out."""

    domain: str
    text: str
    split: str  # "train" | "heldout"
    source: str


def read_mo(path: Path) -> list[tuple[str, str]]:
    """Parse a GNU gettext .mo file into (msgid, msgstr) pairs, skipping the header entry.

    Plural forms keep their first variant; contexts (``ctx\\x04msgid``) are stripped.
    """
    data = path.read_bytes()
    magic = struct.unpack("<I", data[:4])[0]
    endian = "<" if magic == 0x950412DE else ">"
    _rev, count, orig_off, trans_off = struct.unpack(endian + "4I", data[4:20])
    pairs: list[tuple[str, str]] = []
    for i in range(count):
        olen, opos = struct.unpack(endian + "2I", data[orig_off + 8 * i : orig_off + 8 * i + 8])
        tlen, tpos = struct.unpack(endian + "2I", data[trans_off + 8 * i : trans_off + 8 * i + 8])
        msgid = data[opos : opos + olen].decode("utf-8", errors="replace")
        msgstr = data[tpos : tpos + tlen].decode("utf-8", errors="replace")
        if not msgid:
            continue
        msgid = msgid.split("\x04")[-1].split("\x00")[0]
        msgstr = msgstr.split("\x00")[0]
        if msgstr.strip():
            pairs.append((msgid, msgstr))
    return pairs


def catalogs(lang: str) -> list[Path]:
    """The language's installed message catalogs from the fixed list, in name order."""
    names = {"de": CATALOGS_DE, "ru": CATALOGS_RU}[lang]
    files = sorted(LOCALE_DIR / lang / "LC_MESSAGES" / f"{n}.mo" for n in names)
    return [f for f in files if f.is_file()]


def _clean_message(s: str) -> str:
    return s.replace("\r", "").strip()


def _messages(lang: str, original: bool) -> Iterator[tuple[str, str]]:
    """(catalog name, message) for all catalogs of ``lang``; original=True yields the msgids."""
    seen: set[str] = set()
    for f in catalogs(lang):
        for msgid, msgstr in read_mo(f):
            msg = _clean_message(msgid if original else msgstr)
            if len(msg) < 12 or msg in seen:
                continue
            seen.add(msg)
            yield f.stem, msg


def python_sources() -> Iterator[tuple[str, str]]:
    """(relative path, source) of the standard library's .py files, site-packages excluded."""
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "dist-packages", "__pycache__", "lib2to3", "idlelib", "turtledemo"}
    for f in sorted(root.rglob("*.py")):
        rel = f.relative_to(root)
        if skip.intersection(rel.parts) or "test" in rel.parts or "tests" in rel.parts:
            continue
        try:
            yield str(rel), f.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue


def pydoc_topics() -> Iterator[tuple[str, str]]:
    """(topic, text) of the interpreter's bundled help topics (English prose from the Python docs)."""
    from pydoc_data.topics import topics

    for name in sorted(topics):
        yield f"pydoc:{name}", topics[name]


def _interleave(*streams: Iterable[tuple[str, str]]) -> Iterator[tuple[str, str]]:
    """Round-robin over several (source, text) streams so a character cap keeps all of them."""
    its = [iter(s) for s in streams]
    while its:
        alive = []
        for it in its:
            item = next(it, None)
            if item is not None:
                yield item
                alive.append(it)
        its = alive


def numbers_documents(
    seed: int = 1234, target_chars: int = MAX_CHARS_PER_DOMAIN
) -> Iterator[tuple[str, str]]:
    """Synthetic numeric text: CSV tables, aligned tables, ledgers, arithmetic, measurements."""
    rng = random.Random(seed)
    produced = 0
    kinds = ("csv", "aligned", "ledger", "arith", "series")
    i = 0
    while produced < target_chars:
        kind = kinds[i % len(kinds)]
        i += 1
        lines: list[str] = []
        if kind == "csv":
            ncol = rng.randint(3, 7)
            lines.append(",".join(f"c{j}" for j in range(ncol)))
            for _ in range(rng.randint(8, 30)):
                row = [str(rng.randint(0, 10 ** rng.randint(1, 6))) for _ in range(ncol)]
                if rng.random() < 0.5:
                    row[-1] = f"{rng.uniform(-1000, 1000):.{rng.randint(1, 4)}f}"
                lines.append(",".join(row))
        elif kind == "aligned":
            ncol = rng.randint(3, 6)
            for _ in range(rng.randint(8, 25)):
                vals = [f"{rng.uniform(0, 10 ** rng.randint(1, 5)):>12.2f}" for _ in range(ncol)]
                lines.append(f"{rng.randint(1, 9999):>6} |" + " |".join(vals))
        elif kind == "ledger":
            balance = rng.randint(0, 100000) / 100
            y, m = rng.randint(1990, 2030), rng.randint(1, 12)
            for _ in range(rng.randint(8, 25)):
                amount = rng.randint(-50000, 50000) / 100
                balance += amount
                d = rng.randint(1, 28)
                lines.append(f"{y:04d}-{m:02d}-{d:02d}  {amount:>10.2f}  {balance:>12.2f}")
        elif kind == "arith":
            for _ in range(rng.randint(10, 30)):
                a, b = (
                    rng.randint(0, 10 ** rng.randint(1, 5)),
                    rng.randint(1, 10 ** rng.randint(1, 4)),
                )
                op = rng.choice("+-*/")
                res = {"+": a + b, "-": a - b, "*": a * b, "/": round(a / b, 4)}[op]
                lines.append(f"{a} {op} {b} = {res}")
        else:
            x = rng.uniform(0, 100)
            step = rng.uniform(-2, 2)
            for t in range(rng.randint(10, 30)):
                x += step + rng.gauss(0, 1)
                lines.append(f"{t}\t{x:.3f}\t{x * x:.1f}\t{int(x) % 97}")
        text = "\n".join(lines)
        produced += len(text)
        yield f"generated:{kind}", text


def domain_documents(domain: str) -> Iterator[tuple[str, str]]:
    """(source, text) documents of one domain in a fixed order."""
    if domain == "python":
        return python_sources()
    if domain == "english":
        return _interleave(pydoc_topics(), _group(_messages("de", original=True)))
    if domain in LANG_CODES:
        return _group(_messages(LANG_CODES[domain], original=False))
    if domain == "numbers":
        return numbers_documents()
    raise ValueError(f"unknown domain {domain!r}")


def _group(messages: Iterable[tuple[str, str]]) -> Iterator[tuple[str, str]]:
    """Join consecutive short messages of a catalog into documents of about CHUNK_CHARS."""
    buf: list[str] = []
    size = 0
    current = ""
    for source, msg in messages:
        if buf and (source != current or size >= CHUNK_CHARS):
            yield f"catalog:{current}", "\n".join(buf)
            buf, size = [], 0
        current = source
        buf.append(msg)
        size += len(msg) + 1
    if buf:
        yield f"catalog:{current}", "\n".join(buf)


def _split_long(text: str) -> Iterator[str]:
    """Cut a document into chunks of about CHUNK_CHARS at line boundaries."""
    buf: list[str] = []
    size = 0
    for line in text.splitlines():
        buf.append(line)
        size += len(line) + 1
        if size >= CHUNK_CHARS:
            yield "\n".join(buf)
            buf, size = [], 0
    if buf and size > 40:
        yield "\n".join(buf)


def build_domain(domain: str, max_chars: int = MAX_CHARS_PER_DOMAIN) -> list[Chunk]:
    """All chunks of a domain up to ``max_chars``, every HELDOUT_EVERY-th marked held out."""
    chunks: list[Chunk] = []
    total = 0
    for source, text in domain_documents(domain):
        for piece in _split_long(text):
            if not piece.strip():
                continue
            split = "heldout" if len(chunks) % HELDOUT_EVERY == HELDOUT_EVERY - 1 else "train"
            chunks.append(Chunk(domain, piece, split, source))
            total += len(piece)
            if total >= max_chars:
                return chunks
    return chunks


def build_corpus(out_dir: Path, max_chars: int = MAX_CHARS_PER_DOMAIN) -> dict[str, dict[str, int]]:
    """Write ``<out_dir>/<domain>.jsonl`` (text, split, source per chunk); return char counts."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stats: dict[str, dict[str, int]] = {}
    for domain in DOMAINS:
        chunks = build_domain(domain, max_chars)
        with (out_dir / f"{domain}.jsonl").open("w", encoding="utf-8") as fh:
            for c in chunks:
                fh.write(json.dumps({"text": c.text, "split": c.split, "source": c.source}) + "\n")
        stats[domain] = {
            "chunks": len(chunks),
            "train_chars": sum(len(c.text) for c in chunks if c.split == "train"),
            "heldout_chars": sum(len(c.text) for c in chunks if c.split == "heldout"),
        }
    return stats


def corpus_digest(out_dir: Path) -> dict[str, str]:
    """sha256 of each domain's corpus file: two builds match iff these match."""
    import hashlib

    return {
        d: hashlib.sha256((out_dir / f"{d}.jsonl").read_bytes()).hexdigest()[:16] for d in DOMAINS
    }


def load_corpus(out_dir: Path) -> dict[str, list[dict[str, str]]]:
    """Read back the chunks written by :func:`build_corpus`, per domain."""
    result: dict[str, list[dict[str, str]]] = {}
    for domain in DOMAINS:
        with (out_dir / f"{domain}.jsonl").open(encoding="utf-8") as fh:
            result[domain] = [json.loads(line) for line in fh]
    return result


if __name__ == "__main__":
    target = Path(__file__).parent / "_work" / "corpus"
    print(json.dumps(build_corpus(target), indent=1))
