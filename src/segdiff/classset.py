"""The classes of a multi-class task (ClassSet): parsed from a classes.json or a run's config, and the mapping
between mask values or colours and class indices. Pure (json and numpy): the ground floor, so that the
config can check its classes without importing the data package, which reads the mask files
(segdiff/data/classes.py).

classes.json (docs/data.md):

    {"classes": [{"name": "background", "value": 0, "color": [0, 0, 0]},
                 {"name": "tumour", "value": 1, "color": [255, 0, 0]}, ...],
     "ignore": 255}                      # or {"value": 255}, {"color": [255, 255, 255]}, [r, g, b]

or just the list of classes. Each class has a "value" (the integer in label masks: 8/16-bit PNG or TIFF,
palette PNGs by palette index), a "color" (RGB colour-coded masks), or both; the colour is also what
predict uses for the class in its colour PNG. The order of the list is the label order.

The background class (left out of the `_fg` means of `segdiff evaluate`, docs/metrics.md) is the class
marked `"background": true`. Where no class carries the key (older files), a class named "background"
(any case) is the background; otherwise there is none, and there are no `_fg` means: the first class is
not assumed to be background (street scenes often start with "sky").

In memory a label map is uint8 [H, W]: the class index 0..K-1, or IGNORE_INDEX for ignored pixels.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import DataError

IGNORE_INDEX = 255
MAX_CLASSES = 254

# Display colours of classes without one (matplotlib's tab10, black first for the background)
_PALETTE = [
    (0, 0, 0),
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
]


def default_color(i: int) -> tuple[int, int, int]:
    if i < len(_PALETTE):
        return _PALETTE[i]
    rs = np.random.default_rng(i)  # deterministic, distinct enough for display
    return tuple(int(v) for v in rs.integers(0, 256, 3))


def _rgb_key(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(np.int64)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


@dataclass(frozen=True)
class ClassSet:
    names: tuple[str, ...]
    values: tuple[int | None, ...]  # mask value of each class, None where only a colour is given
    colors: tuple[tuple[int, int, int], ...]
    ignore_value: int | None = None
    ignore_color: tuple[int, int, int] | None = None
    colors_given: bool = False  # every class has a colour from classes.json (RGB masks can be read)
    background: int | None = None  # index of the background class (module docstring), None: no background

    @property
    def K(self) -> int:
        return len(self.names)

    @property
    def background_name(self) -> str | None:
        return None if self.background is None else self.names[self.background]

    @property
    def by_value(self) -> bool:
        return all(v is not None for v in self.values)

    # -- config ------------------------------------------------------------------------------------
    def to_config(self) -> dict:
        """The DataConfig fields (classes, ignore_value, ignore_color). The background is marked on its class;
        a class named "background" that is not the background says so (the rule for unmarked lists)."""

        def entry(i: int) -> dict:
            d = {"name": self.names[i], "value": self.values[i], "color": list(self.colors[i])}
            if i == self.background or _named_background(self.names[i]):
                d["background"] = i == self.background
            return d

        return {
            "classes": tuple(entry(i) for i in range(self.K)),
            "ignore_value": self.ignore_value,
            "ignore_color": None if self.ignore_color is None else tuple(self.ignore_color),
        }

    def to_json(self) -> dict:
        ignore = None
        if self.ignore_value is not None or self.ignore_color is not None:
            ignore = {
                "value": self.ignore_value,
                "color": None if self.ignore_color is None else list(self.ignore_color),
            }
        return {"classes": [dict(c) for c in self.to_config()["classes"]], "ignore": ignore}

    @classmethod
    def from_json(cls, d, source: str) -> ClassSet:
        """The ClassSet of a classes.json's content (`to_json`'s form, e.g. a summary's "class_set"); errors
        name `source`."""
        return _parse(d, source)

    @classmethod
    def from_config(cls, data_cfg) -> ClassSet | None:
        if not data_cfg.classes:
            return None
        return _parse(
            {
                "classes": [dict(c) for c in data_cfg.classes],
                "ignore": {"value": data_cfg.ignore_value, "color": data_cfg.ignore_color},
            },
            "config data.classes",
        )

    # -- masks -> labels ---------------------------------------------------------------------------
    def labels(self, raw: np.ndarray, path: Path | str = "<array>") -> np.ndarray:
        """A raw mask ([H, W] values or [H, W, 3|4] colours) -> uint8 [H, W] class indices / IGNORE_INDEX.

        A value (or colour) that is neither a class nor the ignore label is a DataError naming the file.
        """
        if raw.ndim == 3:
            if raw.shape[-1] in (2, 4):
                raw = raw[..., :-1]  # alpha
            if raw.shape[-1] == 1 or (raw == raw[..., :1]).all():
                raw = raw[..., 0]
            elif raw.shape[-1] == 3:
                return self._labels_rgb(raw, path)
            else:
                raise DataError(f"{path}: a mask must be single-channel or RGB, got {raw.shape[-1]} channels")
        if not self.by_value:
            if self.colors_given and raw.ndim == 2:  # a grey mask of colour-coded classes: grey colours
                return self._labels_rgb(np.repeat(raw[..., None], 3, axis=-1), path)
            raise DataError(f"{path}: single-channel mask, but classes.json gives the classes by colour only")
        if not np.issubdtype(raw.dtype, np.integer) and raw.dtype != np.bool_:
            if not np.array_equal(raw, np.round(raw)):
                raise DataError(f"{path}: mask holds non-integer values; masks hold integer class values")
        raw = raw.astype(np.int64)
        return self._lookup(raw, np.asarray(self.values, np.int64), self.ignore_value, path, str)

    def _labels_rgb(self, rgb: np.ndarray, path) -> np.ndarray:
        if not self.colors_given:
            raise DataError(
                f"{path}: colour-coded mask (RGB with channels that differ); give each class its 'color' "
                "[r, g, b] in a classes.json in the data root (docs/data.md)"
            )
        ignore = None if self.ignore_color is None else int(_rgb_key(np.asarray(self.ignore_color)))
        keys = np.asarray([int(_rgb_key(np.asarray(c))) for c in self.colors], np.int64)

        def show(k: int) -> str:
            return f"colour [{k >> 16}, {(k >> 8) & 255}, {k & 255}]"

        return self._lookup(_rgb_key(rgb), keys, ignore, path, show)

    @staticmethod
    def _lookup(arr: np.ndarray, keys: np.ndarray, ignore, path, show) -> np.ndarray:
        order = np.argsort(keys)
        sorted_keys = keys[order]
        pos = np.clip(np.searchsorted(sorted_keys, arr), 0, len(keys) - 1)
        hit = sorted_keys[pos] == arr
        out = np.where(hit, order[pos], IGNORE_INDEX).astype(np.uint8)
        bad = ~hit if ignore is None else ~hit & (arr != ignore)
        if bad.any():
            v = int(arr[bad][0])
            known = ", ".join(show(int(k)) if show is not str else str(int(k)) for k in keys)
            ign = "" if ignore is None else f" nor the ignore label {show(int(ignore)) if show is not str else ignore}"
            what = show(v) if show is not str else f"value {v}"
            raise DataError(
                f"{path}: mask {what} at {int(bad.sum())} pixel(s) is neither a class ({known}){ign}; "
                "list it in classes.json (docs/data.md)"
            )
        return out

    # -- labels -> files ---------------------------------------------------------------------------
    def mask_image(self, label: np.ndarray) -> np.ndarray:
        """Class indices [H, W] -> a mask in the data's own format: the classes' values (`value_image`), or
        their colours when the classes are given by colour only."""
        return self.value_image(label) if self.by_value else self.color_image(label)

    def value_image(self, label: np.ndarray) -> np.ndarray:
        """Class indices [H, W] -> the classes' mask values (their index where only a colour is given),
        uint8 when every value fits, else uint16."""
        vals = np.asarray([v if v is not None else i for i, v in enumerate(self.values)], np.int64)
        out = vals[np.clip(label, 0, self.K - 1)]
        return out.astype(np.uint8 if out.max(initial=0) < 256 else np.uint16)

    def color_image(self, label: np.ndarray) -> np.ndarray:
        """Class indices [H, W] -> RGB uint8 [H, W, 3] in the classes' colours (ignored pixels white)."""
        lut = np.asarray([*self.colors, *([(255, 255, 255)] * (256 - self.K))], np.uint8)
        return lut[np.asarray(label, np.int64).clip(0, 255)]


