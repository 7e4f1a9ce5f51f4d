"""Oracle verifier: answers each principle from the pixels of an edited image and gives a 0-10 score.

The oracle knows the source scene and the edit spec (like a human verifier who saw the original), so
it knows where every shape was and where the edited one should be. It reads the edited image by
classifying each pixel to the nearest of the 10 palette colours (unknown if further than
``CLASS_DIST``), and by a blur-invariant "alpha" (projection of the pixel on the background->shape
colour line) for areas and centroids. Region masks come from signed distance fields of the scene
shapes, shrunk/grown by ``e`` (~1 px at 64 px) to ignore soft edges, so small-editor outputs (blurred
edges, slight colour shifts, noise, a pixel or two off) still pass when the edit is right.

Each principle gets a continuous measure in [0, 1] and a 0/1 check (measure >= check["min"]). The
holistic score is a continuous function of the measures (see ``holistic_score``).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import numpy as np
from PIL import Image

from .edits import EditSpec, apply_edit, move_offset, principles as make_principles, public_principles, target_shape
from .scene import (
    BACKGROUNDS, PALETTE, PALETTE_NAMES, SHAPE_COLORS, SHAPE_KINDS, SIZE_RANGE, Scene,
    pixel_grid, shape_sdf, ZONE_EDGES,
)

CLASS_DIST = 65.0          # max RGB distance to a palette colour for a confident label (palette gap >= 100)
# Score weights: the fraction of the score a fully failed principle of each category removes.
FOLLOW_COST, KEEP_COST, QUALITY_COST = 0.7, 0.5, 0.25
GATE = (0.1, 0.3)          # edit progress below 0.1 = "no edit" (score 0); full credit from 0.3
# Quality thresholds (the 0.5 points of the "clean"/"cast" measures): noise sigma and colour cast in
# RGB units, sharpness = 1-px step / 5-px step at edges (1 hard, ~0.4/sigma for a Gaussian blur).
NOISY_SIGMA, BLURRY_SHARPNESS, CAST_RGB = 10.0, 0.45, 15.0
RAMP = 0.15                # soft check = 0 at min - RAMP, 0.5 at min, 1 at min + RAMP (capped at 1.0)
ORACLE_RECORD_VERSION = 1


@dataclass
class OracleResult:
    """``checks[i]`` in {0, 1} and ``measures[i]`` in [0, 1] per principle, ``score`` in [0, 10],
    ``detail`` a JSON-able dict (gate, factors, image statistics, what the oracle saw)."""

    checks: list[int]
    measures: list[float]
    score: float
    detail: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def to_rgb_array(image, size: int) -> np.ndarray:
    """Any RGB(A)/gray image as float32 (size, size, 3) in [0, 255].

    Accepts a PIL image, uint8 arrays (H, W), (H, W, 3) or (H, W, 4), or float arrays in [0, 1];
    other sizes are resized (bilinear, antialiased) to the scene size."""
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    a = np.asarray(image)
    if a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, axis=2)
    if a.ndim != 3 or a.shape[2] not in (3, 4):
        raise ValueError(f"edited must be an (H, W), (H, W, 3) or (H, W, 4) image, got shape {a.shape}")
    a = a[:, :, :3]
    if a.dtype == np.uint8:
        pass
    elif np.issubdtype(a.dtype, np.floating):
        if a.size and (np.nanmin(a) < -1e-3 or np.nanmax(a) > 1 + 1e-3):
            raise ValueError("edited: float images must be in [0, 1]")
        a = np.clip(np.nan_to_num(a) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    else:
        raise ValueError(f"edited must be uint8 or float in [0, 1], got dtype {a.dtype}")
    if a.shape[:2] != (size, size):
        a = np.asarray(Image.fromarray(np.ascontiguousarray(a)).resize((size, size), Image.BILINEAR))
    return a.astype(np.float32)


_PAL_SQ = (PALETTE ** 2).sum(-1)


def _classify(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest palette index (int, (n, n)) and its RGB distance (float32, (n, n)) per pixel of a
    float (n, n, 3) image."""
    chw = np.ascontiguousarray(img.reshape(-1, 3).T)                            # (3, N): fast reductions
    d2 = _PAL_SQ[:, None] - 2.0 * (PALETTE @ chw)                               # (10, N) minus |p|^2
    lab = d2.argmin(0)
    d1 = np.sqrt(np.maximum(d2.min(0) + (chw * chw).sum(0), 0.0))
    return lab.reshape(img.shape[:2]), d1.reshape(img.shape[:2])


def _labels(scene: Scene, sdfs: dict) -> np.ndarray:
    """PALETTE index map of the clean render of ``scene``, from precomputed shape SDFs."""
    lab = np.full((scene.size, scene.size), PALETTE_NAMES.index(scene.background), np.int64)
    for s in scene.shapes:
        lab[sdfs[s.kind] <= 0] = PALETTE_NAMES.index(s.color)
    return lab


