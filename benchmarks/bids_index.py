"""BIDS file-name indexing: pybids vs bids2table vs ancpbids vs a stdlib regex baseline.

Usage::

    python benchmarks/bids_index.py [--subjects N] [--repeats R] [--only NAME,...] [--check]

Builds a synthetic BIDS tree in a temporary folder (removed at exit), shaped like a real mGRE
study: N subjects x sessions ``ses-01``/``ses-02``, each ``anat/`` holding 8 echoes of
``sub-X_ses-Y_acq-gre_run-1_echo-<k>_part-mag_MEGRE.nii.gz`` and 8 of ``..._part-phase_...``, each
with a ``.json`` sidecar (64 files per subject), plus ``derivatives/qsmxt`` (its own
``dataset_description.json``) with ``..._Chimap.nii`` and ``..._mask.nii`` per session, a
``dataset_description.json`` and ``participants.tsv``. Images are empty files; sidecars hold ``{}``
(pybids and ancpbids parse sidecars, and a 0-byte ``.json`` is not valid JSON).

Then it times, for each candidate that is installed (a missing one prints ``not installed``),
indexing the tree and extracting the entities of every file it reports:

- ``stdlib_regex``: ``os.walk`` + one compiled regex per entity key (the reference);
- ``pybids_parse``: ``os.walk`` + ``bids.layout.parse_file_entities(path, entities=...)`` with the
  ``bids`` + ``derivatives`` configs' entities loaded once;
- ``pybids_parse_default``: the same call without ``entities=`` (it re-reads both config files on
  every call): timed on the first 300 files and extrapolated to all;
- ``pybids_layout``: ``BIDSLayout(root, validate=False, derivatives=True)`` then
  ``layout.get(return_type='object')`` and ``f.get_entities()`` per file;
- ``pybids_layout_nometa``: the same with ``indexer=BIDSLayoutIndexer(index_metadata=False)``
  (sidecars are listed but not read);
- ``bids2table_index``: ``batch_index_dataset(find_bids_datasets(root))`` (raw + nested
  derivatives), ``pa.concat_tables`` and ``to_pylist()``; it leaves JSON sidecars out by design;
- ``bids2table_parse``: ``os.walk`` + ``bids2table.parse_bids_entities(path)``;
- ``ancpbids_load``: ``ancpbids.load_dataset(root)`` then ``ds.query(return_type='object')`` and
  the ``entities``/``suffix``/``extension`` of each artifact;
- ``ancpbids_parse``: ``os.walk`` + ``ancpbids.utils.parse_bids_name(name)``.

Each timing runs in a fresh subprocess (the libraries keep ``lru_cache``s across calls), with
imports done before the clock starts; rounds are interleaved to spread the machine's noise. One
line per method: ``name: <best wall seconds> s (<files/s>)``, then every run's wall and CPU
seconds, the file count, the import time and the peak RSS; the last line gives each method's best
wall time over ``stdlib_regex``'s, and the same for CPU time (steadier on a loaded machine).

``--check`` instead builds a small tree of tricky names (entity order, with and without ``ses-``,
``desc-brain_mask``, bare ``_mask``, ``_Chimap``, a 4-D file without ``echo-``, ``.nii`` vs
``.nii.gz``, top-level sidecars that must be inherited, a parent folder named ``sub-...``, a 0-byte
sidecar) and prints what each method gets.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator

N_ECHOES = 8
SESSIONS = ("01", "02")
FIELDS = ("sub", "ses", "acq", "run", "echo", "part", "desc", "suffix", "extension")
KEYS = FIELDS[:-2]
NAIVE_SAMPLE = 300

# Which distribution a method needs (None: the standard library).
DISTS = {"pybids": "bids.layout", "bids2table": "bids2table", "ancpbids": "ancpbids"}
METHODS: dict[str, str | None] = {
    "stdlib_regex": None,
    "pybids_parse": "pybids",
    "pybids_parse_default": "pybids",
    "pybids_layout": "pybids",
    "pybids_layout_nometa": "pybids",
    "bids2table_index": "bids2table",
    "bids2table_parse": "bids2table",
    "ancpbids_load": "ancpbids",
    "ancpbids_parse": "ancpbids",
}


def installed(dist: str) -> str | None:
    """The installed version of ``dist``, or None."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