def _parse(d, source: str) -> ClassSet:
    if isinstance(d, list):
        d = {"classes": d}
    if not isinstance(d, dict) or not isinstance(d.get("classes"), list):
        raise DataError(f"{source}: expected a list of classes, or an object with a 'classes' list")
    unknown = set(d) - {"classes", "ignore"}
    if unknown:
        raise DataError(f"{source}: unknown key(s) {', '.join(sorted(unknown))}; expected 'classes' and 'ignore'")
    items = d["classes"]
    if not 2 <= len(items) <= MAX_CLASSES:
        raise DataError(f"{source}: needs between 2 and {MAX_CLASSES} classes, got {len(items)}")
    names, values, colors, given = [], [], [], True
    for i, c in enumerate(items):
        if not isinstance(c, dict):
            raise DataError(f"{source}: class {i} must be an object with 'name' and 'value' or 'color'")
        extra = set(c) - {"name", "value", "color", "background"}
        if extra:
            raise DataError(f"{source}: class {i}: unknown key(s) {', '.join(sorted(extra))}")
        v, col = c.get("value"), c.get("color")
        if v is None and col is None:
            raise DataError(f"{source}: class {i} ({c.get('name', '?')}) needs a 'value' or a 'color'")
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
            raise DataError(f"{source}: class {i}: 'value' must be a non-negative integer, got {v!r}")
        if col is not None:
            col = _color(col, f"{source}: class {i}")
        else:
            given = False
        if not isinstance(c.get("background", False), bool):
            raise DataError(f"{source}: class {i}: 'background' must be true or false, got {c['background']!r}")
        names.append(str(c.get("name", f"class {v if v is not None else i}")))
        values.append(v)
        colors.append(col if col is not None else default_color(i))
    if any(v is None for v in values) and not given:
        raise DataError(f"{source}: classes without a 'value' are read by colour: give every class a 'color'")
    for what, seq in (("value", [v for v in values if v is not None]), ("color", colors if given else [])):
        dup = {tuple(x) if isinstance(x, (list, tuple)) else x for x in seq if seq.count(x) > 1}
        if dup:
            raise DataError(f"{source}: two classes share the {what} {sorted(dup)[0]}")
    if len(set(names)) != len(names):
        raise DataError(f"{source}: two classes share a name")
    ig = d.get("ignore")
    ignore_value = ignore_color = None
    if isinstance(ig, dict):
        extra = set(ig) - {"value", "color"}
        if extra:
            raise DataError(f"{source}: ignore: unknown key(s) {', '.join(sorted(extra))}")
        ignore_value, ignore_color = ig.get("value"), ig.get("color")
    elif isinstance(ig, (list, tuple)):
        ignore_color = ig
    elif ig is not None:
        ignore_value = ig
    if ignore_value is not None:
        if isinstance(ignore_value, bool) or not isinstance(ignore_value, int) or ignore_value < 0:
            raise DataError(f"{source}: 'ignore' value must be a non-negative integer, got {ignore_value!r}")
        if ignore_value in values:
            raise DataError(f"{source}: the ignore value {ignore_value} is also a class's value")
    if ignore_color is not None:
        ignore_color = _color(ignore_color, f"{source}: ignore")
        if given and ignore_color in colors:
            raise DataError(f"{source}: the ignore colour {list(ignore_color)} is also a class's colour")
    background = _background(items, names, source)
    return ClassSet(tuple(names), tuple(values), tuple(colors), ignore_value, ignore_color, given, background)


