"""Using a trained stage on new images: ``longtail.load``, ``longtail predict`` and ``longtail export``.

A :class:`Predictor` holds a model (a stage's ``final.pt``, or the program ``longtail export`` wrote),
the class names and the stage's test-time transform. Images are decoded as the stage's data was
(shorter side to the stored size), cut by the evaluation transform's sizing op (a centre crop) and
normalised, so a prediction sees what the test set saw.
"""
from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .data.augment import Augment, ImageList
from .data.decode import decode_image, shorter_side_to
from .data.folder import IMAGE_EXTENSIONS
from .data.images import DataBundle, ImageSet
from .errors import CheckpointError, ConfigError, DataError

EXPORT_FORMAT = 1


class _NoImages:
    """The training split of a data card: its labels (for class counts), no images."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def load(self, index):
        raise DataError("a prediction model carries no training images")


def card_bundle(card: dict) -> DataBundle:
    counts = np.asarray(card["train_counts"], dtype=np.int64)
    split = ImageSet(_NoImages(int(counts.sum())), np.repeat(np.arange(len(counts)), counts), "train")
    return DataBundle(card["name"], len(counts), list(card["class_names"]), split, None, split, tuple(card["mean"]),
                      tuple(card["std"]), int(card["image_size"]), crop_size=int(card["crop_size"]))


def eval_augment(card: dict, spec) -> Augment:
    if isinstance(spec, str):
        return Augment.preset(spec, mean=card["mean"], std=card["std"], size=card["crop_size"])
    return Augment(spec, mean=card["mean"], std=card["std"])


class Program(nn.Module):
    """uint8 ``(N, 3, S, S)`` crops -> class probabilities: normalisation, the model and the stage's test head."""

    def __init__(self, model: nn.Module, method, mean, std):
        super().__init__()
        self.model, self.method = model, method
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x.float() / 255.0 - self.mean) / self.std
        return torch.softmax(self.method.predict(self.model, x).float(), dim=1)


class Predictor:
    """``predict(images)``: the top classes and their probabilities for image paths, PIL images or arrays."""

    def __init__(self, program, card: dict, spec, device: torch.device, source: str, about: dict | None = None):
        self.program, self.card, self.device, self.source, self.spec = program, card, device, source, spec
        self.about = about or {}
        self.augment = eval_augment(card, spec)
        self.class_names: list[str] = list(card["class_names"])

    def describe(self) -> dict:
        """The model, for a record that outlives its file: what it is, its sizes, and its bytes' sha256."""
        import hashlib

        path = Path(self.source)
        f = path / "program.pt2" if path.is_dir() else path
        return {"path": self.source, **self.about, "classes": len(self.card["class_names"]),
                "parameters": sum(p.numel() for p in self.program.parameters()), "crop_size": self.card["crop_size"],
                "image_size": self.card["image_size"], "file": f.name, "sha256": hashlib.sha256(f.read_bytes()).hexdigest()}

    @classmethod
    def from_checkpoint(cls, path, device: str | None = None) -> "Predictor":
        from .config import recipe_from_dict
        from .engine.checkpoint import load_checkpoint
        from .engine.context import StageContext
        from .engine.runtime import setup_runtime
        from .methods import get_method
        from .models.classifier import load_exported

        ck = load_checkpoint(path)
        if ck.get("kind") != "final" or not isinstance(ck.get("recipe"), dict):
            raise CheckpointError(f"{path} is not a finished stage's final.pt (kind {ck.get('kind')!r})")
        if not isinstance(ck.get("data"), dict):
            raise CheckpointError(f"{path} was written before final.pt carried its class names; re-run the stage to predict with it")
        try:
            recipe = recipe_from_dict(ck["recipe"])
        except ConfigError as e:
            raise CheckpointError(f"checkpoint {path}: its recipe is invalid here ({e})") from None
        recipe.runtime.device = device or "cpu"
        recipe.runtime.channels_last = False
        rt = setup_runtime(recipe.runtime)
        ctx = StageContext(recipe, recipe.stage(ck["stage"]), card_bundle(ck["data"]), rt)
        if ctx.stage.method in ("teacher_ensemble",):
            raise CheckpointError(f"{path}: stage {ck['stage']} is an ensemble of other stages' models; predict with one of them")
        method = get_method(ctx.stage.method)(ctx)
        model = method.build_model()
        load_exported(model, ck["model"], where=path)
        program = Program(model, method, ck["data"]["mean"], ck["data"]["std"]).to(rt.device).eval()
        return cls(program, ck["data"], ctx.stage.eval_augment, rt.device, str(path),
                   {"stage": ck["stage"], "method": ctx.stage.method, "backbone": recipe.model.backbone})

    @classmethod
    def from_export(cls, folder, device: str | None = None) -> "Predictor":
        folder = Path(folder)
        try:
            card = json.loads((folder / "card.json").read_text())
            program = torch.export.load(str(folder / "program.pt2")).module()
        except FileNotFoundError as e:
            raise CheckpointError(f"{folder} is not a longtail export (missing {Path(e.filename).name})") from None
        except Exception as e:
            raise CheckpointError(f"{folder}: the exported program cannot be loaded ({type(e).__name__}: {e})") from None
        if card.get("format") != EXPORT_FORMAT:
            raise CheckpointError(f"{folder}/card.json: export format {card.get('format')!r}, expected {EXPORT_FORMAT}")
        dev = torch.device(device or "cpu")
        return cls(program.to(dev), card, card["eval_augment"], dev, str(folder),
                   {"stage": card.get("stage"), "method": card.get("method"), "backbone": (card.get("recipe") or {}).get("model", {}).get("backbone")})

    # -- images -------------------------------------------------------------
    def _array(self, image) -> np.ndarray:
        if isinstance(image, (str, Path)):
            return decode_image(Path(image), self.card["image_size"])
        a = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image)
        if a.ndim == 2:
            a = np.repeat(a[..., None], 3, axis=2)
        if a.ndim != 3 or a.shape[2] not in (3, 4) or a.dtype != np.uint8:
            raise DataError(f"expected a uint8 RGB image (H, W, 3), got {a.dtype} {a.shape}")
        return shorter_side_to(np.ascontiguousarray(a[..., :3]), self.card["image_size"])

    def crops(self, arrays: list[np.ndarray]) -> torch.Tensor:
        """uint8 ``(N, 3, S, S)``: the evaluation transform's sizing op on decoded images."""
        return self.augment.size_images(ImageList(arrays), torch.Generator())

    @torch.no_grad()
    def probabilities(self, images) -> torch.Tensor:
        """``(N, classes)`` probabilities for a list of images (paths, PIL images or uint8 arrays)."""
        x = self.crops([self._array(im) for im in images]).to(self.device)
        return self.program(x).float().cpu()

    def predict(self, images, top_k: int = 5) -> list[dict]:
        probs = self.probabilities(images)
        return [self._row(p, top_k) for p in probs]

    def _row(self, p: torch.Tensor, top_k: int) -> dict:
        values, index = p.topk(min(top_k, len(p)))
        top = [{"class": self.class_names[i], "index": int(i), "prob": round(float(v), 6)} for v, i in zip(values, index.tolist())]
        return {**top[0], "top": top}


