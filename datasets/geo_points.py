"""Points on the globe with a label or a value: CSV / GeoJSON readers and the bundled land/ocean set.

`load_points` reads

* **CSV** (or any delimited text): the delimiter is detected (``,`` ``;`` tab ``|``), the text is
  read as UTF-8 and, failing that, as Latin-1. Columns are named by the caller; the defaults
  ``lon`` / ``lat`` also match ``lng``, ``long``, ``longitude`` / ``latitude`` in any case.
* **GeoJSON**: a FeatureCollection of ``Point`` features; coordinates come from the geometry
  (``[lon, lat]``), the target from ``properties``.

Validation, each failure an `InputError` that names the row and the column:

* a missing column lists the columns the file has;
* a coordinate that is empty or not a number;
* a latitude outside [-90, 90], a longitude outside [-180, 360] (longitudes above 180 are wrapped
  to ``lon - 360``, so 0..360 data works);
* regression: a target that is not a number.

Rows whose **target** is empty (or ``NA``, ``NaN``, ``null``, ``none``, ``-``) are skipped, not
fatal: that is how tables mark unknown values (the volcano list has 13 such elevations). The
number skipped is kept in ``GeoPoints.n_skipped`` and reported by the app.

Row numbers in messages are the 1-based data row (the header is not counted) and the line of
the file, e.g. ``row 7 (line 8)``.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fieldstudio.errors import InputError

LON_ALIASES = ("lon", "lng", "long", "longitude")
LAT_ALIASES = ("lat", "latitude")
MISSING = {"", "na", "n/a", "nan", "null", "none", "-"}

#: points in the bundled land/ocean set (the paper's landocean size)
DEFAULT_N_POINTS = 5000


@dataclass
class GeoPoints:
    """Locations in degrees and their targets, as read from a file (or generated)."""

    lonlat: np.ndarray  # [N, 2] float64, lon in [-180, 180], lat in [-90, 90]
    target: list[Any] | np.ndarray | None  # raw target values (strings / numbers), N of them
    target_name: str | None
    source: str
    n_skipped: int = 0  # rows dropped because their target was empty
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.lonlat.shape[0])


# --- helpers -----------------------------------------------------------------------------------

def _where(row: int, line: int | None, source: str) -> str:
    return f"{source}: row {row}" + (f" (line {line})" if line is not None else "")


def _parse_float(text: Any) -> float | None:
    if isinstance(text, bool):
        return None
    if isinstance(text, (int, float)):
        return float(text)
    try:
        return float(str(text).strip())
    except (TypeError, ValueError):
        return None


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and value.strip().lower() in MISSING


def _coordinate(value: Any, col: str, kind: str, where: str) -> float:
    if _is_missing(value):
        raise InputError(f"{where}: {kind} column '{col}' is empty", "fill in the coordinate or delete the row")
    v = _parse_float(value)
    if v is None or not math.isfinite(v):
        raise InputError(f"{where}: {kind} column '{col}' is {str(value)!r}, not a number",
                         "coordinates must be decimal degrees, e.g. 52.37")
    if kind == "latitude" and not -90.0 <= v <= 90.0:
        hint = " (are longitude and latitude swapped?)" if -180.0 <= v <= 180.0 else ""
        raise InputError(f"{where}: latitude '{col}' = {v:g} is outside [-90, 90]{hint}",
                         "fix the value, or pass the right columns with --lat / --lon")
    if kind == "longitude":
        if not -180.0 <= v <= 360.0:
            raise InputError(f"{where}: longitude '{col}' = {v:g} is outside [-180, 360]",
                             "fix the value, or pass the right columns with --lon / --lat")
        if v > 180.0:
            v -= 360.0
    return v


def _find_column(names: list[str], wanted: str, aliases: tuple[str, ...], flag: str, source: str) -> str:
    if wanted in names:
        return wanted
    lowered = {n.strip().lower(): n for n in names}
    for cand in (wanted, *(aliases if wanted.lower() in aliases else ())):
        if cand.strip().lower() in lowered:
            return lowered[cand.strip().lower()]
    shown = ", ".join(repr(n) for n in names) or "(none)"
    raise InputError(f"{source}: no column '{wanted}'; the columns are {shown}", f"name the right one with {flag}")


def _decode(raw: bytes) -> str:
    for enc in ("utf-8-sig", "latin-1"):
        try:
            return raw.decode(enc)
        except UnicodeDecodeError:
            continue
    return raw.decode("latin-1", errors="replace")  # pragma: no cover - latin-1 decodes any bytes


def _sniff_delimiter(text: str) -> str:
    sample = "\n".join(text.splitlines()[:20])
    try:
        return csv.Sniffer().sniff(sample, delimiters=",;\t|").delimiter
    except csv.Error:
        return ","


# --- readers -----------------------------------------------------------------------------------

def _read_csv(path: Path, lon: str, lat: str, target: str | None, numeric_target: bool | None) -> GeoPoints:
    text = _decode(path.read_bytes())
    delim = _sniff_delimiter(text)
    reader = csv.reader(io.StringIO(text), delimiter=delim)
    try:
        header = next(reader)
    except StopIteration:
        raise InputError(f"{path} is empty", "give a CSV file with a header row and one point per row") from None
    header = [h.strip() for h in header]
    src = path.name
    lon_col = _find_column(header, lon, LON_ALIASES, "--lon", src)
    lat_col = _find_column(header, lat, LAT_ALIASES, "--lat", src)
    if target is None:
        rest = [h for h in header if h not in (lon_col, lat_col) and h]
        if len(rest) != 1:
            shown = ", ".join(repr(n) for n in rest) or "(none)"
            raise InputError(f"{src}: which column is the target? the other columns are {shown}",
                             "name it with --target COLUMN")
        target = rest[0]
    tgt_col = _find_column(header, target, (), "--target", src)
    i_lon, i_lat, i_tgt = header.index(lon_col), header.index(lat_col), header.index(tgt_col)
    need = max(i_lon, i_lat, i_tgt)
    coords: list[tuple[float, float]] = []
    values: list[Any] = []
    skipped = 0
    row = 0
    for rec in reader:
        if not rec or all(not c.strip() for c in rec):
            continue  # blank line
        row += 1
        where = _where(row, reader.line_num, src)
        if len(rec) <= need:
            raise InputError(f"{where} has {len(rec)} fields, the header has {len(header)}",
                             f"check the row (the file is read with delimiter {delim!r})")
        x = _coordinate(rec[i_lon], lon_col, "longitude", where)
        y = _coordinate(rec[i_lat], lat_col, "latitude", where)
        t = rec[i_tgt].strip()
        if _is_missing(t):
            skipped += 1
            continue
        if numeric_target:
            v = _parse_float(t)
            if v is None or not math.isfinite(v):
                raise InputError(f"{where}: target '{tgt_col}' is {t!r}, not a number",
                                 "fix the value, or use --task classify for a categorical target")
        coords.append((x, y))
        values.append(t)
    if not coords:
        raise InputError(f"{src} has no usable rows ({skipped} with an empty target)", "check the file and --target")
    return GeoPoints(np.asarray(coords, dtype=np.float64), values, tgt_col, str(path.resolve()), skipped,
                     {"format": "csv", "delimiter": delim, "lon": lon_col, "lat": lat_col})


def _read_geojson(path: Path, target: str | None, numeric_target: bool | None) -> GeoPoints:
    src = path.name
    try:
        doc = json.loads(_decode(path.read_bytes()))
    except json.JSONDecodeError as exc:
        raise InputError(f"{src} is not valid JSON ({exc.msg} at line {exc.lineno})", "fix the file") from exc
    if isinstance(doc, dict) and doc.get("type") == "Feature":
        feats = [doc]
    elif isinstance(doc, dict) and isinstance(doc.get("features"), list):
        feats = doc["features"]
    else:
        raise InputError(f"{src} is not a GeoJSON FeatureCollection", "give a FeatureCollection of Point features")
    if not feats:
        raise InputError(f"{src} has no features", "give a FeatureCollection of Point features")
    props0 = feats[0].get("properties") or {}
    if target is None:
        if len(props0) != 1:
            shown = ", ".join(repr(n) for n in props0) or "(none)"
            raise InputError(f"{src}: which property is the target? the properties are {shown}",
                             "name it with --target PROPERTY")
        target = next(iter(props0))
    coords: list[tuple[float, float]] = []
    values: list[Any] = []
    skipped = 0
    for i, feat in enumerate(feats, start=1):
        where = f"{src}: feature {i}"
        geom = (feat or {}).get("geometry") or {}
        if geom.get("type") != "Point" or not isinstance(geom.get("coordinates"), list) or len(geom["coordinates"]) < 2:
            raise InputError(f"{where} is not a Point (geometry type {geom.get('type')!r})",
                             "only Point features can be fitted; convert polygons to points first")
        props = feat.get("properties") or {}
        if target not in props:
            shown = ", ".join(repr(n) for n in props) or "(none)"
            raise InputError(f"{where} has no property '{target}'; its properties are {shown}",
                             "name the right one with --target")
        x = _coordinate(geom["coordinates"][0], "coordinates[0]", "longitude", where)
        y = _coordinate(geom["coordinates"][1], "coordinates[1]", "latitude", where)
        t = props[target]
        if _is_missing(t):
            skipped += 1
            continue
        if numeric_target and (_parse_float(t) is None or not math.isfinite(_parse_float(t))):
            raise InputError(f"{where}: target '{target}' is {t!r}, not a number",
                             "fix the value, or use --task classify for a categorical target")
        coords.append((x, y))
        values.append(t)
    if not coords:
        raise InputError(f"{src} has no usable features ({skipped} with an empty target)", "check the file and --target")
    return GeoPoints(np.asarray(coords, dtype=np.float64), values, target, str(path.resolve()), skipped,
                     {"format": "geojson"})


def load_points(path: str | Path, lon: str = "lon", lat: str = "lat", target: str | None = None,
                task: str | None = None) -> GeoPoints:
    """Read points and their target from a CSV or GeoJSON file (see the module docstring).

    ``task="regress"`` requires numeric targets (and names the first row that is not); with
    ``task=None`` or ``"classify"`` the targets are kept as read, for `encode_targets`.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"data file not found: {path}", "check the path (CSV or GeoJSON of points)")
    if path.is_dir():
        raise InputError(f"{path} is a folder", "pass a CSV or GeoJSON file")
    numeric = True if task == "regress" else None
    if path.suffix.lower() in (".geojson", ".json"):
        return _read_geojson(path, target, numeric)
    return _read_csv(path, lon, lat, target, numeric)


