"""`cmdr-iad weights`: where the pretrained backbone weights are, and how to get missing ones."""

from __future__ import annotations

import argparse
import json

from .common import add_quiet, require_writable

# `--json` without FILE: printed on stdout, as before, for one release (then FILE is required)
STDOUT_DEPRECATED = "<stdout, deprecated>"


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "weights",
        help="list the pretrained DINO / Point-MAE weights found, or download them",
        description=(
            "List the DINO ViT-B/8 and Point-MAE weights that cmdr-iad would use: where each "
            "was found (explicit path, $CMDR_IAD_HOME, ~/.cache/cmdr-iad), whether its SHA-256 "
            "matches the official release, and for missing files the URL and the folder to "
            "put them in. Exit status 1 when a file is missing or corrupt."),
    )
    p.add_argument("--dino-weights", metavar="FILE", default=None,
                   help="check this DINO weights file instead of searching")
    p.add_argument("--point-mae-weights", metavar="FILE", default=None,
                   help="check this Point-MAE pretrain.pth instead of searching")
    p.add_argument("--download", action="store_true",
                   help="download missing files from their official URLs (verified by SHA-256)")
    p.add_argument("--json", nargs="?", const=STDOUT_DEPRECATED, default=None, metavar="FILE",
                   help="write a JSON record to FILE ('-' = stdout) instead of the text report")
    add_quiet(p)
    p.set_defaults(func=run)


def _status(spec, explicit, download: bool) -> dict:
    from ..errors import WeightsError
    from ..features.weights import download_dir, find_weights, resolve_weights

    rec = {"kind": spec.kind, "title": spec.title, "url": spec.url,
           "official_sha256": spec.sha256, "folder": str(download_dir()),
           "expected_file": str(download_dir() / spec.filename),
           "alternates": list(spec.alternates)}
    try:
        # --download: explicit → folders → verified download (refused when offline)
        found = resolve_weights(spec, explicit) if download else find_weights(spec, explicit)
    except WeightsError as e:
        rec.update(status="error", message=str(e))
        return rec
    if found is None:
        rec.update(status="missing")
        return rec
    ident = found.identity
    rec.update(status="found", path=str(found.path), origin=found.origin, sha256=ident.sha256,
               checksum={True: "official", False: "differs from the official release"}[
                   bool(ident.official)])
    return rec


def run(args: argparse.Namespace) -> int:
    from ..features.weights import DINO, HOME_ENV, OFFLINE_ENV, POINT_MAE, weights_dirs

    out = None
    if args.json not in (None, "-", STDOUT_DEPRECATED):
        out = require_writable(args.json, "JSON file", folder=False)
    records = [_status(DINO, args.dino_weights, args.download),
               _status(POINT_MAE, args.point_mae_weights, args.download)]
    ok = all(r["status"] == "found" for r in records)
    if args.json is not None:
        payload = {"ok": ok, "search": [f"{o}: {d}" for o, d in weights_dirs()], "weights": records}
        if out is None:
            print(json.dumps(payload, indent=2))
        else:
            from ..fileio import write_json_atomic

            write_json_atomic(out, payload, sort_keys=False)
            print(f"wrote {out} ({'all weights found' if ok else 'weights missing or corrupt'})")
        return 0 if ok else 1
    print("weights folders searched: " + ", ".join(f"{d} ({o})" for o, d in weights_dirs()))
    for r in records:
        print(f"\n{r['title']}")
        if r["status"] == "found":
            print(f"  found    {r['path']}  [{r['origin']}]")
            print(f"  sha256   {r['sha256']}  ({r['checksum']})")
        elif r["status"] == "missing":
            print("  MISSING")
            print(f"  download {r['url']}")
            print(f"  save as  {r['expected_file']}")
            if r["alternates"]:
                print(f"  (also accepted in that folder: {', '.join(r['alternates'])})")
            print(f"  sha256   {r['official_sha256']}")
        else:
            print(f"  ERROR    {r['message']}")
    if not ok:
        print(f"\nFetch missing files with `cmdr-iad weights --download` (needs internet; "
              f"{OFFLINE_ENV}=1 disables downloads), set {HOME_ENV} to a folder holding them, "
              "or pass --dino-weights / --point-mae-weights to the other commands.")
    return 0 if ok else 1
