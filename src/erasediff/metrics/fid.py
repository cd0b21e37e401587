"""FID: the Fréchet distance between two sets of feature vectors, on features or cached statistics.

Why one file over 300 lines: the distance, the Inception extractor and the reference-statistics cache
(computed, or loaded from precomputed .npz files) are one metric that every FID group shares.

FID fits a Gaussian to each set of features and compares them:
d² = ‖μ_a − μ_b‖² + Tr(Σ_a + Σ_b − 2 (Σ_a Σ_b)^{1/2}). The extractor is an argument: Inception-v3 pool
features for FID proper, the digits classifier's `.features` for the offline setup. The matrix square
root is pytorch-fid's (`calculate_frechet_distance`), so numbers match the reference implementation.

Convention: every extractor takes images (B, C, H, W) in the project's range [-1, 1] (what datasets
and samplers produce); `InceptionFeatures` converts to pytorch-fid's [0, 1] itself. Reference
statistics of real sets (e.g. CIFAR10 train without the forgotten class, Imagenette without the
forgotten class, docs/evaluation.md) are cached per (set, extractor) by `reference_statistics`;
precomputed ones (pytorch-fid / T2IBenchmark .npz files with mu and sigma, e.g. MS-COCO val2014's) are
read by `load_statistics`.
"""

from __future__ import annotations

import hashlib
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from pytorch_fid.fid_score import calculate_frechet_distance

from erasediff.errors import ErasediffError, first_line


def _as_matrix(features, what: str = "features") -> np.ndarray:
    """features (N, D) torch tensor or array-like -> float64 numpy (N, D)."""
    if isinstance(features, torch.Tensor):
        features = features.detach().cpu().double().numpy()
    arr = np.asarray(features, dtype=np.float64)
    if arr.ndim != 2:
        raise ErasediffError(f"{what} must be a 2-D (N, D) array (got shape {arr.shape})")
    if not np.isfinite(arr).all():
        raise ErasediffError(f"{what} contain NaN or infinite values")
    return arr