def _box3(img: np.ndarray) -> np.ndarray:
    """3x3 box mean with edge replication, same shape as ``img``."""
    p = np.pad(img, ((1, 1), (1, 1), (0, 0)), mode="edge")
    h = p[:, :-2] + p[:, 1:-1] + p[:, 2:]
    return (h[:-2] + h[1:-1] + h[2:]) / 9.0


def _dilate(mask: np.ndarray, r: int) -> np.ndarray:
    """Binary dilation by a (2r+1)^2 square, separable."""
    if r <= 0:
        return mask
    out = mask.copy()
    for _ in range(r):
        out[1:] |= out[:-1].copy()
        out[:-1] |= out[1:].copy()
    for _ in range(r):
        out[:, 1:] |= out[:, :-1].copy()
        out[:, :-1] |= out[:, 1:].copy()
    return out


def _frac(mask: np.ndarray, cond: np.ndarray, empty: float = 1.0, known: np.ndarray | None = None) -> float:
    """Fraction of ``mask`` pixels where ``cond`` holds (``empty`` if the mask is empty). With
    ``known`` (pixels confidently classified), unclassifiable pixels (noise, soft edges) are left
    out of the denominator as long as they are under half of the region."""
    n = int(mask.sum())
    if not n:
        return empty
    if known is not None:
        n = max(int((known & mask).sum()), 0.5 * n)
    return float(min((cond & mask).sum() / n, 1.0))


def _ramp(x: float, lo: float, hi: float) -> float:
    return float(np.clip((x - lo) / (hi - lo), 0.0, 1.0))