# --------------------------------------------------------------------------------------------
# The synthetic tree
# --------------------------------------------------------------------------------------------


def _touch(path: str, text: str = "") -> None:
    with open(path, "w") as f:
        f.write(text)


def build_tree(root: str, n_subjects: int) -> int:
    """Write the synthetic study under ``root``; return the number of files."""
    os.makedirs(root, exist_ok=True)
    _touch(
        os.path.join(root, "dataset_description.json"),
        json.dumps({"Name": "synthetic mGRE", "BIDSVersion": "1.10.0", "DatasetType": "raw"}),
    )
    labels = [f"{i:04d}" for i in range(1, n_subjects + 1)]
    _touch(
        os.path.join(root, "participants.tsv"),
        "participant_id\n" + "".join(f"sub-{s}\n" for s in labels),
    )
    deriv = os.path.join(root, "derivatives", "qsmxt")
    os.makedirs(deriv)
    _touch(
        os.path.join(deriv, "dataset_description.json"),
        json.dumps(
            {
                "Name": "qsmxt",
                "BIDSVersion": "1.10.0",
                "DatasetType": "derivative",
                "GeneratedBy": [{"Name": "QSMxT"}],
            }
        ),
    )
    n = 3
    for s in labels:
        for ses in SESSIONS:
            anat = os.path.join(root, f"sub-{s}", f"ses-{ses}", "anat")
            os.makedirs(anat)
            stem = f"sub-{s}_ses-{ses}_acq-gre_run-1"
            for part in ("mag", "phase"):
                for k in range(1, N_ECHOES + 1):
                    base = os.path.join(anat, f"{stem}_echo-{k}_part-{part}_MEGRE")
                    _touch(base + ".nii.gz")
                    _touch(base + ".json", "{}")
                    n += 2
            danat = os.path.join(deriv, f"sub-{s}", f"ses-{ses}", "anat")
            os.makedirs(danat)
            _touch(os.path.join(danat, f"{stem}_Chimap.nii"))
            _touch(os.path.join(danat, f"{stem}_mask.nii"))
            n += 2
    return n


def walk_files(root: str) -> Iterator[str]:
    for top, dirs, files in os.walk(root):
        dirs.sort()
        for name in files:
            yield os.path.join(top, name)


# --------------------------------------------------------------------------------------------
# Methods: each returns [(absolute path, native entities)], and a normaliser maps native
# entities to FIELDS (str values) for --check.
# --------------------------------------------------------------------------------------------

_KEY_RE = {k: re.compile(rf"(?:^|_){k}-([a-zA-Z0-9]+)(?=_)") for k in KEYS}
_SUFFIX_EXT_RE = re.compile(r"(?:^|_)([a-zA-Z0-9]+)(\.[^_]+)$")


def stdlib_parse(name: str) -> dict[str, str]:
    ents = {}
    for key, rx in _KEY_RE.items():
        m = rx.search(name)
        if m is not None:
            ents[key] = m.group(1)
    m = _SUFFIX_EXT_RE.search(name)
    if m is not None:
        ents["suffix"], ents["extension"] = m.group(1), m.group(2)
    return ents


def m_stdlib_regex(root: str) -> list:
    return [(p, stdlib_parse(os.path.basename(p))) for p in walk_files(root)]


def _pybids_entities():
    from bids.layout.models import Config

    ents = {}
    for c in ("bids", "derivatives"):
        ents.update(Config.load(c).entities)
    return list(ents.values())