def load(path, device: str | None = None) -> Predictor:
    """A :class:`Predictor` from a stage's ``final.pt`` or a folder written by ``longtail export``."""
    path = Path(path)
    if path.is_dir():
        return Predictor.from_export(path, device)
    return Predictor.from_checkpoint(path, device)


def image_paths(inputs: list[str]) -> list[Path]:
    """Files as given, and the images below each folder (sorted), in order."""
    out: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            out += sorted(q for q in p.rglob("*") if q.suffix.lower() in IMAGE_EXTENSIONS and q.is_file())
        else:
            out.append(p)
    return out


def predict_files(predictor: Predictor, paths: list[Path], top_k: int = 5, batch: int = 64) -> list[dict]:
    """One row per path, in order; an unreadable file gets an ``error`` and the others go on."""
    rows: list[dict] = []
    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        def decode(p):
            try:
                return predictor._array(p), None
            except DataError as e:
                return None, str(e)

        for i in range(0, len(paths), batch):
            chunk = paths[i:i + batch]
            decoded = list(pool.map(decode, chunk))
            good = [a for a, err in decoded if err is None]
            probs = predictor.program(predictor.crops(good).to(predictor.device)).float().cpu() if good else None
            k = 0
            for p, (a, err) in zip(chunk, decoded):
                if err is not None:
                    rows.append({"path": str(p), "error": err})
                    continue
                rows.append({"path": str(p), **predictor._row(probs[k], top_k)})
                k += 1
    return rows


def export(path, out) -> Path:
    """``out/``: ``model.safetensors`` (weights), ``card.json`` (classes, normalisation, sizes, head, recipe) and
    ``program.pt2`` (a ``torch.export`` program: uint8 crops -> probabilities)."""
    from safetensors.torch import save_file

    from .engine.checkpoint import load_checkpoint

    predictor = Predictor.from_checkpoint(path, "cpu")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ck = load_checkpoint(path)
    save_file({k: v.contiguous() for k, v in ck["model"].items() if isinstance(v, torch.Tensor)}, str(out / "model.safetensors"))
    s = predictor.card["crop_size"]
    example = torch.zeros(2, 3, s, s, dtype=torch.uint8)
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.export.export(predictor.program, (example,), dynamic_shapes={"x": {0: batch}})
    torch.export.save(program, str(out / "program.pt2"))
    card = {**predictor.card, "format": EXPORT_FORMAT, "stage": ck["stage"], "method": ck["method"],
            "head": predictor.program.method.head_name, "input": f"uint8 (N, 3, {s}, {s}) RGB crops",
            "eval_augment": predictor.spec,
            "recipe": ck["recipe"], "source": str(path)}
    (out / "card.json").write_text(json.dumps(card, indent=1))
    return out