# --- targets -----------------------------------------------------------------------------------

def _as_bool(v: Any) -> bool | None:
    """True / False for JSON booleans and the words "true" / "false" (any case), else None."""
    if isinstance(v, bool):
        return v
    s = str(v).strip().lower()
    return True if s == "true" else False if s == "false" else None


def infer_task(values: list[Any]) -> str:
    """``classify`` unless every value is a number and they are not just 0 / 1."""
    nums = [_parse_float(v) for v in values]
    if any(n is None for n in nums) or any(isinstance(v, bool) for v in values):
        return "classify"
    return "classify" if set(nums) <= {0.0, 1.0} else "regress"


def encode_targets(values: list[Any], task: str, classes: list[str] | None = None
                   ) -> tuple[np.ndarray, list[str] | None]:
    """Targets as arrays: regress -> float64 values; classify -> int64 class indices and the class names.

    Class names are sorted (numbers numerically, ``false`` before ``true``), so the positive class
    of a binary problem is ``1`` / ``true`` / the later name. ``classes`` fixes the list (resume).
    """
    if task == "regress":
        return np.asarray([float(_parse_float(v)) for v in values], dtype=np.float64), None
    keys = [_canonical_label(v) for v in values]
    if classes is None:
        uniq = sorted(set(keys), key=_label_sort_key)
        classes = uniq
    index = {c: i for i, c in enumerate(classes)}
    unknown = [k for k in keys if k not in index]
    if unknown:
        raise InputError(f"label {unknown[0]!r} is not one of the run's classes {classes}", "use the run's data")
    return np.asarray([index[k] for k in keys], dtype=np.int64), list(classes)