def m_pybids_parse(root: str) -> list:
    from bids.layout import parse_file_entities

    ents = _pybids_entities()
    # The 'subject' pattern wants a path separator before 'sub-': give it the path relative to
    # the dataset root with a leading '/', so that a parent folder named 'sub-...' can't match.
    return [
        (p, parse_file_entities("/" + os.path.relpath(p, root), entities=ents))
        for p in walk_files(root)
    ]


def m_pybids_parse_default(root: str, limit: int | None = NAIVE_SAMPLE) -> list:
    from bids.layout import parse_file_entities

    out: list = []
    for p in walk_files(root):
        if limit is not None and len(out) >= limit:
            break
        out.append((p, parse_file_entities("/" + os.path.relpath(p, root))))
    return out


def _pybids_layout(root: str, index_metadata: bool = True) -> list:
    from bids import BIDSLayout, BIDSLayoutIndexer

    indexer = BIDSLayoutIndexer(validate=False, index_metadata=index_metadata)
    layout = BIDSLayout(root, validate=False, derivatives=True, indexer=indexer)
    return [(f.path, f.get_entities()) for f in layout.get(return_type="object")]


def m_pybids_layout(root: str) -> list:
    return _pybids_layout(root)


def m_pybids_layout_nometa(root: str) -> list:
    return _pybids_layout(root, index_metadata=False)


_PYBIDS_NAMES = {"subject": "sub", "session": "ses", "acquisition": "acq"}


def norm_pybids(e: dict) -> dict:
    return {_PYBIDS_NAMES.get(k, k): str(v) for k, v in e.items() if v is not None}


def m_bids2table_index(root: str) -> list:
    import bids2table
    import pyarrow as pa

    roots = list(bids2table.find_bids_datasets(root))
    tab = pa.concat_tables(bids2table.batch_index_dataset(roots))
    return [(os.path.join(r["root"], r["path"]), r) for r in tab.to_pylist()]


def m_bids2table_parse(root: str) -> list:
    from bids2table import parse_bids_entities

    return [(p, parse_bids_entities(p)) for p in walk_files(root)]


def norm_bids2table(e: dict) -> dict:
    out = {("extension" if k == "ext" else k): str(v) for k, v in e.items() if v is not None}
    out.update({k: str(v) for k, v in (e.get("extra_entities") or [])})
    for k in ("dataset", "root", "path", "extra_entities"):
        out.pop(k, None)
    return out


def m_ancpbids_load(root: str) -> list:
    import ancpbids

    ds = ancpbids.load_dataset(root)
    out: list = []
    for a in ds.query(return_type="object"):
        ents = getattr(a, "entities", None)
        if ents is None:  # dataset_description.json, participants.tsv
            continue
        out.append((a.get_absolute_path(), {**ents, "suffix": a.suffix, "extension": a.extension}))
    return out


def m_ancpbids_parse(root: str) -> list:
    from ancpbids.utils import parse_bids_name

    out: list = []
    for p in walk_files(root):
        r = parse_bids_name(p)
        out.append((p, r and {**r["entities"], "suffix": r["suffix"], "extension": r["extension"]}))
    return out


def norm_plain(e: dict | None) -> dict:
    return {k: str(v) for k, v in (e or {}).items() if v is not None}


FUNCS: dict[str, tuple[Callable[..., list], Callable[[dict], dict]]] = {
    "stdlib_regex": (m_stdlib_regex, norm_plain),
    "pybids_parse": (m_pybids_parse, norm_pybids),
    "pybids_parse_default": (m_pybids_parse_default, norm_pybids),
    "pybids_layout": (m_pybids_layout, norm_pybids),
    "pybids_layout_nometa": (m_pybids_layout_nometa, norm_pybids),
    "bids2table_index": (m_bids2table_index, norm_bids2table),
    "bids2table_parse": (m_bids2table_parse, norm_bids2table),
    "ancpbids_load": (m_ancpbids_load, norm_plain),
    "ancpbids_parse": (m_ancpbids_parse, norm_plain),
}


# --------------------------------------------------------------------------------------------
# Timing (one subprocess per run)
# --------------------------------------------------------------------------------------------