class _Frame:
    """Per-call working state: the edited image, its classification and the scene geometry."""

    def __init__(self, source: Scene, edit: EditSpec, img: np.ndarray):
        self.S, self.edit = source, edit
        self.T = apply_edit(source, edit, check=False)
        n = self.n = source.size
        self.e = max(1.0, n / 64.0)
        self.ei = int(round(self.e))
        self.img = img
        self.xx, self.yy = pixel_grid(n)
        self.lab, self.d1 = _classify(img)
        self.labc = np.where(self.d1 <= CLASS_DIST, self.lab, -1)             # confident labels
        sm = self.smooth = _box3(img)
        lab_s, d_s = _classify(sm)
        self.labs = np.where(d_s <= CLASS_DIST, lab_s, -1)                     # labels of the 3x3-smoothed image
        self.is_fg = (self.labc >= 0) & (self.labc < len(SHAPE_COLORS))        # confidently a shape colour
        self.bg = PALETTE_NAMES.index(source.background)
        self.sdf_S = {s.kind: shape_sdf(s, self.xx, self.yy) for s in source.shapes}
        self.sdf_T = {s.kind: shape_sdf(s, self.xx, self.yy) for s in self.T.shapes}
        self.lab_S, self.lab_T = _labels(source, self.sdf_S), _labels(self.T, self.sdf_T)
        near = np.zeros((n, n), bool)
        for sd in (*self.sdf_S.values(), *self.sdf_T.values()):
            near |= np.abs(sd) <= 1.5 * self.e
        self.near_edge = near
        # The background colour actually seen (median over pixels that stay background), so that a
        # changed background counts once, in the background check, and not in every shape measure.
        bgr = (self.lab_S == self.bg) & (self.lab_T == self.bg) & ~near
        sub = bgr[::2, ::2]                                                    # every 4th pixel is plenty
        self.bg_rgb = np.median(img[::2, ::2][sub], axis=0) if sub.sum() >= 8 else PALETTE[self.bg]
        # "background" = the background colour seen elsewhere (a hole painted another colour is a trace)
        self.is_bg = ~self.is_fg & (np.linalg.norm(img - self.bg_rgb, axis=-1) <= CLASS_DIST)
        self.known = self.is_fg | self.is_bg | (self.labc >= 0)
        self.kind = target_shape(source, edit).kind
        self._cache: dict = {}

    # -- regions -------------------------------------------------------------------------------
    def region(self, sdf: np.ndarray, grow: float) -> np.ndarray:
        """sdf <= grow, falling back to the unshrunk shape (then its nearest pixel) when tiny."""
        m = sdf <= grow
        if m.sum() < 4:
            m = sdf <= max(grow, 0.0)
        if not m.any():
            m = sdf <= sdf.min()
        return m

    def others_excl(self) -> np.ndarray:
        """Pixels near any shape other than the edited one (source or target), grown by 2e."""
        m = np.zeros((self.n, self.n), bool)
        for k, sd in (*self.sdf_S.items(), *self.sdf_T.items()):
            if k != self.kind:
                m |= sd <= 2 * self.e
        return m

    def alpha(self, color: str, smooth: bool = False) -> np.ndarray:
        """Blur-invariant membership of each pixel in a shape of ``color`` on the seen background,
        float32 (n, n) in [0, 1]; 0 where the pixel is confidently another shape colour. With
        ``smooth`` it is read from the 3x3-smoothed image (less noise, same sums and centroids)."""
        key = ("alpha", color, smooth)
        if key not in self._cache:
            b = self.bg_rgb
            c = PALETTE[PALETTE_NAMES.index(color)]
            v = c - b
            a = (((self.smooth if smooth else self.img) - b) @ v) / float(v @ v)
            # antisymmetric around 0.5 so that a blurred straight edge keeps its alpha sum
            a = np.clip((a - 0.1) / 0.8, 0.0, 1.0)
            other = self.is_fg & (self.labc != PALETTE_NAMES.index(color))
            self._cache[key] = np.where(other, 0.0, a).astype(np.float32)
        return self._cache[key]

    def flex(self) -> dict:
        """Where the moved/resized shape actually is: alpha area, centroid and blob mask, measured
        in a search box around its old and new places (other shapes excluded)."""
        if "flex" in self._cache:
            return self._cache["flex"]
        s_old = self.S.shape(self.kind)
        s_new = self.T.shape(self.kind)
        m = 0.12 * self.n
        x0 = min(s_old.cx - s_old.size, s_new.cx - s_new.size) - m
        x1 = max(s_old.cx + s_old.size, s_new.cx + s_new.size) + m
        y0 = min(s_old.cy - s_old.size, s_new.cy - s_new.size) - m
        y1 = max(s_old.cy + s_old.size, s_new.cy + s_new.size) + m
        box = (self.xx >= x0) & (self.xx <= x1) & (self.yy >= y0) & (self.yy <= y1) & ~self.others_excl()
        a = np.where(box, self.alpha(s_old.color), 0.0)
        area = float(a.sum())
        if area > 0:
            cx, cy = float((a * self.xx).sum() / area), float((a * self.yy).sum() / area)
        else:
            cx, cy = s_old.cx, s_old.cy
        blob = a > 0.5
        out = {"area": area, "cx": cx, "cy": cy, "blob": _dilate(blob, 2 * self.ei),
               "area_src": float((self.sdf_S[self.kind] <= 0).sum()),
               "area_tgt": float((self.sdf_T[self.kind] <= 0).sum())}
        self._cache["flex"] = out
        return out

    def added(self) -> dict:
        """The new shape for ``add``: foreground pixels away from the source shapes, trimmed to the
        neighbourhood of their centroid. Presence and centroid come from the blur-invariant alpha of
        the blob's dominant colour; the kind is the nearest prototype of a blur-invariant moment
        descriptor (``_kind_descriptor``); the colour is read from the blob's core."""
        if "added" in self._cache:
            return self._cache["added"]
        new = self.T.shape(self.kind)
        bgc = self.bg_rgb
        dmin = min(float(np.linalg.norm(PALETTE[PALETTE_NAMES.index(c)] - bgc)) for c in SHAPE_COLORS)
        # raw AND smoothed contrast: drops isolated noise pixels without growing the blob by a pixel
        thr = 0.5 * dmin
        fg = (np.linalg.norm(self.img - bgc, axis=-1) > thr) & (np.linalg.norm(self.smooth - bgc, axis=-1) > thr)
        excl = np.zeros_like(fg)
        for sd in self.sdf_S.values():
            excl |= sd <= 2 * self.e
        blob = fg & ~excl
        window = ~excl
        for _ in range(2):  # trim stray pixels far from the main blob
            if blob.sum() == 0:
                break
            cx, cy = self.xx[blob].mean(), self.yy[blob].mean()
            window = ~excl & (np.hypot(self.xx - cx, self.yy - cy) <= 2.0 * new.size)
            blob &= window
        area_tgt = float((self.sdf_T[self.kind] <= 0).sum())
        res = {"area": 0.0, "area_tgt": area_tgt, "presence": 0.0, "blob": _dilate(blob, 2 * self.ei),
               "cx": None, "cy": None, "loc": 0.0, "kind_m": 0.0, "desc": None, "color_frac": 0.0,
               "color": None, "seen_kind": None}
        lab = self.labc[blob]
        lab = lab[(lab >= 0) & (lab < len(SHAPE_COLORS))]
        if blob.sum() >= 3 and lab.size:
            vals, cnt = np.unique(lab, return_counts=True)
            dom = PALETTE_NAMES[int(vals[cnt.argmax()])]
            # moments weight far pixels heavily, so read alpha only near the blob (blur tails included)
            a = np.where(window & _dilate(blob, 3 * self.ei), self.alpha(dom, smooth=True), 0.0)
            area = float(a.sum())
            res.update(area=area, color=dom, presence=min(1.0, area / (0.6 * area_tgt)))
            if area >= 3:
                cx, cy = float((a * self.xx).sum() / area), float((a * self.yy).sum() / area)
                desc = _kind_descriptor(a, self.xx - cx, self.yy - cy)
                dist = {k: float(np.hypot(*(desc - KIND_PROTOTYPES[k]))) for k in SHAPE_KINDS}
                best_other = min(v for k, v in dist.items() if k != self.kind)
                core = blob & ~_dilate(~blob, self.ei)
                if core.sum() < 3:
                    core = blob
                ci = PALETTE_NAMES.index(self.edit.params["shape"]["color"])
                res.update(cx=cx, cy=cy, desc=[round(float(v), 3) for v in desc],
                           kind_m=float(np.clip(0.5 + (best_other - dist[self.kind]), 0, 1)),
                           seen_kind=min(dist, key=dist.get),
                           loc=_location_measure(cx, cy, self.n, self.edit.params["location"]),
                           color_frac=_frac(core, self.labc == ci, 0.0, self.known))
        self._cache["added"] = res
        return res

    def flex_region(self) -> np.ndarray:
        """Where the edited shape may legitimately be (excluded from background/ring checks)."""
        if self.edit.type in ("move", "resize"):
            return self.flex()["blob"]
        if self.edit.type == "add":
            return self.added()["blob"]
        return np.zeros((self.n, self.n), bool)

    def ring_ok(self, sdf: np.ndarray) -> np.ndarray:
        """A band 1.5e..3.5e outside a shape that must show the background."""
        ring = (sdf > 1.5 * self.e) & (sdf <= 3.5 * self.e)
        return ring & (self.lab_S == self.bg) & (self.lab_T == self.bg) & ~self.near_edge & ~self.flex_region()


