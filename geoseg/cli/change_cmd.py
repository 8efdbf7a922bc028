"""``geoseg change``: compare two runs (or two images, run here first) of one region."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from geoseg.change.defaults import (
    BUILDING_BREAK_CHANGED,
    BUILDING_MAX_OTHER_COVER,
    BUILDING_MIN_CHANGED,
    BUILDING_MIN_CONFIDENCE,
    BUILDING_PART_CHANGED,
    MIN_CHANGE_CONFIDENCE,
    MIN_SPECTRAL_CHANGE,
    MODIFIED_MIN_CHANGED,
)
from geoseg.cli.run_cmds import SOURCE_ARGS, add_source_args, add_width_args


def _print_summary(res: Any) -> None:
    s = res.summary
    areas = s["areas"]
    g = s["grid"]
    print(f"geoseg change complete in {s['timings_s']['total_s']:.1f} s: "
          f"{g['shape'][1]}×{g['shape'][0]} px on {g['target']}'s grid ({g['crs']})")
    print(f"  grid: {g['message']}")
    print(f"  land cover: {areas['changed']['ha']:.2f} ha changed, "
          f"{areas['unchanged']['ha']:.2f} ha unchanged (of which "
          f"{areas['uncertain']['ha']:.2f} ha where the classes differ at low confidence or "
          f"the image did not change), {areas['unknown']['ha']:.2f} ha unknown")
    sp = s.get("spectral") or {}
    if sp.get("min_spectral_change"):
        print(f"  image check: a change needs the images to differ by >= "
              f"{sp['min_spectral_change']:g} σ ({sp['image_a']} -> {sp['image_b']})")
    elif sp.get("skipped"):
        print(f"  image check: skipped ({sp['skipped']})")
    top = sorted((r for r in s["transitions"] if r["from_id"] != r["to_id"] and r["pixels"]),
                 key=lambda r: -r["area_m2"])[:5]
    for r in top:
        print(f"    {r['from_class']} -> {r['to_class']}: {r['area_ha']:.3f} ha")
    b = s["buildings"]
    if b is None:
        print("  buildings: skipped (a run has no buildings model)")
    else:
        print("  buildings: " + ", ".join(f"{n} {k}" for k, n in b["counts"].items()))
    for k, v in s["outputs"].items():
        print(f"  {k:<18} {v}")


def _run_dates(a: argparse.Namespace) -> tuple[Path, Path, tuple[str, str] | None]:
    """The two runs to compare: the given run directories, or, when both arguments are image
    files, ``OUT/run_a`` and ``OUT/run_b`` computed here with the same models and settings
    (an interrupted date is resumed; ``--overwrite`` redoes both); and the two images for the
    spectral check when they are known here (given as images or by ``--images``)."""
    from geoseg.change.compare import unfinished_change
    from geoseg.cli.run_cmds import cmd_run, run_parser
    from geoseg.errors import InputError, OutputExistsError
    from geoseg.manifest import foreign_entries, has_results
    from geoseg.runfolder import local_run

    a_path, b_path = local_run(a.run_a), local_run(a.run_b)  # runs in object storage: fetched
    images = (str(a.images[0]), str(a.images[1])) if a.images else None
    if not (_is_image(a_path) or _is_image(b_path)):
        given = source_options(a)
        if given and not images:
            from geoseg.errors import ConfigError

            flags = ", ".join(f"--{k}" for k in given)
            raise ConfigError(f"{flags}: how to read image dates or --images; the runs compared "
                              "here are read as they were made: leave it out, or pass --images "
                              "BEFORE AFTER")
        return a_path, b_path, images
    if not (_is_image(a_path) and _is_image(b_path)):
        raise InputError("give two run directories or two images, not one of each: "
                         f"{a_path} / {b_path}")
    out_dir = Path(a.out)
    dates = {out_dir / "run_a", out_dir / "run_b"}
    if (not a.overwrite and out_dir.is_dir() and not unfinished_change(out_dir)
            and any(p not in dates for p in out_dir.iterdir())):
        raise OutputExistsError(f"output {out_dir} is not empty: pass --overwrite to redo both "
                                "dates and the change outputs, or choose another -o directory")
    for label in ("a", "b"):  # both dates' folders checked before either date runs
        where = out_dir / f"run_{label}"
        if (where.exists() and not where.is_dir()) or foreign_entries(where):
            raise OutputExistsError(
                f"{where} holds files geoseg did not write (no run manifest): move them or "
                "choose another -o directory (geoseg never replaces files it did not write)")
    def date_args(image: Path, out: Path, existing: bool) -> argparse.Namespace:
        # `geoseg run IMAGE -o OUT` with its own defaults, then this command's settings
        ns = run_parser().parse_args([str(image), "-o", str(out)])
        vars(ns).update(
            {k: getattr(a, k) for k in ("models", "config", "bbox", "region_crs", "region",
                                        "chunk_size", "workers", "threads", "device",
                                        "address", "quiet", *SOURCE_ARGS)},
            overwrite=existing and a.overwrite, resume=existing and not a.overwrite)
        return ns

    _check_dates(date_args(a_path, out_dir / "run_a", False),
                 date_args(b_path, out_dir / "run_b", False), a.grid)
    runs = []
    for label, image in (("a", a_path), ("b", b_path)):
        out = Path(a.out) / f"run_{label}"
        existing = has_results(out)
        print(f"date {label.upper()}: geoseg run {image} -o {out}"
              + (" (overwrite)" if existing and a.overwrite else
                 " (resume)" if existing else ""), flush=True)
        rc = cmd_run(date_args(image, out, existing))
        if rc != 0:
            raise InputError(f"the run of date {label.upper()} ({image}) did not complete: "
                             f"see {out}/summary.json, then rerun to resume it")
        runs.append(out)
    return runs[0], runs[1], images or (str(a_path), str(b_path))


def _is_image(path: Path) -> bool:
    """Whether a date argument is an image (a file: raster, .txt list, STAC document; or a
    quoted glob) rather than a run directory."""
    import glob

    return path.is_file() or (not path.exists() and glob.has_magic(str(path)))


def source_options(a: argparse.Namespace) -> dict[str, object] | None:
    """The source flags given (``--bands`` ...), as a run's ``source:`` records them; None when
    none was given."""
    given = {k: getattr(a, k) for k in SOURCE_ARGS if getattr(a, k, None) is not None}
    return given or None


def _check_dates(a: argparse.Namespace, b: argparse.Namespace, target: str) -> None:
    """Plan both dates before either runs, so that what would stop one (a band a model needs,
    a region off the image, values out of the model's range) or the pair (images that do not
    overlap) is one line now, not after date A's run. The plans' warnings are left to the
    runs, which give them again."""
    import warnings

    from geoseg.change.align import overlap_window
    from geoseg.cli.run_cmds import job_config
    from geoseg.plan import make_plan

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        grids = [make_plan(job_config(ns, ns.image or None, ns.out)).grid for ns in (a, b)]
    overlap_window(grids[0], grids[1], "b" if target == "b" else "a", "images")


def cmd_change(a: argparse.Namespace) -> int:
    from geoseg.change import compare_runs

    if "://" in str(a.out):
        from geoseg.errors import InputError

        raise InputError(f"-o {a.out}: geoseg change writes to a local folder (the runs it "
                         "compares may be in object storage): pass -o DIR, then copy DIR "
                         "where it should go")
    run_a, run_b, images = _run_dates(a)
    if a.address or os.environ.get("RAY_ADDRESS"):  # the change pass runs on that cluster too
        try:
            from geoseg.runtime.ray_backend import ensure_ray
        except ImportError as exc:
            from geoseg.errors import MissingDependencyError

            raise MissingDependencyError("--address needs Ray, which is not installed: "
                                         "pip install 'geoseg[cluster]'") from exc
        ensure_ray(a.address)
    res = compare_runs(run_a, run_b, Path(a.out), grid=a.grid,
                       min_confidence=a.min_confidence, iou_modified=a.iou_modified,
                       area_tolerance=a.area_tolerance, overwrite=a.overwrite,
                       min_change_width=a.min_change_width,
                       min_change_confidence=a.min_change_confidence,
                       building_min_confidence=a.building_min_confidence,
                       building_max_other_cover=a.building_max_other_cover,
                       building_min_changed=a.building_min_changed,
                       building_break_changed=a.building_break_changed,
                       modified_min_changed=a.modified_min_changed,
                       building_part_changed=a.building_part_changed,
                       min_spectral_change=a.min_spectral_change, images=images,
                       source=source_options(a))
    _print_summary(res)
    if a.scene:
        import json

        from geoseg.change.change_scores import evaluate_change
        from geoseg.change.compare import EVALUATION

        report = evaluate_change(res, a.scene)
        path = Path(a.out) / EVALUATION
        path.write_text(json.dumps(report, indent=2) + "\n")
        print("  evaluation vs. ground truth: " + ", ".join(
            f"{k} {'n/a' if v is None else f'{v:.3f}'}" for k, v in report["headline"].items()))
        at = report["pixels"]["by_confidence"]["precision_0.8_at"]
        print("  changed px precision 0.8: " + (
            f"from min confidence {at['min_confidence']:.2f}, at recall {at['recall']:.3f}"
            if at else "not reached at any confidence"))
        if "by_spectral_change" in report["pixels"]:
            at = report["pixels"]["by_spectral_change"]["precision_0.8_at"]
            print("  changed px precision 0.8: " + (
                f"from min spectral change {at['min_spectral_change']:.2f} σ, at recall "
                f"{at['recall']:.3f}" if at else "not reached at any image change"))
        print(f"  {'evaluation':<18} {path}")
        print(f"  {'pr_curve':<18} {report['pixels']['pr_curve_png']}")
    return 0


def add_change_command(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``geoseg change RUN_A RUN_B -o OUT``."""
    c = sub.add_parser("change", help="compare two runs of one region: land-cover change, "
                                      "transitions and building changes")
    c.add_argument("run_a", help="output directory of `geoseg run` for the earlier date, or "
                                  "the earlier image (then both dates are run here first)")
    c.add_argument("run_b", help="output directory of `geoseg run` for the later date, or "
                                  "the later image")
    c.add_argument("--out", "-o", required=True, help="output directory")
    c.add_argument("--grid", choices=["a", "b"], default="a",
                   help="compare on A's grid (default) or B's; the other run is aligned to it")
    c.add_argument("--min-confidence", type=float, default=0.5,
                   help="pixels below this confidence on either date are unknown (default 0.5)")
    c.add_argument("--min-change-width", type=int, default=3, metavar="PX",
                   help="a changed pixel must lie in a PX×PX square of changed pixels; thinner "
                        "differences (a class boundary drawn a pixel or two apart) are no "
                        "change (default 3; 1 keeps every differing pixel)")
    c.add_argument("--min-change-confidence", type=float, default=MIN_CHANGE_CONFIDENCE,
                   metavar="C",
                   help="a pixel whose classes differ is a change only when both dates' "
                        "confidence is at least C, else 'uncertain' (default "
                        f"{MIN_CHANGE_CONFIDENCE}, chosen on a validation scene, see README; 0 "
                        "makes every difference a change)")
    c.add_argument("--min-spectral-change", type=float, default=MIN_SPECTRAL_CHANGE,
                   metavar="S",
                   help="a pixel whose classes differ is a change only where the images differ "
                        "by at least S standard deviations (RMS over bands of the standardised "
                        "difference, 3x3 mean), else 'no_image_change': one date's "
                        "misclassification of an unchanged ground (default "
                        f"{MIN_SPECTRAL_CHANGE}, chosen on a validation scene, see README; 0 "
                        "turns the check off)")
    c.add_argument("--images", nargs=2, metavar=("BEFORE", "AFTER"),
                   help="the images of the two runs for that check, each as `geoseg run` takes "
                        "it (a raster, URL, quoted glob, .txt list or STAC document; read with "
                        "--bands etc. when given, else as each run read its images) (default: "
                        "the images the runs recorded; when those cannot be opened the check "
                        "is skipped with a warning)")
    c.add_argument("--iou-modified", type=float, default=0.8,
                   help="matched buildings with a lower IoU are modified (default 0.8)")
    c.add_argument("--area-tolerance", type=float, default=0.1,
                   help="matched buildings whose area changed more are modified (default 0.1)")
    e = c.add_argument_group(
        "building change evidence: a geometric change counts only when the footprints' "
        "confidence and the pixels (land-cover change mask, each date's building pixels) back "
        "it, else it is 'uncertain' (defaults chosen on a validation scene: "
        "geoseg/change/defaults.py)")
    e.add_argument("--building-min-confidence", type=float, default=BUILDING_MIN_CONFIDENCE,
                   metavar="C", help="a new or demolished footprint needs confidence >= C "
                   f"(default {BUILDING_MIN_CONFIDENCE}; 0 turns the check off)")
    e.add_argument("--building-max-other-cover", type=float, default=BUILDING_MAX_OTHER_COVER,
                   metavar="F", help="... and the other date's building pixels covering at most "
                   f"F of it (default {BUILDING_MAX_OTHER_COVER}; 1: off)")
    e.add_argument("--building-min-changed", type=float, default=BUILDING_MIN_CHANGED,
                   metavar="F", help="... and changed land-cover pixels covering at least F of it "
                   f"(default {BUILDING_MIN_CHANGED}: off)")
    e.add_argument("--building-break-changed", type=float, default=BUILDING_BREAK_CHANGED,
                   metavar="F", help="matched footprints whose shared area is changed for at "
                   "least F of its pixels are not one building: demolished + new (default "
                   f"{BUILDING_BREAK_CHANGED}; above 1: never)")
    e.add_argument("--modified-min-changed", type=float, default=MODIFIED_MIN_CHANGED,
                   metavar="F", help="a modified building needs changed pixels on at least F of "
                   "the area where its footprints differ (default "
                   f"{MODIFIED_MIN_CHANGED}; 0: off)")
    e.add_argument("--building-part-changed", type=float, default=BUILDING_PART_CHANGED,
                   metavar="F", help="a part a footprint lost (gained) whose pixels changed for "
                   "at least F of it is a demolished building (an extension: modified) "
                   f"(default {BUILDING_PART_CHANGED}; above 1: never)")
    c.add_argument("--overwrite", action="store_true", help="replace existing change outputs")
    c.add_argument("--scene", help="a `geoseg sample` scene directory: score the change against "
                                   "its truth (changed-pixel and building-change P/R/F1)")
    r = c.add_argument_group("when run_a and run_b are images: how to run both dates")
    r.add_argument("--model", "-m", action="append", dest="models",
                   help="model bundle dir or built-in name (repeatable; default: landcover and "
                        "buildings)")
    r.add_argument("--config", help="job YAML (configs/); flags override it")
    r.add_argument("--bbox", help="region minx,miny,maxx,maxy (needs --bbox-crs)")
    r.add_argument("--bbox-crs", "--region-crs", dest="region_crs", help="CRS of --bbox")
    r.add_argument("--region", help="region as a vector file (GeoJSON, GeoPackage, ...)")
    r.add_argument("--chunk-size", type=int,
                   help="output chunk of each date's run, px (default 1024)")
    add_width_args(r)
    r.add_argument("--device", choices=["auto", "cpu", "cuda"],
                   help="where models run (default auto: CUDA when available)")
    add_source_args(c.add_argument_group(
        "when the images are several files, globs or STAC documents (and for --images)"))
    c.add_argument("--address", help="Ray cluster address: runs both dates (for images) and the "
                                      "land-cover change pass there (default: RAY_ADDRESS; "
                                      "else everything runs in this process's threads)")
    c.set_defaults(fn=cmd_change)