def feature_statistics(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and unbiased covariance (D, D), float64, of features (N, D); needs N >= 2."""
    arr = _as_matrix(features)
    if len(arr) < 2:
        raise ErasediffError(f"feature statistics need at least 2 feature vectors (got {len(arr)})")
    return arr.mean(axis=0), np.cov(arr, rowvar=False).reshape(arr.shape[1], arr.shape[1])


def frechet_distance(features_a, features_b) -> float:
    """Fréchet distance (squared-feature units) between features_a (N_a, D) and features_b (N_b, D).

    Accepts torch tensors or numpy arrays. Each set needs >= 2 rows; a reliable estimate needs many
    more rows than D, since the covariances are estimated from the samples. Dimensions constant at the
    same value in both sets are dropped first (they contribute exactly 0).
    """
    a, b = _as_matrix(features_a, "features_a"), _as_matrix(features_b, "features_b")
    if a.shape[1] != b.shape[1]:
        raise ErasediffError(f"feature dimensions differ: features_a has D={a.shape[1]}, features_b has D={b.shape[1]}")
    if min(len(a), len(b)) < 2:
        raise ErasediffError(f"the Fréchet distance needs at least 2 feature vectors per set (got {len(a)} and {len(b)})")
    # A dimension that holds one and the same value in both sets (e.g. a dead ReLU unit) adds exactly 0 to
    # d² but makes the covariances singular, which sqrtm warns about; dropping it leaves d² unchanged.
    keep = ~((np.ptp(a, axis=0) == 0) & (np.ptp(b, axis=0) == 0) & (a[0] == b[0]))
    if keep.any():
        a, b = a[:, keep], b[:, keep]
    return fid_from_statistics(*feature_statistics(a), *feature_statistics(b))


def _device_of(extractor: Callable) -> torch.device | None:
    """The device of the module behind `extractor` (a module or one of its bound methods), if any."""
    owner = extractor if isinstance(extractor, torch.nn.Module) else getattr(extractor, "__self__", None)
    if isinstance(owner, torch.nn.Module):
        param = next(owner.parameters(), None)
        return None if param is None else param.device
    return None


@torch.inference_mode()
def extract_features(extractor: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor,
                     batch_size: int = 256) -> np.ndarray:
    """Features of images (N, C, H, W) as float64 numpy (N, D), computed in batches.

    `extractor` maps a batch to (B, D) (or (B, D, 1, 1) like pytorch-fid's Inception; trailing
    dimensions are flattened). Batches are moved to the extractor's device when it is a module or a
    method of one.
    """
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or len(images) == 0:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ErasediffError(f"images must be a non-empty (N, C, H, W) tensor (got {shape})")
    device = _device_of(extractor)
    out = []
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size]
        out.append(extractor(batch if device is None else batch.to(device)).flatten(1).double().cpu())
    return torch.cat(out).numpy()


# ------------------------------------------------------------------------------ Inception (pytorch-fid)
INCEPTION_DIMS = (64, 192, 768, 2048)
"""Feature sizes pytorch-fid's InceptionV3 offers; 2048 = pool_3 (standard FID), 64 = first max pool."""


class InceptionFeatures(torch.nn.Module):
    """pytorch-fid's FID Inception-v3 as an extractor: images (B, C, H, W) in [-1, 1] -> features (B, dims).

    The project's images are in [-1, 1]; pytorch-fid's `InceptionV3` takes [0, 1], resizes bilinearly
    to 299x299 and rescales to [-1, 1] itself, so this wrapper only maps [-1, 1] -> [0, 1] (and repeats
    a single grey channel to RGB). dims=2048 is the pool_3 layer of standard FID (Heusel et al. 2017;
    docs/evaluation.md, Table 1). Smaller blocks are spatial maps, averaged over space to a vector as
    pytorch-fid's `get_activations` does: dims=64 is the first max-pool block, the layer torchmetrics'
    `FID(feature=64)` reads (EraseDiff/SalUn `compute-fid.py`, the paper's Table 4). torchmetrics feeds
    that layer through torch-fidelity's own resize, so the two 64-d numbers agree in kind, not to the
    last digit.
    """

    def __init__(self, dims: int = 2048):
        super().__init__()
        from pytorch_fid.inception import FID_WEIGHTS_URL, InceptionV3

        if dims not in INCEPTION_DIMS:
            raise ErasediffError(f"Inception feature size {dims} is not available: valid sizes are "
                                 f"{', '.join(map(str, INCEPTION_DIMS))} (2048 = standard FID)")
        try:
            self.net = InceptionV3([InceptionV3.BLOCK_INDEX_BY_DIM[dims]])
        except OSError as exc:
            raise ErasediffError(f"could not fetch pytorch-fid's Inception weights from {FID_WEIGHTS_URL} "
                                 f"({type(exc).__name__}: {exc}); put the file into torch's hub cache "
                                 f"({torch.hub.get_dir()}/checkpoints) on a machine without internet") from exc
        self.dims = dims
        self.extractor_id = f"pytorch-fid-inception-v3-{dims}"
        self.eval()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = (images.float() + 1.0) / 2.0  # [-1, 1] -> [0, 1], pytorch-fid's input range
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        feats = self.net(x)[0]  # (B, dims, h, w); h = w = 1 for dims = 2048
        if feats.shape[2:] != (1, 1):
            feats = torch.nn.functional.adaptive_avg_pool2d(feats, output_size=(1, 1))
        return feats.flatten(1)


def inception_extractor(dims: int = 2048, device: str | torch.device | None = None) -> InceptionFeatures:
    """pytorch-fid's Inception-v3 (weights downloaded on first use) in eval mode, on `device`.

    dims=2048: standard FID; dims=64: the torchmetrics `feature=64` variant of the EraseDiff/SalUn SD
    scripts (quirks.EvalQuirks.inception_dims). Its `extractor_id` names it for `reference_statistics`.
    """
    model = InceptionFeatures(dims)
    return model if device is None else model.to(device)


def _features_of(images, extractor: Callable, batch_size: int, what: str) -> np.ndarray:
    """Features (N, D) float64 of a tensor (N, C, H, W) or of an iterable of such batches."""
    if isinstance(images, torch.Tensor):
        return extract_features(extractor, images, batch_size)
    parts = [extract_features(extractor, batch, batch_size) for batch in images]
    if not parts:
        raise ErasediffError(f"{what} produced no images")
    return np.concatenate(parts)


# ------------------------------------------------------------------------------------------- FID
def drop_shared_constants(mu_a, sigma_a, mu_b, sigma_b) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The statistics without the dimensions that are constant at one value in both sets (zero variance in
    both, equal means): such a dimension adds exactly 0 to d² but makes the covariances singular (frequent
    after the uint8 cast of the Table 4 protocol, docs/evaluation.md). `frechet_distance` drops them from
    the features; this is the same for statistics, e.g. cached ones. Nothing is dropped when all would be."""
    mu_a, mu_b, sigma_a, sigma_b = map(np.asarray, (mu_a, mu_b, sigma_a, sigma_b))
    keep = ~((np.diag(sigma_a) == 0) & (np.diag(sigma_b) == 0) & (mu_a == mu_b))
    if not keep.any() or keep.all():
        return mu_a, sigma_a, mu_b, sigma_b
    return mu_a[keep], sigma_a[np.ix_(keep, keep)], mu_b[keep], sigma_b[np.ix_(keep, keep)]


def fid_from_statistics(mu_a, sigma_a, mu_b, sigma_b) -> float:
    """FID (squared-feature units) of two Gaussians: means (D,) and covariances (D, D).

    pytorch-fid's `calculate_frechet_distance`, which adds 1e-6 to the diagonal when the product of
    the covariances is singular (few samples for the feature size).
    """
    mu_a, mu_b = np.atleast_1d(np.asarray(mu_a, np.float64)), np.atleast_1d(np.asarray(mu_b, np.float64))
    sigma_a, sigma_b = np.atleast_2d(np.asarray(sigma_a, np.float64)), np.atleast_2d(np.asarray(sigma_b, np.float64))
    d = len(mu_a)
    if mu_a.ndim != 1 or mu_b.shape != (d,) or sigma_a.shape != (d, d) or sigma_b.shape != (d, d):
        raise ErasediffError(f"statistics must be means (D,) and covariances (D, D) of one D: got means {mu_a.shape}, "
                             f"{mu_b.shape} and covariances {sigma_a.shape}, {sigma_b.shape}")
    with warnings.catch_warnings():
        # pytorch-fid 0.3 passes sqrtm(disp=False), deprecated since SciPy 1.16; the result is unaffected.
        warnings.filterwarnings("ignore", message="The `disp` argument is deprecated", category=DeprecationWarning)
        return float(calculate_frechet_distance(mu_a, sigma_a, mu_b, sigma_b))


def per_class_fid(gen_images: torch.Tensor, gen_labels: torch.Tensor, real_images: torch.Tensor | None,
                  real_labels: torch.Tensor | None, classes: Sequence[int],
                  extractor: Callable[[torch.Tensor], torch.Tensor], *, batch_size: int = 256,
                  real_statistics: Mapping[int, tuple[np.ndarray, np.ndarray]] | None = None) -> dict:
    """FID of each class's generated images against that class's real images (the paper's Table 3 layout).

    gen_images (N, C, H, W) in [-1, 1] with gen_labels (N,) int; real_images / real_labels likewise,
    or None when `real_statistics` maps every class to its cached (mu, sigma) (see
    `reference_statistics`). Returns {"fid_class_<c>": float} for each c in `classes`.
    """
    if len(gen_labels) != len(gen_images):
        raise ErasediffError(f"gen_labels has {len(gen_labels)} entries for {len(gen_images)} generated images")
    if real_statistics is None and (real_images is None or real_labels is None or len(real_labels) != len(real_images)):
        raise ErasediffError("per-class FID needs real_images with one real_label each, or real_statistics per class")
    gen_labels = torch.as_tensor(gen_labels).to(gen_images.device)
    out = {}
    for c in classes:
        gen_c = gen_images[gen_labels == c]
        if len(gen_c) < 2:
            raise ErasediffError(f"class {c} has {len(gen_c)} generated images; per-class FID needs at least 2")
        gen_feats = extract_features(extractor, gen_c, batch_size)
        if real_statistics is not None:
            if c not in real_statistics:
                raise ErasediffError(f"real_statistics has no entry for class {c} (it has {sorted(real_statistics)})")
            out[f"fid_class_{c}"] = fid_from_statistics(*feature_statistics(gen_feats), *real_statistics[c])
            continue
        real_c = real_images[torch.as_tensor(real_labels).to(real_images.device) == c]
        if len(real_c) < 2:
            raise ErasediffError(f"class {c} has {len(real_c)} real images; per-class FID needs at least 2")
        out[f"fid_class_{c}"] = frechet_distance(gen_feats, extract_features(extractor, real_c, batch_size))
    return out


# --------------------------------------------------------------------------- cached reference statistics
def reference_key(dataset: str, split: str, classes: Sequence[int]) -> str:
    """A readable cache key for the real set of `reference_statistics`, e.g. 'cifar10/train/classes=1,2,...'."""
    return f"{dataset}/{split}/classes={','.join(str(int(c)) for c in sorted(classes))}"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.=,-]+", "_", text).strip("_")[:80] or "x"


def reference_statistics_path(key: str, extractor_id: str, cache_dir) -> Path:
    """Where `reference_statistics` keeps (key, extractor_id): a readable name plus a hash of both."""
    digest = hashlib.sha1(f"{key}\0{extractor_id}".encode()).hexdigest()[:12]
    return Path(cache_dir) / f"{_slug(key)}__{_slug(extractor_id)}__{digest}.npz"


def reference_statistics(key: str, images_fn: Callable[[], object], extractor: Callable[[torch.Tensor], torch.Tensor],
                         extractor_id: str, cache_dir, *, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """(mu (D,), sigma (D, D)) of the real reference set `key`, computed once and cached as an .npz.

    key: what the real set is (dataset, split, classes: see `reference_key`); extractor_id: which
    feature extractor (e.g. `InceptionFeatures.extractor_id`). Both are stored in the file with mu,
    sigma and n, and checked when it is read. images_fn() returns the real images (N, C, H, W) in
    [-1, 1] (or an iterable of batches) and is called only when no cache exists. A cache file whose
    stored key or extractor id differs from the request (a file copied or renamed by hand) is an
    error naming the file: it is never overwritten silently; delete it to recompute.
    """
    path = reference_statistics_path(key, extractor_id, cache_dir)
    if path.is_file():
        with np.load(path, allow_pickle=False) as z:
            missing = {"mu", "sigma", "n", "key", "extractor_id"} - set(z.files)
            if missing:
                raise ErasediffError(f"reference statistics file {path} lacks {sorted(missing)}; "
                                     "delete it to recompute")
            stored = (str(z["key"]), str(z["extractor_id"]))
            if stored != (key, extractor_id):
                raise ErasediffError(f"reference statistics file {path} holds key {stored[0]!r} / extractor "
                                     f"{stored[1]!r}, not the requested {key!r} / {extractor_id!r}; "
                                     "delete it to recompute")
            return z["mu"], z["sigma"]
    feats = _features_of(images_fn(), extractor, batch_size, f"images_fn of reference {key!r}")
    mu, sigma = feature_statistics(feats)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, mu=mu, sigma=sigma, n=np.int64(len(feats)), key=np.str_(key), extractor_id=np.str_(extractor_id))
    tmp.replace(path)
    return mu, sigma


# ------------------------------------------------------------------------------ precomputed statistics
def load_statistics(path) -> tuple[np.ndarray, np.ndarray]:
    """(mu (D,), sigma (D, D)) float64 of a precomputed statistics file: an .npz with the arrays `mu` and
    `sigma` (pytorch-fid's `--save-stats`, T2IBenchmark's `FIDStats.to_npz`, e.g. MS-COCO val2014's).

    ErasediffError naming the file when it is missing, not an .npz, lacks mu / sigma, or holds arrays of
    the wrong shapes or non-finite values. Pickled objects are never loaded.
    """
    path = Path(path)
    if not path.is_file():
        raise ErasediffError(f"FID statistics file {path} not found: expected an .npz with arrays mu (D,) and sigma "
                             "(D, D), e.g. pytorch-fid's --save-stats output")
    try:
        z = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise ErasediffError(f"FID statistics file {path} is not a readable .npz ({first_line(exc)})") from None
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise ErasediffError(f"FID statistics file {path} is a single array, not an .npz with arrays mu and sigma")
    with z:
        missing = sorted({"mu", "sigma"} - set(z.files))
        if missing:
            raise ErasediffError(f"FID statistics file {path} lacks {missing} (it has: {', '.join(z.files) or 'nothing'}); "
                                 "expected arrays mu (D,) and sigma (D, D)")
        try:
            mu, sigma = np.asarray(z["mu"], np.float64), np.asarray(z["sigma"], np.float64)
        except (OSError, ValueError, EOFError) as exc:
            raise ErasediffError(f"FID statistics file {path}: mu / sigma are unreadable ({first_line(exc)})") from None
    if mu.ndim != 1 or sigma.shape != (len(mu), len(mu)):
        raise ErasediffError(f"FID statistics file {path}: mu must be (D,) and sigma (D, D) (got {mu.shape} and {sigma.shape})")
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise ErasediffError(f"FID statistics file {path} holds NaN or infinite values")
    return mu, sigma