# Blur-invariant shape descriptor (see _kind_descriptor): normalised 3-fold moment magnitude
# (triangles) and 4-fold anisotropy (axis-aligned squares); circles have neither.
KIND_PROTOTYPES = {"circle": np.array([0.0, 0.0]), "square": np.array([0.0, 1.0]), "triangle": np.array([1.0, 0.0])}
_T3_SCALE, _K4_SCALE = 0.068, -0.0166   # values of a hard-edged triangle / square


def _kind_descriptor(a: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(t3, k4) of an alpha map ``a`` (n, n) with centred coordinates ``x, y``: the magnitude of the
    3rd-order circular harmonic of the central moments and mu40 + mu04 - 6 mu22, scale-normalised.
    Both are unchanged by convolution with an isotropic blur, so a blurred square stays a square.
    Circle ~ (0, 0), square ~ (0, 1), upward triangle ~ (1, 0)."""
    m00 = float(a.sum())
    x2, y2 = x * x, y * y
    mu30, mu03 = (a * x2 * x).sum(), (a * y2 * y).sum()
    mu21, mu12 = (a * x2 * y).sum(), (a * x * y2).sum()
    t3 = np.hypot(mu30 - 3 * mu12, 3 * mu21 - mu03) / m00 ** 2.5
    k4 = (a * (x2 * x2 + y2 * y2 - 6 * x2 * y2)).sum() / m00 ** 3
    return np.array([t3 / _T3_SCALE, k4 / _K4_SCALE])


def _location_measure(cx: float, cy: float, n: int, loc: str) -> float:
    """1 inside the named zone, falling to 0 at 0.1 of the side outside it (0.5 at 0.05)."""
    lo, hi = ZONE_EDGES
    hx = (0.0, lo) if "left" in loc else (hi, 1.0) if "right" in loc else (lo, hi) if loc == "centre" else (0.0, 1.0)
    vy = (0.0, lo) if "top" in loc else (hi, 1.0) if "bottom" in loc else (lo, hi) if loc == "centre" else (0.0, 1.0)
    fx, fy = cx / n, cy / n
    dx = max(hx[0] - fx, fx - hx[1], 0.0)
    dy = max(vy[0] - fy, fy - vy[1], 0.0)
    return float(np.clip(1 - max(dx, dy) / 0.1, 0, 1))


# ----------------------------------------------------------------------------------------------
# Measures, one per check op. Each returns a float in [0, 1]; higher = principle more satisfied.


def _m_color_frac(f: _Frame, ck: dict) -> float:
    r = f.region(f.sdf_T[ck["kind"]], -f.e)
    return _frac(r, f.labc == PALETTE_NAMES.index(ck["color"]), 0.0, f.known)


def _m_geometry(f: _Frame, ck: dict) -> float:
    sd = f.sdf_T[ck["kind"]]
    inside = _frac(f.region(sd, -f.e), f.is_fg, 0.0, f.known)
    ring = _frac(f.ring_ok(sd), f.is_bg, 1.0, f.known)
    return min(inside, ring)


def _m_removed(f: _Frame, ck: dict) -> float:
    return _frac(f.region(f.sdf_S[ck["kind"]], -f.e), f.is_bg, 0.0, f.known)


def _m_no_trace(f: _Frame, ck: dict) -> float:
    r = f.region(f.sdf_S[ck["kind"]], 0.0)
    return 1.0 - _frac(r, f.is_fg, 0.0)


def _m_moved(f: _Frame, ck: dict) -> float:
    fl = f.flex()
    s = f.S.shape(ck["kind"])
    dx, dy = move_offset(f.edit)
    d = float(np.hypot(dx, dy))
    along = ((fl["cx"] - s.cx) * dx + (fl["cy"] - s.cy) * dy) / d
    present = min(1.0, fl["area"] / (0.5 * fl["area_src"]))
    return float(np.clip(along / d, 0, 1)) * present


def _m_vacated(f: _Frame, ck: dict) -> float:
    k = ck["kind"]
    r = (f.sdf_S[k] <= -f.e) & (f.sdf_T[k] > 2 * f.e)
    if r.sum() < 4:
        r = (f.sdf_S[k] <= 0) & (f.sdf_T[k] > 0)
    return _frac(r, f.is_bg, 0.0, f.known)


def _m_appearance(f: _Frame, ck: dict) -> float:
    fl = f.flex()
    ratio = fl["area"] / max(fl["area_src"], 1.0)
    return float(np.clip(1 - abs(ratio - 1) / 0.6, 0, 1))


def _m_area_change(f: _Frame, ck: dict) -> float:
    fl = f.flex()
    den = fl["area_tgt"] - fl["area_src"]
    if abs(den) < 1:
        return 0.0
    return float(np.clip((fl["area"] - fl["area_src"]) / den, 0, 1))


def _m_color_place(f: _Frame, ck: dict) -> float:
    k = ck["kind"]
    s = f.S.shape(k)
    core = f.region(np.maximum(f.sdf_S[k], f.sdf_T[k]), -f.e)
    col = _frac(core, f.labc == PALETTE_NAMES.index(s.color), 0.0, f.known)
    fl = f.flex()
    shift = float(np.hypot(fl["cx"] - s.cx, fl["cy"] - s.cy))
    return min(col, float(np.clip(1 - shift / (0.15 * f.n), 0, 1)))


def _m_added(f: _Frame, ck: dict) -> float:
    a = f.added()
    return min(a["presence"], a["kind_m"], a["loc"])


def _m_added_color(f: _Frame, ck: dict) -> float:
    a = f.added()
    # no new shape of the asked kind -> "is the new square red?" is not satisfied either
    return a["color_frac"] * min(1.0, a["presence"] / 0.5) * min(1.0, a["kind_m"] / 0.5)


def _m_others(f: _Frame, ck: dict) -> float:
    vals = [1.0]
    for k in ck["kinds"]:
        s = f.S.shape(k)
        sd = f.sdf_S[k]
        vals.append(_frac(f.region(sd, -f.e), f.labc == PALETTE_NAMES.index(s.color), 0.0, f.known))
        vals.append(_frac(f.ring_ok(sd), f.is_bg, 1.0, f.known))
    return min(vals)


def _m_background(f: _Frame, ck: dict) -> float:
    r = (f.lab_S == f.bg) & (f.lab_T == f.bg) & ~f.near_edge & ~f.flex_region()
    if not r.any():
        return 1.0
    same = _frac(r, f.labc == f.bg, 1.0, f.known)
    # Spots of another colour are counted on the smoothed labels, so pixel noise is not a "change".
    changed = float(((f.labs >= 0) & (f.labs != f.bg) & r).sum())
    a_ref = np.pi * (SIZE_RANGE[0] * f.n) ** 2
    return float(min(same, np.clip(1 - changed / (0.5 * a_ref), 0, 1)))


def image_stats(f: _Frame) -> dict:
    """Noise sigma (robust MAD of horizontal same-label neighbour differences), edge sharpness
    (median ratio of the 1-px step to the 5-px step at edge centres, L1 over RGB; 1 = hard edge,
    ~0.4/sigma for a Gaussian blur of sigma px) and colour cast (largest per-colour mean offset from
    the palette over flat, slope-free pixels), in RGB units or [0, 1]."""
    img, lab = f.img, f.lab
    same = lab[::2, 1:] == lab[::2, :-1]                                # every other row is plenty
    dd = (img[::2, 1:] - img[::2, :-1])[same]
    sigma = float(1.4826 * np.median(np.abs(dd)) / np.sqrt(2)) if dd.size else 0.0

    ratios = []
    chw = np.ascontiguousarray(img.transpose(2, 0, 1))
    for im in (chw, chw.transpose(0, 2, 1)):
        d1 = np.abs(im[:, :, 1:] - im[:, :, :-1]).sum(0)             # step between x and x+1, (n, n-1)
        d5 = np.abs(im[:, :, 5:] - im[:, :, :-5]).sum(0)             # x-2 .. x+3 around step x, (n, n-5)
        c = d1[:, 2:-2]                                                # steps x = 2 .. n-4, aligned with d5
        # edge centres: the largest step within +-2 px, under a large 5-px step
        peak = (c > 0) & (d5 >= 90.0)
        for lo, hi in ((0, -4), (1, -3), (3, -1), (4, None)):
            peak &= c >= d1[:, lo:hi]
        ratios.append(c[peak] / d5[peak])
    rr = np.concatenate(ratios)
    sharp = float(np.clip(np.median(rr), 0, 1)) if rr.size >= 8 else 1.0

    # flat pixels: same label as the 4 neighbours, near a palette colour, and no slope in the
    # smoothed image (so the mixtures of a blurred edge do not read as a colour shift)
    core = lab[1:-1, 1:-1]
    sm = np.ascontiguousarray(f.smooth.transpose(2, 0, 1))
    slope = np.abs(sm[:, 1:-1, 2:] - sm[:, 1:-1, :-2]).sum(0) + np.abs(sm[:, 2:, 1:-1] - sm[:, :-2, 1:-1]).sum(0)
    flat = (f.d1[1:-1, 1:-1] < 80) & (slope < 30.0) & (core == lab[:-2, 1:-1]) & (core == lab[2:, 1:-1]) & \
           (core == lab[1:-1, :-2]) & (core == lab[1:-1, 2:])
    px, lb = chw[:, 1:-1, 1:-1][:, flat], core[flat]                  # (3, M), (M,)
    cast = 0.0
    if lb.size:
        cnt = np.bincount(lb, minlength=len(PALETTE))
        ok = cnt >= 24
        if ok.any():
            sums = np.stack([np.bincount(lb, weights=px[ch], minlength=len(PALETTE)) for ch in range(3)], -1)
            cast = float(np.linalg.norm(sums[ok] / cnt[ok, None] - PALETTE[ok], axis=-1).max())
    return {"noise_sigma": sigma, "sharpness": sharp, "cast": cast}


def _stats(f: _Frame) -> dict:
    if "stats" not in f._cache:
        f._cache["stats"] = image_stats(f)
    return f._cache["stats"]


def _m_clean(f: _Frame, ck: dict) -> float:
    st = _stats(f)
    return min(_ramp(NOISY_SIGMA + 4.0 - st["noise_sigma"], 0.0, 8.0),
               _ramp(st["sharpness"], BLURRY_SHARPNESS - 0.15, BLURRY_SHARPNESS + 0.15))


def _m_cast(f: _Frame, ck: dict) -> float:
    st = _stats(f)
    return _ramp(CAST_RGB + 10.0 - st["cast"], 0.0, 20.0)


MEASURES = {
    "color_frac": _m_color_frac, "geometry": _m_geometry, "removed": _m_removed, "no_trace": _m_no_trace,
    "moved": _m_moved, "vacated": _m_vacated, "appearance": _m_appearance, "area_change": _m_area_change,
    "color_place": _m_color_place, "added": _m_added, "added_color": _m_added_color, "others": _m_others,
    "background": _m_background, "clean": _m_clean, "cast": _m_cast,
}


def edit_progress(f: _Frame) -> float:
    """How much of the requested change happened at all, in [0, 1]: for add, the presence of a new
    shape; for resize, the fraction of the asked area change; otherwise the fraction of the pixels that the edit changes (away from edges) whose colour
    moved away from the source colour by over half the source-target distance."""
    if f.edit.type == "add":
        return f.added()["presence"]
    if f.edit.type == "resize":
        # the (blur-invariant) area change, signed: a thin annulus is too easy to "change" by jitter
        return _m_area_change(f, {})
    diff = f.lab_S != f.lab_T
    e_reg = diff & ~f.near_edge
    if e_reg.sum() < 4:
        e_reg = diff
    if not e_reg.any():
        return 1.0
    # background pixels compare with the background actually seen (a changed background is
    # judged by the background check, not mistaken for "no edit")
    cs = np.where((f.lab_S[e_reg] == f.bg)[:, None], f.bg_rgb, PALETTE[f.lab_S[e_reg]])
    ct = np.where((f.lab_T[e_reg] == f.bg)[:, None], f.bg_rgb, PALETTE[f.lab_T[e_reg]])
    half = 0.5 * np.linalg.norm(ct - cs, axis=-1)
    # changed in the raw image (no edge mixing) and in the smoothed one (no pixel noise)
    changed = (np.linalg.norm(f.img[e_reg] - cs, axis=-1) > half) & (np.linalg.norm(f.smooth[e_reg] - cs, axis=-1) > half)
    return float(changed.mean())


def soft_check(measure: float, threshold: float) -> float:
    """Continuous version of ``measure >= threshold``: 0 at threshold - RAMP, 0.5 at the threshold,
    1 at min(threshold + RAMP, 1)."""
    hi = min(threshold + RAMP, 1.0)
    if measure >= threshold:
        return 0.5 + 0.5 * _ramp(measure, threshold, hi) if hi > threshold else 1.0
    return 0.5 * _ramp(measure, threshold - RAMP, threshold)


def holistic_score(categories: list[str], measures: list[float], thresholds: list[float], progress: float) -> tuple[float, dict]:
    """Score in [0, 10]:  10 * gate * prod_follow(1 - 0.7 (1-s)) * prod_keep(1 - 0.5 (1-s))
    * prod_quality(1 - 0.25 (1-s)), s = soft_check(measure). The gate (0 when < 10% of the asked
    change happened, 1 from 30%) makes "no edit" score 0; one failed follow point caps the score
    at 3, one unintended change halves it, a quality problem takes a quarter."""
    cost = {"follow": FOLLOW_COST, "keep": KEEP_COST, "quality": QUALITY_COST}
    factors = {"follow": 1.0, "keep": 1.0, "quality": 1.0}
    for c, m, t in zip(categories, measures, thresholds):
        factors[c] *= 1.0 - cost[c] * (1.0 - soft_check(m, t))
    gate = _ramp(progress, GATE[0], GATE[1])
    score = 10.0 * gate * factors["follow"] * factors["keep"] * factors["quality"]
    return float(round(score, 2)), {"gate": gate, "progress": progress, "factors": factors}


def _change_phrase(f: _Frame, kind: str, dx: float, dy: float, ratio: float) -> str:
    """"square moved left", "square moved left a little" (< 70% of the asked distance), "square
    not moved"; "circle bigger", "circle a little bigger" (< 65% of the asked change), "circle same size"."""
    if f.edit.type == "move":
        mag = max(abs(dx), abs(dy))
        if mag < 0.05 * f.n:
            return f"{kind} not moved"
        word = ("left" if dx < 0 else "right") if abs(dx) >= abs(dy) else ("up" if dy < 0 else "down")
        little = " a little" if mag < 0.7 * float(f.edit.params["distance"]) else ""
        return f"{kind} moved {word}{little}"
    want = float(f.edit.params["factor"]) - 1.0
    if abs(ratio - 1.0) < 0.07:
        return f"{kind} same size"
    word = "bigger" if ratio > 1 else "smaller"
    little = "a little " if (ratio - 1.0) * np.sign(want) < 0.65 * abs(want) else ""
    return f"{kind} {little}{word}"


def _seen(f: _Frame) -> dict:
    """What the oracle sees: background name; per kind that was or should be there, its colour
    (None = absent), an optional second colour, position and size; image defects; and for
    move/resize a short change phrase ("square moved left", "circle bigger")."""
    r = (f.lab_S == f.bg) & ~f.near_edge & ~f.flex_region()
    bl = f.labc[r]
    bl = bl[bl >= 0]
    bg = PALETTE_NAMES[int(np.bincount(bl, minlength=len(PALETTE_NAMES)).argmax())] if bl.size else "unclear"
    bg = bg if bg in BACKGROUNDS else "unclear"
    shapes = []
    change = None
    for k in SHAPE_KINDS:
        if k not in f.sdf_S and k not in f.sdf_T:
            continue
        item = {"kind": k, "color": None, "color2": None, "cx": None, "cy": None, "size": None}
        if k == f.kind and f.edit.type == "add":
            a = f.added()
            if a["presence"] >= 0.5 and a["color"] in SHAPE_COLORS:
                item.update(kind=a["seen_kind"] or k, color=a["color"], cx=a["cx"], cy=a["cy"],
                            size=float(f.T.shape(k).size * np.sqrt(a["area"] / max(a["area_tgt"], 1.0))))
            shapes.append(item)
            continue
        if k == f.kind and f.edit.type in ("move", "resize"):
            fl = f.flex()
            s = f.S.shape(k)
            ratio = float(np.sqrt(fl["area"] / max(fl["area_src"], 1.0)))
            if fl["area"] >= 0.3 * min(fl["area_src"], fl["area_tgt"]):
                item.update(color=s.color, cx=fl["cx"], cy=fl["cy"], size=float(s.size * ratio))
                change = _change_phrase(f, k, fl["cx"] - s.cx, fl["cy"] - s.cy, ratio)
            else:
                change = f"{k} gone"
            shapes.append(item)
            continue
        sd = f.sdf_T[k] if k in f.sdf_T else f.sdf_S[k]
        lab = f.labc[f.region(sd, -f.e)]
        lab = lab[(lab >= 0) & (lab < len(SHAPE_COLORS))]
        n_reg = max(int((sd <= -f.e).sum()), 1)
        if lab.size:
            vals, cnt = np.unique(lab, return_counts=True)
            order = np.argsort(-cnt, kind="stable")
            if cnt[order[0]] / n_reg >= 0.3:
                item["color"] = PALETTE_NAMES[int(vals[order[0]])]
                if len(order) > 1 and cnt[order[1]] / n_reg >= 0.25:
                    item["color2"] = PALETTE_NAMES[int(vals[order[1]])]
        s = f.T.shape(k) or f.S.shape(k)
        item.update(cx=s.cx, cy=s.cy, size=s.size)
        if item["color"] is None:
            item.update(cx=None, cy=None, size=None)
        shapes.append(item)
    st = _stats(f)
    defects = [w for w, bad in (("noisy", st["noise_sigma"] > NOISY_SIGMA), ("blurry", st["sharpness"] < BLURRY_SHARPNESS),
                                ("colour cast", st["cast"] > CAST_RGB)) if bad]
    return {"background": bg, "shapes": shapes, "size": f.n, "defects": defects, "change": change}


def verify(source: Scene, edit: EditSpec, principles: list[dict], edited) -> OracleResult:
    """Answer every principle from the pixels of ``edited`` (uint8 (H, W, 3) or float [0, 1]; any
    size, resized to the scene size) for the edit ``edit`` of ``source``."""
    if not principles:
        raise ValueError("principles must be a non-empty list")
    f = _Frame(source, edit, to_rgb_array(edited, source.size))
    measures, checks, cats, mins = [], [], [], []
    for i, p in enumerate(principles):
        ck = p.get("check")
        if not isinstance(ck, dict) or ck.get("op") not in MEASURES:
            raise ValueError(f"principles[{i}] has no valid sandbox 'check' (got {ck!r}); the oracle needs one")
        if p.get("category") not in ("follow", "keep", "quality"):
            raise ValueError(f"principles[{i}].category must be follow/keep/quality, got {p.get('category')!r}")
        m = float(np.clip(MEASURES[ck["op"]](f, ck), 0.0, 1.0))
        measures.append(round(m, 4))
        checks.append(int(m >= ck["min"]))
        cats.append(p["category"])
        mins.append(float(ck["min"]))
    progress = edit_progress(f)
    score, parts = holistic_score(cats, measures, mins, progress)
    st = _stats(f)
    detail = {**{k: round(float(v), 4) if isinstance(v, float) else v for k, v in parts.items()},
              "factors": {k: round(v, 4) for k, v in parts["factors"].items()},
              "stats": {k: round(v, 3) for k, v in st.items()}, "seen": _seen(f)}
    return OracleResult(checks=checks, measures=measures, score=score, detail=detail)


def oracle_record(scene: Scene, edit: EditSpec, principles: list[dict]) -> str:
    """The JSON string a dataset stores so the oracle can re-verify any image later."""
    return json.dumps({"version": ORACLE_RECORD_VERSION, "scene": scene.to_dict(), "edit": edit.to_dict(),
                       "principles": principles}, sort_keys=True)


def parse_oracle_record(oracle_json: str) -> tuple[Scene, EditSpec, list[dict]]:
    try:
        d = json.loads(oracle_json)
    except (TypeError, json.JSONDecodeError) as exc:
        raise ValueError(f"oracle_json is not valid JSON: {exc}") from exc
    if not isinstance(d, dict) or d.get("version") != ORACLE_RECORD_VERSION:
        raise ValueError(f"oracle_json must be a version-{ORACLE_RECORD_VERSION} oracle record")
    return Scene.from_dict(d["scene"]), EditSpec.from_dict(d["edit"]), d["principles"]


def oracle_principles(oracle_json: str) -> list[dict]:
    """The sandbox's principle generator (``edits.principles``, public fields) for a row's oracle record: what the
    principles stage writes for a sandbox row instead of asking a VLM."""
    scene, edit, _ = parse_oracle_record(oracle_json)
    return public_principles(make_principles(scene, edit))


def verify_json(oracle_json: str, edited) -> OracleResult:
    """``verify`` from a record written by ``oracle_record``."""
    scene, edit, pr = parse_oracle_record(oracle_json)
    return verify(scene, edit, pr, edited)
