"""Quality gate for digits models: a held-out classifier judges samples (needs scikit-learn).

A logistic regression (scikit-learn defaults) on 8x8 digits (scikit-learn's bundled 1,797 real
handwritten digits) is trained on one half and scored on the other. Its *confident fraction* on
the held-out half (share of images labelled with probability >= 0.8; ~0.94) is the reference a
generator's samples are held to. Real and generated digits go through the same pipeline: real
digits are resized to the model's resolution the way training resizes them (bilinear) and
quantised to uint8 like samples; every image is then area-downsampled to 8x8 and put on the
real digits' 0..16 scale. The Fréchet distance in the classifier's logit space (as FID does in an
Inception feature space; Heusel et al. 2017) compares sample and real distributions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CONFIDENCE = 0.8


@dataclass(frozen=True)
class DigitsJudge:
    """The fitted classifier and the held-out half of the real digits, as 8x8 features."""

    classifier: object
    train_features: np.ndarray  # (N1, 64) on the 0..16 scale
    heldout_features: np.ndarray  # (N2, 64)
    heldout_labels: np.ndarray  # (N2,)

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        return self.classifier.predict_proba(features)

    def confident_fraction(self, features: np.ndarray, label: int | None = None) -> float:
        """Share of images classified with probability >= 0.8 (as ``label``, if given)."""
        p = self.probabilities(features)
        pred = p.argmax(axis=1)
        ok = p.max(axis=1) >= CONFIDENCE
        if label is not None:
            ok &= pred == label
        return float(ok.mean())

    def fraction_classified_as(self, features: np.ndarray, label: int) -> float:
        return float((self.probabilities(features).argmax(axis=1) == label).mean())

    @property
    def reference_fraction(self) -> float:
        """Confident fraction on held-out real digits: the bar samples are measured against."""
        return self.confident_fraction(self.heldout_features)

    def frechet_distance(self, a: np.ndarray, b: np.ndarray) -> float:
        """Fréchet distance between Gaussians fitted to the classifier logits of a and b."""
        return frechet(self.classifier.decision_function(a), self.classifier.decision_function(b))


def real_digits(image_size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """The real digits as uint8 (N, S, S, 1) at the model's resolution, and their labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = digits.images / 16.0  # (N, 8, 8) in [0, 1]
    r = _bilinear_matrix(8, image_size)
    up = np.einsum("oh,nhw,pw->nop", r, x, r)  # (N, S, S), bilinear like F.interpolate
    return np.clip(np.rint(up * 255.0), 0, 255).astype(np.uint8)[..., None], digits.target


def _bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights of 1-D bilinear resizing with half-pixel centres (no antialias)."""
    src = np.maximum((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(int), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    w1 = src - i0
    m = np.zeros((n_out, n_in))
    np.add.at(m, (np.arange(n_out), i0), 1.0 - w1)
    np.add.at(m, (np.arange(n_out), i1), w1)
    return m


def fit_judge(image_size: int = 16, seed: int = 0) -> DigitsJudge:
    """Train the reference classifier on a stratified half of the real digits."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split

    images, labels = real_digits(image_size)
    x_tr, x_te, y_tr, y_te = train_test_split(
        features(images), labels, test_size=0.5, stratify=labels, random_state=seed
    )
    clf = LogisticRegression(max_iter=5000)
    clf.fit(x_tr, y_tr)
    return DigitsJudge(clf, x_tr, x_te, y_te)


def features(images: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W, 1) images with H, W multiples of 8 -> (N, 64) features on 0..16."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[3] != 1:
        raise ValueError(f"expected grey images (N, H, W, 1), got {images.shape}")
    n, h, w, _ = images.shape
    if h % 8 or w % 8:
        raise ValueError(f"image size {h}x{w} is not a multiple of 8")
    x = images[..., 0].astype(np.float64) * (16.0 / 255.0)
    # Area downsampling to 8x8: (N, 8, h/8, 8, w/8) -> mean over each block.
    return x.reshape(n, 8, h // 8, 8, w // 8).mean(axis=(2, 4)).reshape(n, 64)


def frechet(a: np.ndarray, b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + Tr(Ca + Cb - 2 (Ca Cb)^(1/2)) for row-sample matrices a, b."""
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    # Tr((Ca Cb)^(1/2)) = sum of sqrt of eigenvalues of sqrt(Ca) Cb sqrt(Ca) (symmetric PSD).
    w, v = np.linalg.eigh(ca)
    sqrt_ca = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    eig = np.linalg.eigvalsh(sqrt_ca @ cb @ sqrt_ca)
    tr_sqrt = np.sqrt(np.clip(eig, 0, None)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(ca) + np.trace(cb) - 2 * tr_sqrt)