def worker(method: str, root: str) -> None:
    """Time one method on ``root`` and print a JSON line (run as a subprocess)."""
    import resource

    dist = METHODS[method]
    t0 = time.perf_counter()
    if dist is not None:
        __import__(DISTS[dist])
    if method == "bids2table_index":
        import pyarrow  # noqa: F401
    t_import = time.perf_counter() - t0
    fn = FUNCS[method][0]
    t0, c0 = time.perf_counter(), time.process_time()
    rows = fn(root)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    n = len(rows)
    extrapolated = False
    if method == "pybids_parse_default":
        total = sum(1 for _ in walk_files(root))
        seconds *= total / max(n, 1)
        cpu *= total / max(n, 1)
        n, extrapolated = total, True
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "seconds": seconds,
                "cpu_s": cpu,
                "files": n,
                "import_s": t_import,
                "maxrss_mb": rss,
                "extrapolated": extrapolated,
            }
        )
    )


def run_one(method: str, root: str) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--_worker", method, "--_root", root]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        return {"error": (p.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(p.stdout.strip().splitlines()[-1])


def bench(n_subjects: int, repeats: int, only: list[str] | None) -> None:
    versions = {d: installed(d) for d in DISTS}
    print(
        f"# python {sys.version.split()[0]}; "
        + ", ".join(f"{d} {v or 'not installed'}" for d, v in versions.items())
    )
    methods = [m for m in METHODS if only is None or m in only]
    tmp = tempfile.mkdtemp(prefix="bids_index_")
    try:
        root = os.path.join(tmp, "ds")
        t0 = time.perf_counter()
        n_files = build_tree(root, n_subjects)
        print(
            f"# tree: {n_subjects} subjects, {n_files} files, "
            f"built in {time.perf_counter() - t0:.1f} s"
        )
        sum(1 for _ in walk_files(root))  # warm the dentry cache
        runs: dict[str, list[dict]] = {m: [] for m in methods}
        runnable = [m for m in methods if (d := METHODS[m]) is None or versions[d]]
        for _ in range(repeats):
            for m in runnable:
                runs[m].append(run_one(m, root))
        best: dict[str, float] = {}
        best_cpu: dict[str, float] = {}
        for m in methods:
            dist = METHODS[m]
            if dist is not None and not versions[dist]:
                print(f"{m}: not installed ({dist})")
                continue
            ok = [r for r in runs[m] if "error" in r] == []
            if not ok:
                err = next(r["error"] for r in runs[m] if "error" in r)
                print(f"{m}: failed ({err})")
                continue
            secs = [r["seconds"] for r in runs[m]]
            cpus = [r["cpu_s"] for r in runs[m]]
            best[m], best_cpu[m] = min(secs), min(cpus)
            r0 = runs[m][0]
            extra = ", extrapolated" if r0["extrapolated"] else ""
            print(
                f"{m}: {best[m]:.3f} s ({r0['files'] / best[m]:,.0f} files/s)"
                f"  [runs: {', '.join(f'{s:.3f}' for s in secs)} s;"
                f" cpu {', '.join(f'{s:.3f}' for s in cpus)} s; {r0['files']} files{extra};"
                f" import {r0['import_s']:.2f} s; peak RSS {r0['maxrss_mb']:.0f} MB]",
                flush=True,
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if "stdlib_regex" in best:
        ref = best["stdlib_regex"]
        cref = best_cpu["stdlib_regex"]
        ratios = " ".join(
            f"{m}={t / ref:.1f}x(cpu {best_cpu[m] / cref:.1f}x)"
            for m, t in best.items()
            if m != "stdlib_regex"
        )
        print(f"bids_index time_vs_stdlib: {ratios or '(no candidate installed)'}")
    else:
        print("bids_index time_vs_stdlib: (stdlib_regex not run)")


# --------------------------------------------------------------------------------------------
# --check: tricky names
# --------------------------------------------------------------------------------------------

# (relative path, expected FIELDS as "key=value ..."; run/echo compared as integers)
_CHECK = [
    (
        "sub-01/ses-01/anat/sub-01_ses-01_acq-gre_run-1_echo-1_part-mag_MEGRE.nii.gz",
        "sub=01 ses=01 acq=gre run=1 echo=1 part=mag suffix=MEGRE extension=.nii.gz",
    ),
    (
        "sub-01/ses-01/anat/sub-01_ses-01_acq-gre_run-1_echo-1_part-phase_MEGRE.nii.gz",
        "sub=01 ses=01 acq=gre run=1 echo=1 part=phase suffix=MEGRE extension=.nii.gz",
    ),
    (  # 4-D: all echoes in one file, no echo entity; zero-padded run
        "sub-01/ses-01/anat/sub-01_ses-01_acq-gre_run-01_part-mag_MEGRE.nii.gz",
        "sub=01 ses=01 acq=gre run=01 part=mag suffix=MEGRE extension=.nii.gz",
    ),
    (  # entities out of the canonical order, .nii
        "sub-01/ses-01/anat/sub-01_acq-gre_ses-01_echo-2_run-1_part-mag_MEGRE.nii",
        "sub=01 ses=01 acq=gre run=1 echo=2 part=mag suffix=MEGRE extension=.nii",
    ),
    (  # no session (oefray's current layout)
        "sub-02/anat/sub-02_echo-1_part-mag_MEGRE.nii.gz",
        "sub=02 echo=1 part=mag suffix=MEGRE extension=.nii.gz",
    ),
    (  # mixed-case label, two-digit echo
        "sub-Pt03/anat/sub-Pt03_echo-10_part-mag_MEGRE.nii",
        "sub=Pt03 echo=10 part=mag suffix=MEGRE extension=.nii",
    ),
    (
        "derivatives/qsmxt/sub-01/ses-01/anat/sub-01_ses-01_acq-gre_run-1_Chimap.nii",
        "sub=01 ses=01 acq=gre run=1 suffix=Chimap extension=.nii",
    ),
    (  # QSMxT's mask: no desc
        "derivatives/qsmxt/sub-01/ses-01/anat/sub-01_ses-01_acq-gre_run-1_mask.nii",
        "sub=01 ses=01 acq=gre run=1 suffix=mask extension=.nii",
    ),
    (  # oefray's derivatives/qsm mask
        "derivatives/qsmxt/sub-02/anat/sub-02_desc-brain_mask.nii.gz",
        "sub=02 desc=brain suffix=mask extension=.nii.gz",
    ),
]
CHECK_FILES = [(rel, dict(kv.split("=") for kv in want.split())) for rel, want in _CHECK]

CHECK_JSON = {
    # top level: inherited by every MEGRE file / every acq-gre file / every phase file
    "MEGRE.json": {"MagneticFieldStrength": 3},
    "acq-gre_MEGRE.json": {"Manufacturer": "X"},
    "part-phase_MEGRE.json": {"Units": "rad"},
    "sub-01/ses-01/anat/sub-01_ses-01_acq-gre_run-1_echo-1_part-mag_MEGRE.json": {
        "EchoTime": 0.004
    },
    "sub-01/ses-01/anat/sub-01_ses-01_acq-gre_run-1_echo-1_part-phase_MEGRE.json": {
        "EchoTime": 0.004
    },
    "sub-02/anat/sub-02_echo-1_part-mag_MEGRE.json": {"EchoTime": 0.005},
}

CHECK_META: dict[str, dict[str, object]] = {  # relative path -> expected merged metadata
    CHECK_FILES[0][0]: {"MagneticFieldStrength": 3, "Manufacturer": "X", "EchoTime": 0.004},
    CHECK_FILES[1][0]: {
        "MagneticFieldStrength": 3,
        "Manufacturer": "X",
        "EchoTime": 0.004,
        "Units": "rad",
    },
    CHECK_FILES[2][0]: {"MagneticFieldStrength": 3, "Manufacturer": "X"},
    CHECK_FILES[4][0]: {"MagneticFieldStrength": 3, "EchoTime": 0.005},
}
META_KEYS = ("MagneticFieldStrength", "Manufacturer", "EchoTime", "Units")


def build_check_tree(root: str, empty_sidecar: bool = False) -> None:
    build_tree(root, 0)
    for rel, _ in CHECK_FILES:
        os.makedirs(os.path.dirname(os.path.join(root, rel)), exist_ok=True)
        _touch(os.path.join(root, rel))
    for rel, meta in CHECK_JSON.items():
        _touch(os.path.join(root, rel), json.dumps(meta))
    if empty_sidecar:
        _touch(os.path.join(root, "sub-Pt03/anat/sub-Pt03_echo-10_part-mag_MEGRE.json"))


def _same(got: dict, want: dict) -> bool:
    got = {k: got.get(k) for k in FIELDS}
    want = {k: want.get(k) for k in FIELDS}
    for k in ("run", "echo"):
        for d in (got, want):
            if d[k] is not None and d[k].isdigit():
                d[k] = str(int(d[k]))
    return got == want


def _fmt(e: dict) -> str:
    return " ".join(f"{k}={e[k]}" for k in FIELDS if k in e) or "(nothing)"


def metadata_of(method: str, root: str, rows: list, path: str) -> dict | str:
    if method.startswith("pybids_layout"):
        from bids import BIDSLayout

        return BIDSLayout(root, validate=False, derivatives=True).get_metadata(path)
    if method == "bids2table_index":
        from bids2table import load_bids_metadata

        return load_bids_metadata(path)
    if method == "ancpbids_load":
        import ancpbids

        ds = ancpbids.load_dataset(root)
        arts = [a for a in ds.query(return_type="object") if a.get_absolute_path() == path]
        return arts[0].get_metadata() if arts else "file not found"
    return "n/a"


def check() -> None:
    versions = {d: installed(d) for d in DISTS}
    print(
        f"# python {sys.version.split()[0]}; "
        + ", ".join(f"{d} {v or 'not installed'}" for d, v in versions.items())
    )
    tmp = tempfile.mkdtemp(prefix="bids_check_")
    try:
        # The dataset sits under a folder named 'sub-old': a parser that reads the whole
        # absolute path may take its subject from there.
        root = os.path.join(tmp, "sub-old", "ds")
        build_check_tree(root)
        for m, (fn, norm) in FUNCS.items():
            dist = METHODS[m]
            if dist is not None and not versions[dist]:
                print(f"\n== {m}: not installed ({dist})")
                continue
            print(f"\n== {m}")
            try:
                rows = fn(root) if m != "pybids_parse_default" else fn(root, None)
            except Exception as exc:  # noqa: BLE001 - report and go on
                print(f"  indexing failed: {type(exc).__name__}: {exc}")
                continue
            by_path = {os.path.relpath(p, root): e for p, e in rows}
            for rel, want in CHECK_FILES:
                if rel not in by_path:
                    print(f"  MISSING {rel}")
                    continue
                got = norm(by_path[rel])
                tag = "ok  " if _same(got, want) else "DIFF"
                line = f"  {tag} {os.path.basename(rel)}"
                if tag == "DIFF":
                    line += f"\n         got  {_fmt(got)}\n         want {_fmt(want)}"
                elif got.get("run") not in (None, want.get("run")):
                    line += f"   (run={got['run']!r}: padding lost)"
                print(line)
            sidecars = sorted(rel for rel in by_path if rel.endswith(".json"))
            print(f"  sidecars/metadata files reported as files: {len(sidecars)}")
            if m in ("pybids_layout", "bids2table_index", "ancpbids_load"):
                for rel, want_meta in CHECK_META.items():
                    meta: dict | str
                    try:
                        meta = metadata_of(m, root, rows, os.path.join(root, rel))
                    except Exception as exc:  # noqa: BLE001
                        meta = f"{type(exc).__name__}: {exc}"
                    if isinstance(meta, dict):
                        meta = {k: v for k, v in meta.items() if k in META_KEYS}
                    tag = "ok  " if meta == want_meta else "DIFF"
                    print(
                        f"  meta {tag} {os.path.basename(rel)}: {meta}"
                        + ("" if tag == "ok  " else f" (want {want_meta})")
                    )
        # A 0-byte sidecar (what a careless converter or `touch` leaves)
        print("\n== 0-byte .json sidecar in the tree")
        root2 = os.path.join(tmp, "empty_sidecar", "ds")
        build_check_tree(root2, empty_sidecar=True)
        for m, dist in (
            ("pybids_layout", "pybids"),
            ("bids2table_index", "bids2table"),
            ("ancpbids_load", "ancpbids"),
        ):
            if not versions[dist]:
                print(f"  {m}: not installed")
                continue
            bad = os.path.join(root2, "sub-Pt03/anat/sub-Pt03_echo-10_part-mag_MEGRE.nii")
            try:
                rows = FUNCS[m][0](root2)
            except Exception as exc:  # noqa: BLE001
                print(f"  {m}: indexing failed: {type(exc).__name__}: {str(exc)[:120]}")
                continue
            try:
                print(
                    f"  {m}: indexed {len(rows)} files; "
                    f"metadata of that file: {metadata_of(m, root2, rows, bad)}"
                )
            except Exception as exc:  # noqa: BLE001
                print(
                    f"  {m}: indexed {len(rows)} files; metadata of that file: "
                    f"{type(exc).__name__}: {str(exc)[:120]}"
                )
        # Per-file parsers fed an absolute path under a folder named 'sub-old'
        print("\n== per-file parsers given an absolute path (dataset under /data/sub-old/)")
        path = "/data/sub-old/ds/" + CHECK_FILES[0][0]
        parsers: dict[str, Callable[[], dict]] = {
            "stdlib_regex": lambda: stdlib_parse(os.path.basename(path))
        }
        if versions["pybids"]:
            from bids.layout import parse_file_entities

            parsers["pybids parse_file_entities(abs)"] = lambda: norm_pybids(
                parse_file_entities(path)
            )
            parsers["pybids parse_file_entities(name)"] = lambda: norm_pybids(
                parse_file_entities(os.path.basename(path))
            )
        if versions["bids2table"]:
            from bids2table import parse_bids_entities

            parsers["bids2table parse_bids_entities(abs)"] = lambda: norm_bids2table(
                parse_bids_entities(path)
            )
        if versions["ancpbids"]:
            from ancpbids.utils import parse_bids_name

            parsers["ancpbids parse_bids_name(abs)"] = lambda: norm_plain(
                {
                    **(r := parse_bids_name(path))["entities"],
                    "suffix": r["suffix"],
                    "extension": r["extension"],
                }
            )
        for name, f in parsers.items():
            got = f()
            tag = "ok  " if _same(got, CHECK_FILES[0][1]) else "DIFF"
            print(f"  {tag} {name}: {_fmt(got)}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--subjects", type=int, default=1000, help="subjects in the tree (1000)")
    ap.add_argument("--repeats", type=int, default=2, help="timed runs per method (2)")
    ap.add_argument("--only", help="comma-separated method names: " + ",".join(METHODS))
    ap.add_argument("--check", action="store_true", help="correctness on tricky names instead")
    ap.add_argument("--_worker", help=argparse.SUPPRESS)
    ap.add_argument("--_root", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a._worker:
        worker(a._worker, a._root)
    elif a.check:
        check()
    else:
        only = a.only.split(",") if a.only else None
        if only and (bad := [m for m in only if m not in METHODS]):
            ap.error(f"unknown method(s): {', '.join(bad)}")
        bench(a.subjects, a.repeats, only)


if __name__ == "__main__":
    main()