def _canonical_label(v: Any) -> str:
    b = _as_bool(v)
    if b is not None:
        return "true" if b else "false"
    n = _parse_float(v)
    if n is not None and math.isfinite(n) and n.is_integer():
        return str(int(n))
    return str(v).strip()


def _label_sort_key(s: str):
    n = _parse_float(s)
    if s in ("false", "true"):
        return (0, 0.0 if s == "false" else 1.0, s)
    return (0, n, s) if n is not None else (1, 0.0, s)


# --- the bundled default: land / ocean ---------------------------------------------------------

def uniform_sphere(n: int, seed: int = 0) -> np.ndarray:
    """``n`` points uniform on the sphere as ``[n, 2]`` (lon, lat) degrees (lat = asin(U(-1, 1)))."""
    rng = np.random.default_rng(seed)
    lon = rng.uniform(-180.0, 180.0, n)
    lat = np.degrees(np.arcsin(rng.uniform(-1.0, 1.0, n)))
    return np.stack([lon, lat], axis=1)


def landocean_points(n: int = DEFAULT_N_POINTS, seed: int = 0) -> GeoPoints:
    """``n`` points uniform on the sphere (fixed ``seed``) labelled land / ocean, offline.

    The labels come from the ``global-land-mask`` package, which ships a 1 km global mask (from
    NOAA's GLOBE data set) inside its wheel, so this needs no download. It differs from the
    paper's labels (Natural Earth 1:110m polygons) only along coastlines.
    """
    try:
        from global_land_mask import globe
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise InputError("the default land/ocean data needs the global-land-mask package",
                         "pip install global-land-mask, or pass a data file") from exc
    lonlat = uniform_sphere(n, seed)
    land = globe.is_land(lonlat[:, 1].copy(), lonlat[:, 0].copy())
    values = ["true" if v else "false" for v in land]
    return GeoPoints(lonlat, values, "land", f"global-land-mask:uniform(n={n},seed={seed})", 0,
                     {"format": "generated", "n": n, "seed": seed})