def _named_background(name: str) -> bool:
    return name.strip().lower() == "background"


def _background(items: list[dict], names: list[str], source: str) -> int | None:
    """The background's index: the class marked "background": true; in a list where no class has the key,
    the class named "background"; else None."""
    if any("background" in c for c in items):
        marked = [i for i, c in enumerate(items) if c.get("background")]
        if len(marked) > 1:
            raise DataError(f'{source}: {len(marked)} classes are marked "background": true; mark at most one')
        return marked[0] if marked else None
    named = [i for i, n in enumerate(names) if _named_background(n)]
    return named[0] if named else None


def _color(c, where: str) -> tuple[int, int, int]:
    if (
        not isinstance(c, (list, tuple))
        or len(c) != 3
        or not all(isinstance(x, int) and not isinstance(x, bool) and 0 <= x <= 255 for x in c)
    ):
        raise DataError(f"{where}: 'color' must be [r, g, b] with integers 0..255, got {c!r}")
    return (int(c[0]), int(c[1]), int(c[2]))


def load_classes_json(path: Path) -> ClassSet:
    """The ClassSet of a classes.json file; a file that cannot be read or parsed is a DataError naming it."""
    path = Path(path)
    try:
        d = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read ({exc})") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from None
    return _parse(d, str(path))


def classes_from_values(values: list[int]) -> ClassSet:
    """Classes named "class <value>" for the mask values found by a scan (no classes.json), default colours."""
    return ClassSet(
        names=tuple(f"class {v}" for v in values),
        values=tuple(values),
        colors=tuple(default_color(i) for i in range(len(values))),
    )
